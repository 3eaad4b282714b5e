//! The device contract: what the host glue needs from an emulated PCI function.
//!
//! Modelled on crosvm's `PciDevice` (one trait in a low crate, one adapter for every
//! device): a device model implements [`PciFunction`]; the host owns the live
//! [`ConfigSpace`] and turns every config event into calls on this trait, in one place:
//!
//! | config event | host action |
//! |---|---|
//! | BAR programmed / moved / sizing | [`PciFunction::bar_moved`] |
//! | Command.MSE, PMCSR.PowerState (D0/D3hot) | trapped BAR accesses answered by the host with all-ones while the function does not decode memory |
//! | Command.BME, PMCSR.PowerState | [`PciFunction::set_bus_master`] (`false` outside D0, [`ConfigSpace::bus_master`]) |
//! | Function Level Reset, conventional reset | [`PciFunction::reset`] |
//!
//! # The worker contract
//! Register accesses arrive on a thread a vCPU waits on, so [`PciFunction::bar_read`] and
//! [`PciFunction::bar_write`] never block on DMA or on the worker: a write that starts
//! work (a doorbell, a start bit) only records it and returns `true`. The host then runs
//! [`PciFunction::process`] on its worker thread until it returns `false` and
//! [`PciFunction::needs_processing`] is clear, and sleeps until the next `true` from
//! `bar_write` or until `needs_processing` is set after a call into the function
//! ([`PciFunction::set_bus_master`], [`PciFunction::reset`]). Before it sleeps the host
//! calls [`PciFunction::arm_notifications`], which makes every later guest submission a
//! trapped write (and reports work that slipped in), so a sleeping worker needs no
//! timer. The host may call `process` more often (e.g. poll briefly after a burst);
//! while it does, the function may let the guest submit without trapping.
//!
//! # Unclaimed accesses
//! A read of bytes the function does not claim — a BAR it does not implement, an access
//! that does not lie entirely inside the BAR, memory it cannot reach — returns all-ones
//! ([`UNCLAIMED_READ`]), as a PCI read that ends in a master abort or an Unsupported
//! Request does; a write to them is dropped. Registers inside an implemented BAR follow
//! their own specification (reserved registers usually read 0).

use crate::ConfigSpace;

/// The value of every byte of a read nobody claims (a master-abort read returns all-ones).
pub const UNCLAIMED_READ: u8 = 0xff;

/// Whether an access of `len` bytes at `offset` lies entirely inside a BAR of `bar_size`
/// bytes; one that does not is unclaimed (reads all-ones, writes dropped).
pub fn access_in_bar(offset: u64, len: usize, bar_size: u64) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|l| offset.checked_add(l))
        .is_some_and(|end| end <= bar_size)
}

/// An emulated PCI function as a pure state machine the host drives.
///
/// `bar` arguments are BAR indexes 0..=5 (a 64-bit BAR is named by its lower index).
/// Offsets and lengths come from the guest: implementations must check them, never
/// panic on them, and answer out-of-range reads with [`UNCLAIMED_READ`].
pub trait PciFunction: Send + Sync {
    /// The power-on configuration space the host serves (IDs, BARs, capabilities). The
    /// host owns the live copy and reports its changes through the other methods.
    fn config_space(&self) -> ConfigSpace;

    /// A trapped guest read of `buf.len()` bytes at `offset` of BAR `bar`. Never blocks
    /// on DMA or on the worker. Unclaimed bytes read as [`UNCLAIMED_READ`].
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]);

    /// A trapped guest write of `data` at `offset` of BAR `bar`. Never blocks on DMA or
    /// on the worker. Returns `true` when the write recorded work for
    /// [`Self::process`]: the host must wake its worker (see the module docs).
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> bool;

    /// BAR `bar` now holds `address` as programmed by the guest (`None`: unassigned or
    /// holding a sizing pattern), whether or not memory decoding is on. Functions that
    /// compare an address the driver gives them with their BAR (the NVMe CMB's CBA)
    /// track it here; the default ignores it.
    fn bar_moved(&self, bar: usize, address: Option<u64>) {
        let _ = (bar, address);
    }

    /// Bus Master Enable as the function sees it: Command.BME and the function in D0.
    /// While it is clear the function issues no DMA; work it has queued waits.
    fn set_bus_master(&self, enabled: bool);

    /// A function reset — Function Level Reset or conventional reset: device state back
    /// to power-on values (exceptions are the model's to document), in-flight work
    /// abandoned, Bus Master off until [`Self::set_bus_master`] says otherwise. Never
    /// blocks on the worker: what the worker holds is dropped on its next
    /// [`Self::process`], which [`Self::needs_processing`] asks for.
    fn reset(&self);

    /// One bounded step of the function's work on the host's worker thread (queues,
    /// engines). Returns whether anything was done; see the module docs for when the
    /// host calls it.
    fn process(&self) -> bool;

    /// Whether [`Self::process`] has work the host has not run yet: set by a
    /// [`Self::bar_write`] that returned `true`, a [`Self::set_bus_master`] that lets
    /// queued work run, a [`Self::reset`]; cleared when `process` starts.
    fn needs_processing(&self) -> bool;

    /// The host's worker is about to sleep: ask the guest to notify the function of new
    /// work through a trapped write from now on (e.g. publish NVMe EventIdx values so the
    /// driver rings the MMIO doorbell), then report whether work arrived meanwhile — if
    /// so the host runs [`Self::process`] instead of sleeping. While the worker polls,
    /// a function may let the guest post work silently (shadow doorbells) and pick it up
    /// on the next `process`; the default has nothing to arm.
    fn arm_notifications(&self) -> bool {
        false
    }

    /// Commands (units of guest work) completed since the function was created, if it
    /// counts them. The host's worker uses the rate to choose how it polls after a
    /// burst: a low rate is latency-bound I/O (one command at a time), worth a
    /// yielding spin; a high rate is throughput-bound, better served by paced passes
    /// that complete several commands per interrupt. `None` (the default): paced only.
    fn completed(&self) -> Option<u64> {
        None
    }

    /// Counters of guest errors the function caught and answered (commands failed by
    /// status, rejected doorbells, engine faults, fatal states), as `(name, count)`;
    /// names are lower-case words joined by `_`. Monotonic over the function's life: a
    /// reset does not clear them. The host exports them with the device's DMA counters
    /// (`devices[<name>].errors.<counter>`), so a test can see that an attack it made
    /// was caught. Never blocks on the worker. The default has none.
    fn error_counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

// The contract is object safe: a host may also hold `Arc<dyn PciFunction>`.
const _: Option<&dyn PciFunction> = None;

#[cfg(test)]
mod tests {
    use super::access_in_bar;

    #[test]
    fn accesses_must_lie_entirely_inside_the_bar() {
        assert!(access_in_bar(0, 4, 16));
        assert!(access_in_bar(12, 4, 16));
        assert!(!access_in_bar(13, 4, 16), "straddles the end");
        assert!(!access_in_bar(16, 1, 16));
        assert!(!access_in_bar(u64::MAX, 2, u64::MAX), "wraps");
        assert!(
            access_in_bar(16, 0, 16),
            "an empty access at the end claims nothing"
        );
    }
}
