//! `p2plab-lab`: the lab itself — a topology's p2plab devices served to QEMU over
//! vfio-user, behind one fabric, with a control socket for their counters.
//!
//! # What it is
//! - [`config`]: topology files (`qemu-configs/*.toml`): devices, their place in the
//!   PCIe hierarchy, roles, the guest machine.
//! - [`lab`]: [`Lab`] starts one vfio-user server per p2plab device of a topology. Each
//!   device model (`p2plab-nvme`, `p2plab-gpu`) implements the device contract
//!   `p2plab_pci::PciFunction`; one generic adapter holds its live config space, the
//!   memfds behind its memory BARs and its worker thread, and handles every config event
//!   (BAR moves, Command, FLR, D3hot) in one place. The fabric (`p2plab-fabric`) routes
//!   and counts every DMA.
//! - [`control`]: the control socket (`stats`, `windows`) and its clients
//!   (`p2plab stats`; [`RemoteLab`], a lab in another process as a [`LabView`], which
//!   `p2plab run --lab` boots against).
//! - [`serve`]: `p2plab serve`, the lab without a guest.
//!
//! # Architecture
//! `serve` uses `lab`, `lab` uses `config` and `control`; nothing reaches back up. The
//! harness (`p2plab-harness`) starts a [`Lab`] for each guest run.
//!
//! # What it does not implement
//! The devices themselves (their crates), booting a guest or judging its results (the
//! harness), QEMU's built-in devices (`kind = "qemu-nvme"`: QEMU serves those).

pub mod config;
pub mod control;
pub mod lab;
pub mod serve;

pub use control::RemoteLab;
pub use lab::{BarWindow, Lab, LabView};
