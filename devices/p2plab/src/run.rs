//! `p2plab run`: the guest launcher. (skeleton, owned by the launcher work)
#[derive(clap::Args)]
pub struct RunArgs {}
pub fn run_main(_args: RunArgs) -> anyhow::Result<i32> {
    anyhow::bail!("run not implemented yet")
}
