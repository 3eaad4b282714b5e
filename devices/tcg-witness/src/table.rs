//! The range table read on every guest memory access, and the counters behind it.
//!
//! Hot path ([`Witness::record`]): one acquire load of the current table pointer, a
//! bounds check against the lowest/highest covered address, a binary search over a
//! small sorted array, then relaxed atomic adds on the matching range's counters. No
//! lock is taken. Writers ([`Witness::set_ranges`]) build a new table off to the side
//! and publish it with one release store; old tables are kept alive (never freed while
//! the `Witness` lives) so a vCPU still reading one is never left dangling. Range sets
//! change a handful of times per run (BAR programming), so the retained tables cost a
//! few hundred bytes each.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::spec::{RangeCounts, RangeSpec, RangesFile, Snapshot};

/// Why a range set was refused (the previous set stays in force).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// A window of zero bytes.
    #[error("{device} BAR {bar}: zero length")]
    ZeroLength { device: String, bar: u32 },
    /// `start + len` does not fit in 64 bits.
    #[error("{device} BAR {bar}: start {start:#x} + len {len:#x} overflows")]
    Overflow {
        device: String,
        bar: u32,
        start: u64,
        len: u64,
    },
    /// Two windows for the same `(device, bar)`.
    #[error("{device} BAR {bar} given twice")]
    Duplicate { device: String, bar: u32 },
    /// Two windows share addresses.
    #[error("{a} overlaps {b}")]
    Overlap { a: String, b: String },
}

/// Access direction of one guest memory operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Load,
    Store,
}

/// Cumulative counts of one `(device, bar)`; own cache line so two ranges hit by two
/// vCPUs do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counters {
    loads: AtomicU64,
    stores: AtomicU64,
    load_bytes: AtomicU64,
    store_bytes: AtomicU64,
    io_accesses: AtomicU64,
}

impl Counters {
    fn add(&self, access: Access, bytes: u64, is_io: bool) {
        // Relaxed: plain statistics, read only by snapshots; no other memory is
        // published through them.
        match access {
            Access::Load => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                self.load_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Access::Store => {
                self.stores.fetch_add(1, Ordering::Relaxed);
                self.store_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        if is_io {
            self.io_accesses.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn zero(&self) {
        for c in [
            &self.loads,
            &self.stores,
            &self.load_bytes,
            &self.store_bytes,
            &self.io_accesses,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// One published, immutable range set.
#[derive(Debug)]
struct Table {
    /// Lowest covered address (first start); `lo == hi` for an empty table.
    lo: u64,
    /// One past the highest covered address.
    hi: u64,
    /// `(start, end)` sorted by start, non-overlapping; `end` exclusive.
    bounds: Box<[(u64, u64)]>,
    /// `counters[i]` counts `bounds[i]`.
    counters: Box<[Arc<Counters>]>,
}

impl Table {
    /// Index of the range containing `addr`.
    #[inline]
    fn find(&self, addr: u64) -> Option<usize> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        let i = self
            .bounds
            .partition_point(|&(start, _)| start <= addr)
            .checked_sub(1)?;
        (addr < self.bounds[i].1).then_some(i)
    }
}

/// Everything ever set for one `(device, bar)`.
#[derive(Debug)]
struct Slot {
    spec: RangeSpec,
    active: bool,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by `(device, bar)`; survives range-set replacement.
    slots: BTreeMap<(String, u32), Slot>,
    /// Every table ever published; the last one is current. Kept so readers holding
    /// an older pointer stay valid (see the module docs).
    tables: Vec<Arc<Table>>,
}

/// The witness: current range table plus per-`(device, bar)` counters.
#[derive(Debug, Default)]
pub struct Witness {
    /// Points into `state.tables` (its last element), or null when no range was ever
    /// set or the current set is empty.
    current: AtomicPtr<Table>,
    state: Mutex<State>,
}

impl Witness {
    /// A witness with no ranges: every access is a miss.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (all updates are
        // single inserts/pushes), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any range is currently set (cheap; for the hot path's early-out).
    #[inline]
    pub fn armed(&self) -> bool {
        !self.current.load(Ordering::Relaxed).is_null()
    }

    /// Count one access at guest-physical `addr` of `bytes` bytes, if a range covers
    /// `addr`. Returns whether it matched. Lock-free.
    #[inline]
    pub fn record(&self, addr: u64, bytes: u64, access: Access, is_io: bool) -> bool {
        self.record_with(addr, || (bytes, access, is_io))
    }

    /// Like [`record`](Self::record), but the access details `(bytes, access, is_io)`
    /// are only computed (by `details`) when `addr` matches: the plugin's hot path asks
    /// QEMU for them with further calls it skips on a miss.
    #[inline]
    pub fn record_with(&self, addr: u64, details: impl FnOnce() -> (u64, Access, bool)) -> bool {
        let ptr = self.current.load(Ordering::Acquire);
        if ptr.is_null() {
            return false;
        }
        // SAFETY: a non-null `current` always points to a `Table` owned by an `Arc` in
        // `state.tables`; those Arcs are only dropped with the `Witness` itself, which
        // `&self` keeps alive for this call. The table is never mutated after
        // publication (release store in `set_ranges` pairs with the acquire load above).
        let table = unsafe { &*ptr };
        match table.find(addr) {
            Some(i) => {
                let (bytes, access, is_io) = details();
                table.counters[i].add(access, bytes, is_io);
                true
            }
            None => false,
        }
    }

    /// Replace the range set. Counts of a `(device, bar)` carry over (its window may
    /// move when the guest reprograms the BAR); ones not in `file` become inactive.
    /// On error nothing changes.
    pub fn set_ranges(&self, file: &RangesFile) -> Result<(), RangeError> {
        let mut specs = validate(&file.ranges)?;
        specs.sort_by_key(|s| s.start);

        let mut state = self.state();
        for slot in state.slots.values_mut() {
            slot.active = false;
        }
        let mut bounds = Vec::with_capacity(specs.len());
        let mut counters = Vec::with_capacity(specs.len());
        for spec in specs {
            // `validate` checked that this does not overflow.
            let end = spec.start + spec.len;
            bounds.push((spec.start, end));
            let key = (spec.device.clone(), spec.bar);
            let slot = state.slots.entry(key).or_insert_with(|| Slot {
                spec: spec.clone(),
                active: true,
                counters: Arc::default(),
            });
            slot.spec = spec;
            slot.active = true;
            counters.push(Arc::clone(&slot.counters));
        }

        if bounds.is_empty() {
            self.current.store(std::ptr::null_mut(), Ordering::Release);
            return Ok(());
        }
        let table = Arc::new(Table {
            lo: bounds[0].0,
            hi: bounds.iter().map(|b| b.1).max().unwrap_or(0),
            bounds: bounds.into_boxed_slice(),
            counters: counters.into_boxed_slice(),
        });
        let ptr = Arc::as_ptr(&table).cast_mut();
        state.tables.push(table);
        // Release: the table's contents are visible to any vCPU that sees the pointer.
        self.current.store(ptr, Ordering::Release);
        Ok(())
    }

    /// Cumulative counts of every `(device, bar)` ever set, sorted by device then BAR.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        let ranges = state
            .slots
            .values()
            .map(|slot| {
                let c = &slot.counters;
                RangeCounts {
                    device: slot.spec.device.clone(),
                    bar: slot.spec.bar,
                    start: slot.spec.start,
                    len: slot.spec.len,
                    active: slot.active,
                    loads: c.loads.load(Ordering::Relaxed),
                    stores: c.stores.load(Ordering::Relaxed),
                    load_bytes: c.load_bytes.load(Ordering::Relaxed),
                    store_bytes: c.store_bytes.load(Ordering::Relaxed),
                    io_accesses: c.io_accesses.load(Ordering::Relaxed),
                }
            })
            .collect();
        Snapshot { ranges }
    }

    /// Zero every counter. Accesses racing with the reset may land on either side.
    pub fn reset(&self) {
        for slot in self.state().slots.values() {
            slot.counters.zero();
        }
    }
}

/// Checks one range set; returns the specs to install.
fn validate(specs: &[RangeSpec]) -> Result<Vec<RangeSpec>, RangeError> {
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        if s.len == 0 {
            return Err(RangeError::ZeroLength {
                device: s.device.clone(),
                bar: s.bar,
            });
        }
        if s.start.checked_add(s.len).is_none() {
            return Err(RangeError::Overflow {
                device: s.device.clone(),
                bar: s.bar,
                start: s.start,
                len: s.len,
            });
        }
        if !seen.insert((s.device.as_str(), s.bar)) {
            return Err(RangeError::Duplicate {
                device: s.device.clone(),
                bar: s.bar,
            });
        }
    }
    let mut sorted: Vec<&RangeSpec> = specs.iter().collect();
    sorted.sort_by_key(|s| s.start);
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // No overflow: checked above.
        if b.start < a.start + a.len {
            return Err(RangeError::Overlap {
                a: format!("{} BAR {} [{:#x}+{:#x}]", a.device, a.bar, a.start, a.len),
                b: format!("{} BAR {} [{:#x}+{:#x}]", b.device, b.bar, b.start, b.len),
            });
        }
    }
    Ok(specs.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn spec(device: &str, bar: u32, start: u64, len: u64) -> RangeSpec {
        RangeSpec {
            device: device.into(),
            bar,
            start,
            len,
        }
    }

    #[track_caller]
    fn witness(specs: &[RangeSpec]) -> Witness {
        let w = Witness::new();
        w.set_ranges(&RangesFile {
            ranges: specs.to_vec(),
        })
        .expect("valid ranges");
        w
    }

    #[test]
    fn empty_witness_matches_nothing() {
        let w = Witness::new();
        assert!(!w.armed());
        assert!(!w.record(0x1000, 8, Access::Load, false));
        assert!(w.snapshot().ranges.is_empty());
    }

    #[test]
    fn matches_inclusive_start_exclusive_end() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x100)]);
        assert!(!w.record(0xfff, 1, Access::Load, false));
        assert!(w.record(0x1000, 1, Access::Load, false));
        assert!(w.record(0x10ff, 1, Access::Load, false));
        assert!(!w.record(0x1100, 1, Access::Load, false));
    }

    #[test]
    fn finds_the_right_range_among_several_with_gaps() {
        let w = witness(&[
            spec("nvme0", 2, 0x9000, 0x1000),
            spec("gpu0", 2, 0x1000, 0x1000),
            spec("gpu1", 2, 0x4000, 0x2000),
        ]);
        assert!(w.record(0x1800, 4, Access::Store, false));
        assert!(!w.record(0x2000, 4, Access::Store, false));
        assert!(!w.record(0x3fff, 4, Access::Store, false));
        assert!(w.record(0x5fff, 1, Access::Load, false));
        assert!(!w.record(0x8fff, 1, Access::Load, false));
        assert!(w.record(0x9000, 8, Access::Load, true));
        let snap = w.snapshot();
        assert_eq!(
            snap.get("gpu0", 2).map(|r| (r.stores, r.store_bytes)),
            Some((1, 4))
        );
        assert_eq!(
            snap.get("gpu1", 2).map(|r| (r.loads, r.load_bytes)),
            Some((1, 1))
        );
        let nvme = snap.get("nvme0", 2).expect("nvme0 BAR 2");
        assert_eq!((nvme.loads, nvme.load_bytes, nvme.io_accesses), (1, 8, 1));
    }

    #[test]
    fn range_ending_just_below_top_of_address_space() {
        let w = witness(&[spec("gpu0", 2, u64::MAX - 0x100, 0x100)]);
        assert!(w.record(u64::MAX - 1, 1, Access::Load, false));
        assert!(!w.record(u64::MAX, 1, Access::Load, false));
    }

    #[test]
    fn counts_loads_and_stores_separately() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x1000)]);
        w.record(0x1000, 8, Access::Load, false);
        w.record(0x1008, 8, Access::Load, false);
        w.record(0x1010, 2, Access::Store, false);
        let r = w.snapshot().ranges.remove(0);
        assert_eq!(
            (r.loads, r.load_bytes, r.stores, r.store_bytes),
            (2, 16, 1, 2)
        );
        assert_eq!(r.io_accesses, 0);
        assert!(r.active);
    }

    #[test]
    fn moving_a_bar_keeps_its_counts() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x1000)]);
        w.record(0x1000, 4, Access::Store, false);
        w.set_ranges(&RangesFile {
            ranges: vec![spec("gpu0", 2, 0x8000, 0x1000)],
        })
        .unwrap();
        assert!(!w.record(0x1000, 4, Access::Store, false));
        assert!(w.record(0x8000, 4, Access::Store, false));
        let r = w.snapshot().ranges.remove(0);
        assert_eq!((r.start, r.stores), (0x8000, 2));
    }

    #[test]
    fn dropped_range_is_reported_inactive() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x1000)]);
        w.record(0x1000, 4, Access::Load, false);
        w.set_ranges(&RangesFile::default()).unwrap();
        assert!(!w.armed());
        let r = w.snapshot().ranges.remove(0);
        assert!(!r.active);
        assert_eq!(r.loads, 1);
    }

    #[test]
    fn reset_zeroes_counts_and_keeps_ranges() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x1000)]);
        w.record(0x1000, 4, Access::Load, true);
        w.reset();
        let r = w.snapshot().ranges.remove(0);
        assert_eq!(
            (r.loads, r.load_bytes, r.io_accesses, r.active),
            (0, 0, 0, true)
        );
        assert!(w.record(0x1000, 4, Access::Load, false));
    }

    #[test]
    fn rejects_zero_length() {
        let w = Witness::new();
        let err = w.set_ranges(&RangesFile {
            ranges: vec![spec("gpu0", 2, 0x1000, 0)],
        });
        assert_eq!(
            err,
            Err(RangeError::ZeroLength {
                device: "gpu0".into(),
                bar: 2
            })
        );
    }

    #[test]
    fn rejects_overflow() {
        let w = Witness::new();
        let err = w.set_ranges(&RangesFile {
            ranges: vec![spec("gpu0", 2, u64::MAX, 2)],
        });
        assert!(matches!(err, Err(RangeError::Overflow { .. })));
    }

    #[test]
    fn rejects_overlap_and_keeps_previous_set() {
        let w = witness(&[spec("gpu0", 2, 0x1000, 0x1000)]);
        let bad = RangesFile {
            ranges: vec![
                spec("gpu0", 2, 0x1000, 0x1000),
                spec("gpu1", 2, 0x1fff, 0x10),
            ],
        };
        assert!(matches!(
            w.set_ranges(&bad),
            Err(RangeError::Overlap { .. })
        ));
        assert!(w.record(0x1000, 1, Access::Load, false));
        assert!(w.snapshot().get("gpu1", 2).is_none());
    }

    #[test]
    fn rejects_duplicate_device_bar() {
        let w = Witness::new();
        let bad = RangesFile {
            ranges: vec![spec("gpu0", 2, 0x1000, 0x10), spec("gpu0", 2, 0x8000, 0x10)],
        };
        assert_eq!(
            w.set_ranges(&bad),
            Err(RangeError::Duplicate {
                device: "gpu0".into(),
                bar: 2
            })
        );
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let w = Arc::new(witness(&[spec("gpu0", 2, 0x1000, 0x1000)]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        w.record(0x1000 + (i % 0x1000), 1, Access::Store, false);
                    }
                })
            })
            .collect();
        // Replacing the set concurrently (same window) must not lose the old table.
        for _ in 0..100 {
            w.set_ranges(&RangesFile {
                ranges: vec![spec("gpu0", 2, 0x1000, 0x1000)],
            })
            .unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.snapshot().get("gpu0", 2).map(|r| r.stores), Some(40_000));
    }
}
