//! `p2plab-guest-abi`: every value the host (`p2plab run`, the harness) and the in-guest
//! runner (`p2plab-guest`) must agree on, defined once and imported by both.
//!
//! # What it is
//! - [`markers`]: the console protocol. The runner prints [`Marker::CaseBegin`] /
//!   [`Marker::CaseEnd`] around each case and waits for the host's [`Marker::Ack`]; it
//!   ends with [`Marker::RunEnd`]; cases report the vendor log page
//!   ([`Marker::VendorLog`]) and benchmark figures ([`markers::bench_line`]).
//! - [`run`]: `/etc/p2plab/run.json` ([`RunConfig`]), written by the host into the run's
//!   initramfs layer and read by the runner; the lab's device kinds and roles.
//! - [`cases`]: the case table ([`CASES`]): each case's id, description, where it applies
//!   ([`When`], [`Role`]s, [`Need`]s) and the image layers it needs ([`Tool`]s). The host
//!   picks a topology's cases from it; the runner maps each [`CaseId`] to its function
//!   with an exhaustive `match`.
//! - [`ids`]: PCI vendor and device ids of the lab's devices (the device models use
//!   them; the guest finds the devices by them; the GPU driver's uapi header is checked
//!   against them by `p2plab-gpu`'s `c_header` test).
//!
//! # Architecture
//! Definitions only: no I/O, no `unsafe`, serde the one dependency, so it builds for the
//! static guest runner as well as for the host. `cases` uses `run`'s [`Role`]; nothing
//! else refers across modules.
//!
//! # What it does not hold
//! How a case runs (the runner's `cases/` modules) or how the host judges a topology
//! against a [`Need`] (the harness's case selection): only the words both sides use.

#![forbid(unsafe_code)]

pub mod cases;
pub mod ids;
pub mod markers;
pub mod run;

pub use cases::{Case, CaseId, Group, Need, Tool, When, CASES};
pub use markers::Marker;
pub use run::{DevInfo, DeviceKind, ExecConfig, Role, Roles, RunConfig};
