//! A device's PCI description as plain data, and the power-on config space built from it.
//!
//! Device models describe themselves with a [`PciLayout`] (IDs, BARs, MSI-X placement,
//! serial number, optional Resizable BAR); tests can inspect it, and
//! [`PciLayout::config_space`] turns it into a [`ConfigSpace`] with PM, MSI-X, a PCIe
//! endpoint capability and a Device Serial Number.

use crate::{BarDef, BarKind, ConfigError, ConfigSpace, PciIds};

/// One memory BAR as the config space must advertise it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarLayout {
    /// BAR index (a 64-bit BAR also uses `index + 1`).
    pub index: usize,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// 64-bit memory BAR (else 32-bit).
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Whether the host serves it from memory the client may mmap.
    pub mmappable: bool,
}

/// A Resizable BAR extended capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizableBar {
    /// The resizable BAR's index.
    pub bar: usize,
    /// Supported sizes: bit n = 2^(n+20) bytes.
    pub sizes: u64,
}

/// A device's whole PCI description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciLayout {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Revision ID.
    pub revision: u8,
    /// 24-bit class code.
    pub class: u32,
    /// The implemented memory BARs.
    pub bars: Vec<BarLayout>,
    /// MSI-X table size.
    pub msix_vectors: u16,
    /// MSI-X table and PBA share this (trapped) BAR.
    pub msix_bar: usize,
    /// Offset of the MSI-X table in `msix_bar`.
    pub msix_table_offset: u32,
    /// Offset of the Pending Bit Array in `msix_bar`.
    pub msix_pba_offset: u32,
    /// Device Serial Number.
    pub dsn: u64,
    /// INTx pin (1 = INTA#).
    pub interrupt_pin: u8,
    /// Resizable BAR capability, if any.
    pub rebar: Option<ResizableBar>,
}

impl PciLayout {
    /// The power-on config space of this layout.
    pub fn config_space(&self) -> Result<ConfigSpace, ConfigError> {
        let ids = PciIds {
            vendor: self.vendor,
            device: self.device,
            subsystem_vendor: self.subsystem_vendor,
            subsystem: self.subsystem,
            revision: self.revision,
            class: self.class,
        };
        let mut b = ConfigSpace::builder(ids);
        for bar in &self.bars {
            let kind = if bar.is_64bit {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            b = b.bar(
                bar.index,
                BarDef {
                    size: bar.size,
                    kind,
                    prefetchable: bar.prefetchable,
                },
            );
        }
        b = b
            .msix(
                self.msix_vectors,
                self.msix_bar,
                u64::from(self.msix_table_offset),
                self.msix_bar,
                u64::from(self.msix_pba_offset),
            )
            .power_management()
            .pcie_endpoint()
            .dsn(self.dsn);
        if let Some(r) = self.rebar {
            b = b.resizable_bar(r.bar, r.sizes);
        }
        b.interrupt_pin(self.interrupt_pin).build()
    }
}

/// A stable 64-bit Device Serial Number derived from a name or serial string (FNV-1a).
pub fn dsn_from_str(s: &str) -> u64 {
    fnv1a(FNV1A_BASIS, s.as_bytes())
}

/// FNV-1a (64-bit) offset basis: where a hash starts.
pub const FNV1A_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `data`, continuing from `state` ([`FNV1A_BASIS`] for a new hash):
/// the project's one stable, dependency-free hash (serial numbers, NGUIDs, cache keys).
pub fn fnv1a(state: u64, data: &[u8]) -> u64 {
    data.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_is_stable_and_distinct() {
        assert_eq!(dsn_from_str("nvme0"), dsn_from_str("nvme0"));
        assert_ne!(dsn_from_str("nvme0"), dsn_from_str("nvme1"));
    }
}

#[cfg(test)]
mod fnv_golden {
    /// Known FNV-1a (64-bit) values: moving the hash would change every device's DSN and
    /// NGUID and every cache key.
    #[test]
    fn fnv1a_is_the_standard_one() {
        assert_eq!(super::fnv1a(super::FNV1A_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            super::fnv1a(super::FNV1A_BASIS, b"a"),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(
            super::fnv1a(super::FNV1A_BASIS, b"foobar"),
            0x8594_4171_f739_67e8
        );
        assert_eq!(super::dsn_from_str("foobar"), 0x8594_4171_f739_67e8);
    }
}
