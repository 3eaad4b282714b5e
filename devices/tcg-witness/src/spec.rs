//! JSON types exchanged with the launcher: the ranges file / `ranges` command body
//! (input) and the `snapshot` reply (output).

use serde::{Deserialize, Serialize};

/// One guest-physical window to witness, usually one BAR of one lab device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    /// Lab device name (`"gpu0"`, `"nvme0"`).
    pub device: String,
    /// BAR index of `device` this window covers.
    pub bar: u32,
    /// First guest-physical address of the window (the BAR base the guest programmed).
    pub start: u64,
    /// Window length in bytes; must be non-zero.
    pub len: u64,
}

/// The ranges file written by the launcher, and the body of the `ranges` command:
/// `{"ranges": [{"device": "gpu0", "bar": 2, "start": N, "len": N}, ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangesFile {
    /// Windows to witness; at most one per `(device, bar)`, none overlapping.
    #[serde(default)]
    pub ranges: Vec<RangeSpec>,
}

/// Cumulative CPU access counts of one `(device, bar)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCounts {
    /// Lab device name.
    pub device: String,
    /// BAR index.
    pub bar: u32,
    /// Window start (the latest one set for this `(device, bar)`).
    pub start: u64,
    /// Window length.
    pub len: u64,
    /// Whether the window is in the current range set. A `(device, bar)` dropped from
    /// the set keeps its counts (reported with `active: false`) until `reset`.
    pub active: bool,
    /// Guest loads whose physical address fell in the window.
    pub loads: u64,
    /// Guest stores whose physical address fell in the window.
    pub stores: u64,
    /// Bytes loaded (sum of access sizes).
    pub load_bytes: u64,
    /// Bytes stored.
    pub store_bytes: u64,
    /// Of `loads + stores`, how many QEMU performed as I/O (trapped MMIO, each one a
    /// vfio-user message) rather than direct RAM/RAM-device access.
    pub io_accesses: u64,
}

/// The `snapshot` reply and the `out=FILE` dump: `{"ranges": [RangeCounts, ...]}`,
/// sorted by device name then BAR.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// One entry per `(device, bar)` ever set since the plugin started.
    pub ranges: Vec<RangeCounts>,
}

impl Snapshot {
    /// The entry of `(device, bar)`, if that window was ever set.
    pub fn get(&self, device: &str, bar: u32) -> Option<&RangeCounts> {
        self.ranges
            .iter()
            .find(|r| r.device == device && r.bar == bar)
    }
}
