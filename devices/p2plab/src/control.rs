//! Control socket: `p2plab stats`. (skeleton)
use std::path::Path;
pub fn stats_main(_target: &Path) -> anyhow::Result<i32> {
    anyhow::bail!("stats not implemented yet")
}
