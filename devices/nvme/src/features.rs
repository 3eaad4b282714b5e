//! Features (spec §5.21.1): the current value of each feature the controller supports.
//!
//! State only: Set Features and Get Features are admin commands, run by the admin
//! worker. The values live in the worker's state and go back to their defaults on every
//! controller reset.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nvme_spec::feature::{InterruptCoalescing, NumberOfQueues};

/// Current values of the features (§5.21.1); reset by a Controller Reset.
#[derive(Debug)]
pub struct Features {
    pub arbitration: u32,
    pub power_management: u32,
    /// [tmpsel 0..=8][over, under].
    pub temperature_thresholds: [[u16; 2]; 9],
    pub error_recovery: u32,
    pub volatile_write_cache: bool,
    /// Granted I/O queues (0's based NSQA/NCQA), set once by Number of Queues.
    pub queues: NumberOfQueues,
    pub interrupt_coalescing: u32,
    /// Interrupt vectors whose Interrupt Vector Configuration has CD (Coalescing
    /// Disable) set.
    pub coalescing_disabled: BTreeSet<u16>,
    pub write_atomicity: u32,
    pub async_event_config: u32,
    /// Host-set timestamp (ms) and when it was set.
    pub timestamp: Option<(u64, Instant)>,
    pub keep_alive: u32,
    pub software_progress_marker: u32,
}

impl Features {
    /// The defaults of a controller offering `max_io_queues` I/O queue pairs.
    pub fn new(max_io_queues: u16) -> Self {
        let q = max_io_queues.saturating_sub(1);
        let mut t = [[0u16; 2]; 9];
        for th in t.iter_mut() {
            th[0] = 0xffff; // over-temperature thresholds start disabled-high
        }
        t[0][0] = 0x0157; // composite: 70 °C
        Self {
            arbitration: 0,
            power_management: 0,
            temperature_thresholds: t,
            error_recovery: 0,
            volatile_write_cache: true,
            queues: NumberOfQueues::new().with_nsq(q).with_ncq(q),
            interrupt_coalescing: 0,
            coalescing_disabled: BTreeSet::new(),
            write_atomicity: 0,
            async_event_config: 0,
            timestamp: None,
            keep_alive: 0,
            software_progress_marker: 0,
        }
    }

    /// Interrupt Coalescing as (completion entries per interrupt, longest delay); `None`
    /// when THR or TIME is 0, which turns coalescing off (§5.21.1.8).
    pub fn coalescing(&self) -> Option<(u32, Duration)> {
        InterruptCoalescing::from_bits(self.interrupt_coalescing).aggregation()
    }
}
