//! `p2plab-harness`: boots a lab guest and judges what it did.
//!
//! # What it is
//! - [`run`]: `p2plab run` — builds the guest image, starts the topology's lab
//!   (`p2plab-lab`), boots QEMU and writes the run directory.
//! - [`supervise`]: follows the serial console (case markers, ACKs, counter snapshots,
//!   kernel reports) and applies the host assertions to the results.
//! - [`select`]: which guest cases a run has (the shared case table of
//!   `p2plab-guest-abi` judged against the topology) and the guest's `run.json`.
//! - [`image`]: the initramfs (cached base layer, fio layer, per-run layer), the
//!   kernel, `p2pgpu.ko`.
//! - [`qemu`]: the QEMU binary, the accelerator and the command line of a topology.
//! - [`assertions`]: what each case's counter delta (and CPU witness) must show, over
//!   the typed counter contract of `p2plab-counters` (snapshots, deltas, counter paths);
//!   [`ktap`]: KTAP results and kernel reports; [`witness`]: the CPU witness plugin's
//!   control.
//! - [`summary`]: `p2plab summary`, the suite's table, `summary.json` and (with
//!   [`junit`]) `junit.xml`; [`suite`]: `p2plab suite` (shard plans, a run's tally;
//!   merging shards is `summary`'s); [`proof`]: `p2plab proof`;
//!   [`bench`](mod@bench): `p2plab bench`.
//!
//! # Architecture
//! `run` uses `select`, `image`, `qemu`, `witness` and `supervise`; `supervise` uses
//! `assertions`, `ktap` and `witness`;
//! `select` uses `qemu`; `qemu` uses `image`; `proof` uses
//! `summary` and `ktap`; `summary` uses `ktap`, `junit` and `suite`; `suite` uses `ktap`;
//! `junit` uses `ktap`. Nothing reaches back up. `bench` runs
//! `p2plab run` as a child process.
//!
//! # What it does not implement
//! The devices and their hosting (`p2plab-lab`), the guest side (`guest-tests/runner`),
//! the toolroot's construction (`scripts/setup`, `p2plab-toolroot`).

pub mod assertions;
pub mod bench;
pub mod image;
pub mod junit;
pub mod ktap;
pub mod proof;
pub mod qemu;
pub mod run;
pub mod select;
pub mod stall;
pub mod suite;
pub mod summary;
pub mod supervise;
pub mod witness;
