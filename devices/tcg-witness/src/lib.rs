//! # tcg-witness: a QEMU TCG plugin that counts guest CPU accesses to BAR ranges
//!
//! ## What it is
//! CPU loads/stores to a device BAR that QEMU has mmapped (vfio-user sparse mmap of a
//! memfd) never reach the device server, so the device's counters cannot see them.
//! This plugin, loaded into QEMU under TCG, sees every guest memory access with its
//! guest-physical address and counts the ones falling in launcher-given windows
//! (usually one per `(device, BAR)`): loads, stores, bytes each way, and how many went
//! through QEMU's I/O path (trapped MMIO) rather than direct memory access.
//!
//! The crate is a `cdylib` (the plugin) and an `rlib` (the pure logic, [`Witness`],
//! and the JSON types in [`spec`] for the launcher; with `default-features = false`
//! the QEMU exports are left out).
//!
//! ## Loading
//! ```text
//! qemu-system-x86_64 ... -plugin /path/libtcg_witness.so,ranges=/run/ranges.json,control=/run/witness.sock,out=/run/cpu.json
//! ```
//! Arguments (all optional):
//! - `ranges=FILE`: `{"ranges": [{"device": "gpu0", "bar": 2, "start": N, "len": N}]}`.
//!   A missing file means "no ranges yet". The file is re-read whenever its mtime
//!   changes (polled every `poll_ms`, default 200 ms; `poll_ms=0` disables), so the
//!   launcher can rewrite it once the guest has programmed the BARs. Write it
//!   atomically (write a temp file, rename).
//! - `control=PATH`: UNIX stream socket, protocol below.
//! - `out=FILE`: the final snapshot, written at QEMU exit.
//!
//! Requires system emulation (`qemu-system-*`) and plugin API version 7 (QEMU 11.x);
//! QEMU refuses other API versions at load time.
//!
//! ## Control protocol
//! One command per line; one JSON line back per command.
//! - `ranges {"ranges":[...]}`: replace the range set (same document as the file).
//!   Counts of a `(device, bar)` carry over when its window moves; ranges no longer
//!   listed keep their counts with `"active": false`. Refused sets (zero length,
//!   overflow, overlap, a `(device, bar)` twice) leave the old set in force.
//!   Reply `{"ok":true}` or `{"error":"..."}`.
//! - `reload`: re-read the `ranges=` file now.
//! - `snapshot`: `{"ranges":[{"device","bar","start","len","active","loads","stores",
//!   "load_bytes","store_bytes","io_accesses"}]}`, cumulative since start or `reset`.
//! - `reset`: zero all counters; `{"ok":true}`.
//!
//! ## Architecture
//! - [`table`]: the hot path. The range set is an immutable sorted array published
//!   through an atomic pointer (no lock on the hot path), with a min/max early-out and
//!   per-range cache-line-aligned relaxed atomic counters.
//! - [`control`]: the line protocol (pure `handle_line`), the socket server and the
//!   ranges-file watcher threads.
//! - `plugin` (feature `plugin`): the exports QEMU needs, API functions resolved with
//!   `dlsym`, the translation and memory callbacks. Every `extern "C"` entry point
//!   catches panics.
//!
//! ## Overhead
//! QEMU 11.1's plugin API cannot filter memory callbacks by address: physical
//! addresses are unknown at translation time, the inline ops
//! (`qemu_plugin_register_vcpu_mem_inline_per_vcpu`) only add to or store a scoreboard
//! slot, and there is no conditional memory callback (the `*_cond_cb` variants exist
//! for TB and instruction execution only and compare a scoreboard value, not the
//! access address). So every load/store instruction gets a full callback
//! (`QEMU_PLUGIN_CB_NO_REGS`, reads and writes). With no range set the callback
//! returns after one atomic load; otherwise it calls `qemu_plugin_get_hwaddr` (QEMU's
//! `tlb_plugin_lookup`, a soft-TLB probe) and `qemu_plugin_hwaddr_phys_addr`, then a
//! bounds check; size, direction and I/O flag are queried only on a match. A profile
//! of an armed run puts about a third of all host samples in `get_hwaddr` +
//! `tlb_plugin_lookup` and about an eighth in the callback itself.
//!
//! `qemu_plugin_hwaddr_phys_addr` is the guest-physical address for RAM and for I/O
//! alike (11.1.3 fills it from the TLB entry in both cases; verified: LAPIC/HPET
//! accesses are counted at their MMIO addresses with `io_accesses` = all of them, RAM
//! windows with `io_accesses` = 0), so a vfio-user BAR is counted whether QEMU maps it
//! (RAM-device region: direct) or traps it (I/O).
//!
//! Measured (QEMU 11.1.3 TCG, q35, 512 MiB, `-smp 1`, Linux 7.3.4 without initrd
//! booting to its "unable to mount root" panic; 2-core host shared with other jobs;
//! wall time of the whole QEMU run, 3 interleaved runs each):
//! - no plugin: 2.33-2.77 s (guest panic timestamp 1.42-1.61 s);
//! - plugin, no range set: 3.79-3.86 s (about 1.6x);
//! - plugin, 4 ranges set (16 MiB of kernel RAM, 1 MiB low RAM, LAPIC, HPET):
//!   8.05-8.24 s (about 3.5x); with one range matching nothing 6.7-8.9 s, so the cost
//!   is the address lookup, not the counting.
//!
//! So a launcher should set ranges only around the work it measures (the `ranges`
//! command with an empty list disarms). Instrumentation itself is fixed at
//! translation; removing it would need a code-cache flush (`qemu_plugin_reset` from a
//! vCPU context), which this plugin does not do.
//!
//! ## What it does not do
//! - Does not distinguish address spaces (a physical address in a secondary address
//!   space, e.g. SMM, is matched like any other).
//! - An access is attributed wholly to the range containing its first byte.
//! - Does not see device-initiated DMA (the fabric counts that) nor accesses QEMU
//!   makes on the guest's behalf outside TCG (e.g. its own device emulation).
//! - Retired range tables are kept until exit (a few hundred bytes per change).
//! - Counters are shared atomics: two vCPUs hitting the same window bounce its
//!   cache line. `reset` racing with accesses may lose or keep those few counts.
//! - An access whose TLB entry is gone by callback time (`get_hwaddr` returns NULL;
//!   QEMU prints "invalid use of qemu_plugin_get_hwaddr") is not counted.

pub mod control;
#[cfg(feature = "plugin")]
pub mod plugin;
pub mod spec;
pub mod table;

pub use spec::{RangeCounts, RangeSpec, RangesFile, Snapshot};
pub use table::{Access, RangeError, Witness};
