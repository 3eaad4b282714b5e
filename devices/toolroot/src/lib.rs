//! p2plab-toolroot: what the lab toolroot is made of, decided from what the archive offers.
//!
//! # What it is
//! The lab toolroot is a Debian trixie root (DESIGN.md §5) holding QEMU >= 10.1 and a
//! Linux >= 7 image and headers from trixie-backports. The archive moves: Debian keeps
//! only the newest revision of a package, and kernel ABIs come and go. So `scripts/setup`
//! never pins; it asks this crate, which reads `apt-cache` output run in the root and
//! chooses ([`resolve()`]), and records the choice in the root's [`Stamp`].
//!
//! # Architecture
//! - [`debver`]: Debian version ordering (dpkg's rules), no I/O.
//! - [`apt`]: parsers of `apt-cache madison/show/pkgnames` output.
//! - [`resolve`](mod@resolve): the policy, over an [`AptCache`] trait (the binary runs
//!   `apt-cache` in the root; tests replay recorded outputs).
//! - [`kconfig`]: required kernel options, checked in a `.config`.
//! - [`stamp`]: the toolroot stamp, read by `p2plab run` for `run.json`.
//!
//! # What it does not implement
//! Installing: `scripts/setup` runs debootstrap and apt itself. No dependencies, so
//! setup builds the `p2plab-toolroot` binary in seconds on a fresh machine.

pub mod apt;
pub mod debver;
pub mod kconfig;
pub mod resolve;
pub mod stamp;

pub use resolve::{resolve, AptCache, Pins, Policy, ResolveError, Resolved};
pub use stamp::Stamp;
