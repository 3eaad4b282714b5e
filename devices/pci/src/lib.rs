//! p2plab-pci: the PCI Express configuration space of an emulated function.
//!
//! **What it is.** A 4 KiB type-0 configuration space (PCIe Base 6.0 §7.5) that a device
//! model builds once and the vfio-user glue serves to QEMU: header, memory BARs (32/64-bit,
//! prefetchable, sizes up to 2^63), the PM, MSI-X and PCI Express (v2 Endpoint)
//! capabilities, and the Device Serial Number and Resizable BAR extended capabilities.
//! No I/O, no unsafe.
//!
//! **Architecture.** crosvm-style: every byte has a value, a writable-bits mask and an RW1C
//! mask, and a guest write stores `(old & !mask) | (new & mask)` then clears the RW1C bits
//! written as 1 (`config/registers.rs`). The few registers with behaviour beyond masks are
//! hooks in [`ConfigSpace::write`]: BAR sizing-pattern tracking, PMCSR (D1/D2 discarded),
//! Initiate FLR (resets config space, reported in [`ConfigEvents`]) and the Resizable BAR
//! size field (resizes the BAR and its sizing mask). One module per concept: [`regs`]
//! (header), [`bar`], [`pm`], [`msix`], [`pcie`], [`ext_caps`] (`dsn`, `rebar`), [`config`]
//! (the space and its builder), [`function`] (the device contract, [`PciFunction`]).
//!
//! **What it does not implement.** I/O BARs, expansion ROM (reads 0), MSI, AER and other
//! extended capabilities, PME, D1/D2, ASPM behaviour, multi-function headers. The MSI-X
//! table and PBA themselves live in a BAR and belong to the device model; this crate only
//! describes where they are ([`MsixInfo`]).
//!
//! ```
//! use p2plab_pci::{BarDef, BarKind, ConfigSpace, PciIds};
//! let cfg = ConfigSpace::builder(PciIds { vendor: 0x1b36, device: 0x0010, class: 0x010802,
//!                                         ..Default::default() })
//!     .bar(0, BarDef { size: 16 << 10, kind: BarKind::Mem64, prefetchable: false })
//!     .pcie_endpoint()
//!     .build()
//!     .expect("valid declaration");
//! assert_eq!(cfg.bar_size(0), 16 << 10);
//! assert_eq!(cfg.bar_address(0), None);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bar;
pub mod config;
pub mod ext_caps;
pub mod function;
pub mod layout;
pub mod msix;
pub mod pcie;
pub mod pm;
pub mod regs;

pub use bar::{BarDef, BarInfo, BarKind};
pub use config::{ConfigError, ConfigEvents, ConfigSpace, ConfigSpaceBuilder, PciIds};
pub use function::{access_in_bar, PciFunction, UNCLAIMED_READ};
pub use layout::{dsn_from_str, fnv1a, BarLayout, PciLayout, ResizableBar, FNV1A_BASIS};
pub use msix::MsixInfo;
pub use pcie::{LinkSpeed, PcieLink};
pub use pm::PowerState;
