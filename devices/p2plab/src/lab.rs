//! The lab: the devices of one topology, their vfio-user servers, and the fabric.
//! (skeleton: being written by the lead; API is fixed)

use crate::config::Topology;
use std::path::{Path, PathBuf};

/// One BAR window of a p2plab device as the guest programmed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BarWindow {
    pub device: String,
    pub bar: u32,
    pub start: u64,
    pub len: u64,
}

pub struct Lab {}

impl Lab {
    /// Start servers for every p2plab device of `topo`; sockets at `run_dir/<name>.sock`,
    /// the control socket at `run_dir/control.sock`.
    pub fn start(_topo: &Topology, _run_dir: &Path) -> anyhow::Result<Lab> {
        anyhow::bail!("lab not implemented yet")
    }
    /// vfio-user socket of device `name`.
    pub fn socket_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
    /// All counters, in the counter contract's JSON shape.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({"devices": []})
    }
    /// Memory BAR windows currently decoded (for the CPU witness).
    pub fn bar_windows(&self) -> Vec<BarWindow> {
        vec![]
    }
    pub fn shutdown(self) {}
}

pub fn serve_main(_config: &Path, _dir: Option<PathBuf>) -> anyhow::Result<i32> {
    anyhow::bail!("serve not implemented yet")
}
