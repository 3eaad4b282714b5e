//! Config-space behaviour, one spec rule per test, driven only through the public API.

use p2plab_pci::ext_caps::dsn::{PCI_DSN_LOWER, PCI_DSN_UPPER};
use p2plab_pci::ext_caps::rebar::{
    PCI_REBAR_CAP, PCI_REBAR_CTRL, PCI_REBAR_CTRL_BAR_IDX, PCI_REBAR_CTRL_BAR_SHIFT,
    PCI_REBAR_CTRL_BAR_SIZE, PCI_REBAR_CTRL_NBAR_MASK, PCI_REBAR_CTRL_NBAR_SHIFT,
};
use p2plab_pci::ext_caps::{
    ext_cap_id, ext_cap_next, ext_cap_version, PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_REBAR,
};
use p2plab_pci::msix::*;
use p2plab_pci::pcie::*;
use p2plab_pci::pm::*;
use p2plab_pci::regs::*;
use p2plab_pci::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const VENDOR: u16 = 0x1b36;
const DEVICE: u16 = 0x0010;
const SUBSYSTEM_VENDOR: u16 = 0x1af4;
const SUBSYSTEM: u16 = 0x1100;
const REVISION: u8 = 0x02;
/// Mass storage / Non-Volatile Memory controller / NVM Express.
const CLASS_NVME: u32 = 0x01_08_02;
const SERIAL: u64 = 0x0011_2233_4455_6677;
const INTA: u8 = 1;

const REG_BAR: usize = 0;
const CMB_BAR: usize = 2;
const MSIX_BAR: usize = 4;
const MSIX_VECTORS: u16 = 64;
const MSIX_TABLE_OFFSET: u64 = 0;
const MSIX_PBA_OFFSET: u64 = 8 * KIB;

fn ids() -> PciIds {
    PciIds {
        vendor: VENDOR,
        device: DEVICE,
        subsystem_vendor: SUBSYSTEM_VENDOR,
        subsystem: SUBSYSTEM,
        revision: REVISION,
        class: CLASS_NVME,
    }
}

fn mem64(size: u64, prefetchable: bool) -> BarDef {
    BarDef {
        size,
        kind: BarKind::Mem64,
        prefetchable,
    }
}

fn mem32(size: u64) -> BarDef {
    BarDef {
        size,
        kind: BarKind::Mem32,
        prefetchable: false,
    }
}

/// Bit n of a Resizable BAR sizes mask names 2^(n+20) bytes.
fn rebar_bit(size: u64) -> u64 {
    1 << (size.trailing_zeros() - 20)
}

/// The representative NVMe-like function: BAR0 64-bit 16 KiB registers, BAR2 64-bit
/// prefetchable 128 MiB CMB (resizable 64 MiB..1 GiB), BAR4 32-bit 16 KiB MSI-X.
fn nvme_like() -> ConfigSpace {
    ConfigSpace::builder(ids())
        .bar(REG_BAR, mem64(16 * KIB, false))
        .bar(CMB_BAR, mem64(128 * MIB, true))
        .bar(MSIX_BAR, mem32(16 * KIB))
        .msix(
            MSIX_VECTORS,
            MSIX_BAR,
            MSIX_TABLE_OFFSET,
            MSIX_BAR,
            MSIX_PBA_OFFSET,
        )
        .power_management()
        .pcie_endpoint()
        .dsn(SERIAL)
        .resizable_bar(
            CMB_BAR,
            rebar_bit(64 * MIB) | rebar_bit(128 * MIB) | rebar_bit(256 * MIB) | rebar_bit(GIB),
        )
        .interrupt_pin(INTA)
        .build()
        .expect("NVMe-like declaration is valid")
}

fn single_bar(def: BarDef) -> ConfigSpace {
    ConfigSpace::builder(ids())
        .bar(0, def)
        .build()
        .expect("single BAR is valid")
}

fn bar_reg(bar: usize) -> usize {
    PCI_BASE_ADDRESS_0 + 4 * bar
}

fn off(offset: usize) -> u64 {
    offset as u64
}

#[track_caller]
fn read8(cfg: &ConfigSpace, offset: usize) -> u8 {
    let mut b = [0; 1];
    cfg.read(off(offset), &mut b);
    b[0]
}

#[track_caller]
fn read16(cfg: &ConfigSpace, offset: usize) -> u16 {
    let mut b = [0; 2];
    cfg.read(off(offset), &mut b);
    u16::from_le_bytes(b)
}

#[track_caller]
fn read32(cfg: &ConfigSpace, offset: usize) -> u32 {
    let mut b = [0; 4];
    cfg.read(off(offset), &mut b);
    u32::from_le_bytes(b)
}

#[track_caller]
fn write8(cfg: &mut ConfigSpace, offset: usize, v: u8) -> ConfigEvents {
    cfg.write(off(offset), &[v])
}

#[track_caller]
fn write16(cfg: &mut ConfigSpace, offset: usize, v: u16) -> ConfigEvents {
    cfg.write(off(offset), &v.to_le_bytes())
}

#[track_caller]
fn write32(cfg: &mut ConfigSpace, offset: usize, v: u32) -> ConfigEvents {
    cfg.write(off(offset), &v.to_le_bytes())
}

/// Linux `__pci_read_base`: write all-ones, read back, restore.
#[track_caller]
fn size_register(cfg: &mut ConfigSpace, offset: usize) -> u32 {
    let saved = read32(cfg, offset);
    write32(cfg, offset, u32::MAX);
    let sized = read32(cfg, offset);
    write32(cfg, offset, saved);
    sized
}

#[track_caller]
fn cap(cfg: &ConfigSpace, id: u8) -> usize {
    cfg.capability_offset(id)
        .unwrap_or_else(|| panic!("capability {id:#x} missing"))
}

#[track_caller]
fn ext_cap(cfg: &ConfigSpace, id: u16) -> usize {
    cfg.ext_capability_offset(id)
        .unwrap_or_else(|| panic!("extended capability {id:#x} missing"))
}

#[track_caller]
fn assert_build_err(builder: ConfigSpaceBuilder, expected: ConfigError) {
    match builder.build() {
        Ok(cfg) => panic!("expected {expected:?}, built {cfg:?}"),
        Err(err) => assert_eq!(err, expected),
    }
}

mod header {
    use super::*;

    #[test]
    fn ids_class_and_header_type_read_back() {
        let cfg = nvme_like();
        assert_eq!(read16(&cfg, PCI_VENDOR_ID), VENDOR);
        assert_eq!(read16(&cfg, PCI_DEVICE_ID), DEVICE);
        assert_eq!(read8(&cfg, PCI_REVISION_ID), REVISION);
        assert_eq!(read32(&cfg, PCI_REVISION_ID) >> 8, CLASS_NVME);
        assert_eq!(read8(&cfg, PCI_HEADER_TYPE), PCI_HEADER_TYPE_NORMAL);
        assert_eq!(read16(&cfg, PCI_SUBSYSTEM_VENDOR_ID), SUBSYSTEM_VENDOR);
        assert_eq!(read16(&cfg, PCI_SUBSYSTEM_ID), SUBSYSTEM);
        assert_eq!(read8(&cfg, PCI_INTERRUPT_PIN), INTA);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut cfg = nvme_like();
        let before: Vec<u8> = [
            PCI_VENDOR_ID,
            PCI_DEVICE_ID,
            PCI_REVISION_ID,
            PCI_CLASS_PROG,
            PCI_CLASS_DEVICE,
            PCI_CLASS_BASE,
            PCI_HEADER_TYPE,
            PCI_SUBSYSTEM_VENDOR_ID,
            PCI_CAPABILITY_LIST,
            PCI_INTERRUPT_PIN,
        ]
        .iter()
        .map(|&o| read8(&cfg, o))
        .collect();
        for o in [0x00, 0x08, 0x0c, 0x2c, 0x34] {
            write32(&mut cfg, o, 0xa5a5_a5a5);
        }
        write8(&mut cfg, PCI_INTERRUPT_PIN, 0x4);
        let after: Vec<u8> = [
            PCI_VENDOR_ID,
            PCI_DEVICE_ID,
            PCI_REVISION_ID,
            PCI_CLASS_PROG,
            PCI_CLASS_DEVICE,
            PCI_CLASS_BASE,
            PCI_HEADER_TYPE,
            PCI_SUBSYSTEM_VENDOR_ID,
            PCI_CAPABILITY_LIST,
            PCI_INTERRUPT_PIN,
        ]
        .iter()
        .map(|&o| read8(&cfg, o))
        .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn command_register_keeps_only_implemented_bits() {
        let mut cfg = nvme_like();
        let events = write16(&mut cfg, PCI_COMMAND, u16::MAX);
        assert!(events.command_changed);
        assert_eq!(
            read16(&cfg, PCI_COMMAND),
            PCI_COMMAND_MEMORY
                | PCI_COMMAND_MASTER
                | PCI_COMMAND_PARITY
                | PCI_COMMAND_SERR
                | PCI_COMMAND_INTX_DISABLE
        );
        assert!(cfg.memory_enabled());
        assert!(cfg.bus_master());
        assert!(cfg.intx_disabled());
        assert_eq!(read16(&cfg, PCI_COMMAND) & PCI_COMMAND_IO, 0, "no I/O BARs");
    }

    #[test]
    fn command_write_without_change_is_not_an_event() {
        let mut cfg = nvme_like();
        write16(&mut cfg, PCI_COMMAND, PCI_COMMAND_MEMORY);
        let again = write16(&mut cfg, PCI_COMMAND, PCI_COMMAND_MEMORY);
        assert!(!again.command_changed);
        assert!(cfg.memory_enabled());
        assert!(!cfg.bus_master());
    }

    #[test]
    fn status_error_bits_are_rw1c_and_cap_list_is_read_only() {
        let mut cfg = nvme_like();
        let errors = PCI_STATUS_REC_MASTER_ABORT | PCI_STATUS_DETECTED_PARITY;
        cfg.device_write(
            PCI_STATUS as u16,
            &(PCI_STATUS_CAP_LIST | errors).to_le_bytes(),
        );
        write16(&mut cfg, PCI_STATUS, PCI_STATUS_REC_MASTER_ABORT);
        assert_eq!(
            read16(&cfg, PCI_STATUS),
            PCI_STATUS_CAP_LIST | PCI_STATUS_DETECTED_PARITY
        );
        write16(&mut cfg, PCI_STATUS, 0);
        assert_eq!(
            read16(&cfg, PCI_STATUS),
            PCI_STATUS_CAP_LIST | PCI_STATUS_DETECTED_PARITY,
            "writing 0 leaves RW1C bits"
        );
        write16(&mut cfg, PCI_STATUS, u16::MAX);
        assert_eq!(read16(&cfg, PCI_STATUS), PCI_STATUS_CAP_LIST);
    }

    #[test]
    fn interrupt_status_is_device_owned() {
        let mut cfg = nvme_like();
        cfg.set_interrupt_status(true);
        write16(&mut cfg, PCI_STATUS, PCI_STATUS_INTERRUPT);
        assert_ne!(read16(&cfg, PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
        cfg.set_interrupt_status(false);
        assert_eq!(read16(&cfg, PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
    }

    #[test]
    fn interrupt_line_and_cache_line_size_are_writable() {
        let mut cfg = nvme_like();
        write8(&mut cfg, PCI_INTERRUPT_LINE, 11);
        write8(&mut cfg, PCI_CACHE_LINE_SIZE, 16);
        assert_eq!(read8(&cfg, PCI_INTERRUPT_LINE), 11);
        assert_eq!(read8(&cfg, PCI_CACHE_LINE_SIZE), 16);
        assert_eq!(read8(&cfg, PCI_LATENCY_TIMER), 0);
    }

    #[test]
    fn no_capabilities_means_no_cap_list_bit() {
        let cfg = single_bar(mem32(4 * KIB));
        assert_eq!(read16(&cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST, 0);
        assert_eq!(read8(&cfg, PCI_CAPABILITY_LIST), 0);
        assert_eq!(read32(&cfg, PCI_CONFIG_SPACE_SIZE), 0, "no extended caps");
    }

    #[test]
    fn expansion_rom_reads_zero_even_after_sizing() {
        let mut cfg = nvme_like();
        assert_eq!(size_register(&mut cfg, PCI_ROM_ADDRESS), 0);
        assert_eq!(read32(&cfg, PCI_ROM_ADDRESS), 0);
    }
}

mod bars {
    use super::*;

    #[test]
    fn bar32_sizing_reads_size_mask_with_type_bits() {
        let mut cfg = single_bar(mem32(16 * KIB));
        assert_eq!(read32(&cfg, bar_reg(0)), 0);
        assert_eq!(size_register(&mut cfg, bar_reg(0)), !(16 * KIB as u32 - 1));
    }

    #[test]
    fn bar64_sizing_covers_both_dwords() {
        let mut cfg = single_bar(mem64(16 * KIB, false));
        let low = size_register(&mut cfg, bar_reg(0));
        let high = size_register(&mut cfg, bar_reg(1));
        assert_eq!(low, !(16 * KIB as u32 - 1) | PCI_BASE_ADDRESS_MEM_TYPE_64);
        assert_eq!(high, u32::MAX);
        let size = !((u64::from(high) << 32) | u64::from(low & PCI_BASE_ADDRESS_MEM_MASK)) + 1;
        assert_eq!(size, 16 * KIB);
    }

    #[test]
    fn prefetchable_bit_is_read_only_type_information() {
        let mut cfg = single_bar(mem64(2 * MIB, true));
        let type_bits = PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH;
        assert_eq!(read32(&cfg, bar_reg(0)), type_bits);
        write32(&mut cfg, bar_reg(0), 0);
        assert_eq!(read32(&cfg, bar_reg(0)), type_bits);
        assert_eq!(read32(&cfg, bar_reg(0)) & PCI_BASE_ADDRESS_SPACE_IO, 0);
    }

    #[test]
    fn huge_bars_size_through_the_upper_dword() {
        for size in [128 * GIB, 256 * GIB, 1 << 40, 1 << 48] {
            let mut cfg = single_bar(mem64(size, true));
            let low = size_register(&mut cfg, bar_reg(0));
            let high = size_register(&mut cfg, bar_reg(1));
            assert_eq!(
                low,
                PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH,
                "{size:#x}: no address bits in the low dword"
            );
            assert_eq!(high, (!(size - 1) >> 32) as u32, "{size:#x}");
            assert_eq!(cfg.bar_size(0), size);
        }
    }

    #[test]
    fn bar_address_is_none_while_sizing_and_set_once_programmed() {
        let mut cfg = single_bar(mem64(128 * GIB, true));
        assert_eq!(cfg.bar_address(0), None, "unprogrammed");
        write32(&mut cfg, bar_reg(0), u32::MAX);
        write32(&mut cfg, bar_reg(1), u32::MAX);
        assert_eq!(cfg.bar_address(0), None, "sizing pattern");
        write32(&mut cfg, bar_reg(0), 0);
        assert_eq!(cfg.bar_address(0), None, "upper dword still sizing");
        let base = 0x80_0000_0000u64;
        write32(&mut cfg, bar_reg(0), base as u32);
        let events = write32(&mut cfg, bar_reg(1), (base >> 32) as u32);
        assert!(events.bars_changed);
        assert_eq!(cfg.bar_address(0), Some(base));
        assert_eq!(
            cfg.bar(0),
            Some(BarInfo {
                size: 128 * GIB,
                kind: BarKind::Mem64,
                prefetchable: true,
                address: Some(base)
            })
        );
    }

    #[test]
    fn bar_address_drops_bits_below_the_size() {
        let mut cfg = single_bar(mem32(16 * KIB));
        write32(&mut cfg, bar_reg(0), 0xfebf_1234);
        assert_eq!(cfg.bar_address(0), Some(0xfebf_0000));
    }

    #[test]
    fn byte_writes_program_a_bar() {
        let mut cfg = single_bar(mem32(4 * KIB));
        for (i, b) in 0xfe00_0000u32.to_le_bytes().iter().enumerate() {
            write8(&mut cfg, bar_reg(0) + i, *b);
        }
        assert_eq!(cfg.bar_address(0), Some(0xfe00_0000));
    }

    #[test]
    fn unimplemented_bars_read_zero_and_ignore_writes() {
        let mut cfg = nvme_like();
        let unused = 5;
        assert_eq!(size_register(&mut cfg, bar_reg(unused)), 0);
        assert_eq!(cfg.bar_size(unused), 0);
        assert_eq!(cfg.bar_address(unused), None);
        assert_eq!(cfg.bar_size(6), 0, "beyond the header");
        assert_eq!(cfg.bar_address(usize::MAX), None);
    }

    #[test]
    fn upper_half_of_a_64bit_bar_is_not_a_bar() {
        let mut cfg = nvme_like();
        write32(&mut cfg, bar_reg(1), 0x1);
        assert_eq!(cfg.bar_size(1), 0);
        assert_eq!(cfg.bar(1), None);
        assert_eq!(cfg.bar_address(1), None);
    }

    #[test]
    fn reset_clears_bar_addresses_and_command() {
        let mut cfg = nvme_like();
        write32(&mut cfg, bar_reg(MSIX_BAR), 0xfe00_0000);
        write16(
            &mut cfg,
            PCI_COMMAND,
            PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        );
        cfg.reset();
        assert_eq!(cfg.bar_address(MSIX_BAR), None);
        assert_eq!(read16(&cfg, PCI_COMMAND), 0);
        assert_eq!(read32(&cfg, bar_reg(REG_BAR)), PCI_BASE_ADDRESS_MEM_TYPE_64);
    }
}

mod capabilities {
    use super::*;

    #[test]
    fn capability_list_walk_finds_pm_msix_pcie_in_order() {
        let cfg = nvme_like();
        assert_ne!(read16(&cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST, 0);
        let mut found = Vec::new();
        let mut at = usize::from(read8(&cfg, PCI_CAPABILITY_LIST));
        while at != 0 {
            assert!(at >= 0x40 && at % 4 == 0, "capability at {at:#x}");
            found.push(read8(&cfg, at + PCI_CAP_LIST_ID));
            at = usize::from(read8(&cfg, at + PCI_CAP_LIST_NEXT));
        }
        assert_eq!(found, [PCI_CAP_ID_PM, PCI_CAP_ID_MSIX, PCI_CAP_ID_EXP]);
    }

    #[test]
    fn pm_supports_d0_and_d3hot_with_no_soft_reset() {
        let mut cfg = nvme_like();
        let pm = cap(&cfg, PCI_CAP_ID_PM);
        assert_eq!(
            read16(&cfg, pm + PCI_PM_PMC) & PCI_PM_CAP_VER_MASK,
            PCI_PM_CAP_VER_1_2
        );
        let pmcsr = read16(&cfg, pm + PCI_PM_CTRL);
        assert_ne!(pmcsr & PCI_PM_CTRL_NO_SOFT_RESET, 0);
        assert_eq!(cfg.pm_state(), PowerState::D0);

        write16(
            &mut cfg,
            PCI_COMMAND,
            PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        );
        let events = write16(&mut cfg, pm + PCI_PM_CTRL, PowerState::D3Hot.bits());
        assert!(events.pm_state_changed);
        assert_eq!(cfg.pm_state(), PowerState::D3Hot);
        assert!(!cfg.memory_enabled(), "no decoding in D3hot");
        assert!(!cfg.bus_master(), "no DMA in D3hot");
        assert_ne!(
            read16(&cfg, pm + PCI_PM_CTRL) & PCI_PM_CTRL_NO_SOFT_RESET,
            0,
            "No_Soft_Reset is read-only"
        );

        write16(&mut cfg, pm + PCI_PM_CTRL, PowerState::D0.bits());
        assert_eq!(cfg.pm_state(), PowerState::D0);
        assert!(
            cfg.memory_enabled(),
            "D3hot->D0 keeps Command (No_Soft_Reset)"
        );
    }

    #[test]
    fn pm_write_of_unsupported_d1_is_discarded() {
        let mut cfg = nvme_like();
        let pm = cap(&cfg, PCI_CAP_ID_PM);
        write16(&mut cfg, pm + PCI_PM_CTRL, PowerState::D3Hot.bits());
        let events = write16(&mut cfg, pm + PCI_PM_CTRL, 1);
        assert!(!events.pm_state_changed);
        assert_eq!(cfg.pm_state(), PowerState::D3Hot);
    }

    #[test]
    fn msix_capability_describes_table_and_pba() {
        let cfg = nvme_like();
        let at = cap(&cfg, PCI_CAP_ID_MSIX);
        assert_eq!(
            read16(&cfg, at + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_QSIZE,
            MSIX_VECTORS - 1
        );
        let table = read32(&cfg, at + PCI_MSIX_TABLE);
        let pba = read32(&cfg, at + PCI_MSIX_PBA);
        assert_eq!(table & PCI_MSIX_FLAGS_BIRMASK, MSIX_BAR as u32);
        assert_eq!(
            u64::from(table & !PCI_MSIX_FLAGS_BIRMASK),
            MSIX_TABLE_OFFSET
        );
        assert_eq!(pba & PCI_MSIX_FLAGS_BIRMASK, MSIX_BAR as u32);
        assert_eq!(u64::from(pba & !PCI_MSIX_FLAGS_BIRMASK), MSIX_PBA_OFFSET);
        let info = cfg.msix().expect("MSI-X declared");
        assert_eq!(
            info.table_range(),
            0..u64::from(MSIX_VECTORS) * PCI_MSIX_ENTRY_SIZE
        );
        assert_eq!(info.pba_range(), MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + 8);
    }

    #[test]
    fn msix_enable_and_function_mask_are_writable_table_size_is_not() {
        let mut cfg = nvme_like();
        let at = cap(&cfg, PCI_CAP_ID_MSIX);
        assert!(!cfg.msix_enabled());
        let events = write16(&mut cfg, at + PCI_MSIX_FLAGS, u16::MAX);
        assert!(events.msix_changed);
        assert!(cfg.msix_enabled());
        assert!(cfg.msix_function_masked());
        assert_eq!(
            read16(&cfg, at + PCI_MSIX_FLAGS) & PCI_MSIX_FLAGS_QSIZE,
            MSIX_VECTORS - 1
        );
        // Linux enables with the function masked, then clears the mask (byte write).
        write8(
            &mut cfg,
            at + PCI_MSIX_FLAGS + 1,
            (PCI_MSIX_FLAGS_ENABLE >> 8) as u8,
        );
        assert!(cfg.msix_enabled());
        assert!(!cfg.msix_function_masked());
        write32(&mut cfg, at + PCI_MSIX_TABLE, u32::MAX);
        assert_eq!(
            read32(&cfg, at + PCI_MSIX_TABLE) & PCI_MSIX_FLAGS_BIRMASK,
            4
        );
    }

    #[test]
    fn pcie_capability_is_a_v2_endpoint_with_flr_and_a_trained_link() {
        let cfg = nvme_like();
        let at = cap(&cfg, PCI_CAP_ID_EXP);
        let flags = read16(&cfg, at + PCI_EXP_FLAGS);
        assert_eq!(flags & PCI_EXP_FLAGS_VERS, PCI_EXP_FLAGS_VERS_2);
        assert_eq!((flags & PCI_EXP_FLAGS_TYPE) >> 4, PCI_EXP_TYPE_ENDPOINT);
        let devcap = read32(&cfg, at + PCI_EXP_DEVCAP);
        assert_ne!(devcap & PCI_EXP_DEVCAP_FLR, 0);
        assert_eq!(devcap & PCI_EXP_DEVCAP_PAYLOAD, PCI_EXP_DEVCAP_PAYLOAD_256B);
        let link = PcieLink::default();
        let lnkcap = read32(&cfg, at + PCI_EXP_LNKCAP);
        assert_eq!(lnkcap & PCI_EXP_LNKCAP_SLS, link.speed as u32);
        assert_eq!((lnkcap & PCI_EXP_LNKCAP_MLW) >> 4, u32::from(link.width));
        let lnksta = read16(&cfg, at + PCI_EXP_LNKSTA);
        assert_eq!(lnksta & PCI_EXP_LNKSTA_CLS, link.speed as u16);
        assert_eq!((lnksta & PCI_EXP_LNKSTA_NLW) >> 4, u16::from(link.width));
        let lnkcap2 = read32(&cfg, at + PCI_EXP_LNKCAP2);
        assert_ne!(lnkcap2 & (1 << link.speed as u32), 0, "max speed in vector");
        assert_ne!(
            read32(&cfg, at + PCI_EXP_DEVCAP2) & PCI_EXP_DEVCAP2_COMP_TMOUT_DIS,
            0
        );
    }

    #[test]
    fn pcie_link_is_configurable() {
        let cfg = ConfigSpace::builder(ids())
            .pcie_link(PcieLink {
                speed: LinkSpeed::Gt32,
                width: 16,
            })
            .build()
            .expect("Gen5 x16 is valid");
        let at = cap(&cfg, PCI_CAP_ID_EXP);
        let lnksta = read16(&cfg, at + PCI_EXP_LNKSTA);
        assert_eq!(lnksta & PCI_EXP_LNKSTA_CLS, LinkSpeed::Gt32 as u16);
        assert_eq!((lnksta & PCI_EXP_LNKSTA_NLW) >> 4, 16);
    }

    #[test]
    fn pcie_device_control_is_writable_and_device_status_rw1c() {
        let mut cfg = nvme_like();
        let at = cap(&cfg, PCI_CAP_ID_EXP);
        let ctl = PCI_EXP_DEVCTL_CERE | PCI_EXP_DEVCTL_EXT_TAG | (1 << 5);
        write16(&mut cfg, at + PCI_EXP_DEVCTL, ctl);
        assert_eq!(read16(&cfg, at + PCI_EXP_DEVCTL), ctl);
        cfg.device_write(
            (at + PCI_EXP_DEVSTA) as u16,
            &(PCI_EXP_DEVSTA_CED | PCI_EXP_DEVSTA_URD).to_le_bytes(),
        );
        write16(&mut cfg, at + PCI_EXP_DEVSTA, PCI_EXP_DEVSTA_CED);
        assert_eq!(read16(&cfg, at + PCI_EXP_DEVSTA), PCI_EXP_DEVSTA_URD);
        write16(
            &mut cfg,
            at + PCI_EXP_DEVCTL2,
            PCI_EXP_DEVCTL2_COMP_TMOUT_DIS,
        );
        assert_eq!(
            read16(&cfg, at + PCI_EXP_DEVCTL2),
            PCI_EXP_DEVCTL2_COMP_TMOUT_DIS
        );
        write32(&mut cfg, at + PCI_EXP_DEVCAP, 0);
        assert_ne!(read32(&cfg, at + PCI_EXP_DEVCAP), 0, "DEVCAP is read-only");
    }

    #[test]
    fn initiate_flr_resets_config_space_and_is_reported() {
        let mut cfg = nvme_like();
        let at = cap(&cfg, PCI_CAP_ID_EXP);
        write16(
            &mut cfg,
            PCI_COMMAND,
            PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
        );
        write32(&mut cfg, bar_reg(MSIX_BAR), 0xfe00_0000);
        let devctl = read16(&cfg, at + PCI_EXP_DEVCTL);
        let events = write16(
            &mut cfg,
            at + PCI_EXP_DEVCTL,
            devctl | PCI_EXP_DEVCTL_BCR_FLR,
        );
        assert!(events.flr_requested);
        assert!(events.command_changed);
        assert!(events.bars_changed);
        assert_eq!(read16(&cfg, PCI_COMMAND), 0);
        assert_eq!(cfg.bar_address(MSIX_BAR), None);
        assert_eq!(
            read16(&cfg, at + PCI_EXP_DEVCTL) & PCI_EXP_DEVCTL_BCR_FLR,
            0,
            "Initiate FLR reads 0"
        );
    }

    #[test]
    fn reset_restores_capability_control_registers() {
        let mut cfg = nvme_like();
        let msix = cap(&cfg, PCI_CAP_ID_MSIX);
        let pm = cap(&cfg, PCI_CAP_ID_PM);
        write16(&mut cfg, msix + PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE);
        write16(&mut cfg, pm + PCI_PM_CTRL, PowerState::D3Hot.bits());
        cfg.reset();
        assert!(!cfg.msix_enabled());
        assert_eq!(cfg.pm_state(), PowerState::D0);
    }
}

mod extended {
    use super::*;

    fn chain(cfg: &ConfigSpace) -> Vec<(u16, u8, usize)> {
        let mut found = Vec::new();
        let mut at = PCI_CONFIG_SPACE_SIZE;
        while at != 0 {
            let header = read32(cfg, at);
            found.push((ext_cap_id(header), ext_cap_version(header), at));
            at = ext_cap_next(header);
        }
        found
    }

    #[test]
    fn chain_holds_dsn_then_rebar() {
        let cfg = nvme_like();
        let ids: Vec<(u16, u8)> = chain(&cfg).iter().map(|&(id, v, _)| (id, v)).collect();
        assert_eq!(ids, [(PCI_EXT_CAP_ID_DSN, 1), (PCI_EXT_CAP_ID_REBAR, 1)]);
        assert_eq!(ext_cap(&cfg, PCI_EXT_CAP_ID_DSN), PCI_CONFIG_SPACE_SIZE);
    }

    #[test]
    fn dsn_reads_the_serial_and_is_read_only() {
        let mut cfg = nvme_like();
        let at = ext_cap(&cfg, PCI_EXT_CAP_ID_DSN);
        write32(&mut cfg, at + PCI_DSN_LOWER, 0);
        let lower = u64::from(read32(&cfg, at + PCI_DSN_LOWER));
        let upper = u64::from(read32(&cfg, at + PCI_DSN_UPPER));
        assert_eq!(upper << 32 | lower, SERIAL);
    }

    #[test]
    fn rebar_reports_supported_and_current_sizes() {
        let cfg = nvme_like();
        let at = ext_cap(&cfg, PCI_EXT_CAP_ID_REBAR);
        let cap = read32(&cfg, at + PCI_REBAR_CAP);
        // Capability bit (n + 4) = 2^(n+20) bytes: 64 MiB is n = 6.
        let expected = [64 * MIB, 128 * MIB, 256 * MIB, GIB]
            .iter()
            .fold(0u32, |acc, &s| acc | (rebar_bit(s) as u32) << 4);
        assert_eq!(cap, expected);
        let ctrl = read32(&cfg, at + PCI_REBAR_CTRL);
        assert_eq!(ctrl & PCI_REBAR_CTRL_BAR_IDX, CMB_BAR as u32);
        assert_eq!(
            (ctrl & PCI_REBAR_CTRL_NBAR_MASK) >> PCI_REBAR_CTRL_NBAR_SHIFT,
            1
        );
        let current = (ctrl & PCI_REBAR_CTRL_BAR_SIZE) >> PCI_REBAR_CTRL_BAR_SHIFT;
        assert_eq!(1u64 << (current + 20), 128 * MIB);
    }

    #[track_caller]
    fn write_rebar_size(cfg: &mut ConfigSpace, size: u64) -> ConfigEvents {
        let at = ext_cap(cfg, PCI_EXT_CAP_ID_REBAR);
        let ctrl = read32(cfg, at + PCI_REBAR_CTRL) & !PCI_REBAR_CTRL_BAR_SIZE;
        let encoding = size.trailing_zeros() - 20;
        write32(
            cfg,
            at + PCI_REBAR_CTRL,
            ctrl | encoding << PCI_REBAR_CTRL_BAR_SHIFT,
        )
    }

    #[test]
    fn rebar_resize_changes_bar_size_and_sizing_mask() {
        let mut cfg = nvme_like();
        write32(&mut cfg, bar_reg(CMB_BAR), 0x1000_0000);
        write32(&mut cfg, bar_reg(CMB_BAR + 1), 0x1);
        let events = write_rebar_size(&mut cfg, GIB);
        assert!(events.bars_changed);
        assert_eq!(cfg.bar_size(CMB_BAR), GIB);
        assert_eq!(
            size_register(&mut cfg, bar_reg(CMB_BAR)) & PCI_BASE_ADDRESS_MEM_MASK,
            !(GIB as u32 - 1)
        );
        assert_eq!(
            cfg.bar_address(CMB_BAR),
            Some(0x1_0000_0000),
            "address bits below the new size are dropped"
        );
    }

    #[test]
    fn rebar_unsupported_size_is_ignored() {
        let mut cfg = nvme_like();
        let at = ext_cap(&cfg, PCI_EXT_CAP_ID_REBAR);
        let before = read32(&cfg, at + PCI_REBAR_CTRL);
        let events = write_rebar_size(&mut cfg, 512 * MIB);
        assert!(!events.bars_changed);
        assert_eq!(read32(&cfg, at + PCI_REBAR_CTRL), before);
        assert_eq!(cfg.bar_size(CMB_BAR), 128 * MIB);
    }

    #[test]
    fn reset_restores_the_default_bar_size() {
        let mut cfg = nvme_like();
        write_rebar_size(&mut cfg, 64 * MIB);
        cfg.reset();
        assert_eq!(cfg.bar_size(CMB_BAR), 128 * MIB);
    }
}

mod access {
    use super::*;

    #[test]
    fn unaligned_accesses_see_little_endian_bytes() {
        let cfg = nvme_like();
        // Vendor high byte + Device ID + Command low byte.
        let got = read32(&cfg, PCI_VENDOR_ID + 1);
        let expected =
            u32::from_le_bytes([(VENDOR >> 8) as u8, DEVICE as u8, (DEVICE >> 8) as u8, 0]);
        assert_eq!(got, expected);
        assert_eq!(read16(&cfg, PCI_CLASS_PROG), (CLASS_NVME & 0xffff) as u16);
        assert_eq!(read8(&cfg, PCI_CLASS_BASE), (CLASS_NVME >> 16) as u8);
    }

    #[test]
    fn a_write_spanning_registers_applies_each_mask() {
        let mut cfg = nvme_like();
        // Dword at 0x04: Command (RW bits) + Status (RW1C and RO bits).
        cfg.device_write(
            PCI_STATUS as u16,
            &(PCI_STATUS_CAP_LIST | PCI_STATUS_SIG_TARGET_ABORT).to_le_bytes(),
        );
        write32(&mut cfg, PCI_COMMAND, u32::MAX);
        assert_eq!(read16(&cfg, PCI_STATUS), PCI_STATUS_CAP_LIST);
        assert!(cfg.memory_enabled());
        // Odd 3-byte write straddling Interrupt Line and Pin.
        cfg.write(off(PCI_INTERRUPT_LINE), &[9, 3, 0]);
        assert_eq!(read8(&cfg, PCI_INTERRUPT_LINE), 9);
        assert_eq!(read8(&cfg, PCI_INTERRUPT_PIN), INTA);
    }

    #[test]
    fn out_of_range_accesses_read_zero_and_do_not_panic() {
        let mut cfg = nvme_like();
        let end = off(PCIE_CONFIG_SPACE_SIZE);
        for offset in [end, end + 1, u64::MAX - 1, u64::MAX] {
            let mut buf = [0xaa; 8];
            cfg.read(offset, &mut buf);
            assert_eq!(buf, [0; 8]);
            assert_eq!(cfg.write(offset, &[0xff; 8]), ConfigEvents::default());
        }
        // Straddling the end: the in-range part is served.
        let mut buf = [0xaa; 4];
        cfg.read(end - 2, &mut buf);
        assert_eq!(buf, [0; 4]);
        cfg.write(end - 1, &[0xff; 16]);
        cfg.read(0, &mut []);
        cfg.write(0, &[]);
        let mut big = vec![0xaa; 2 * PCIE_CONFIG_SPACE_SIZE];
        cfg.read(0, &mut big);
        assert_eq!(read16(&cfg, PCI_VENDOR_ID), VENDOR);
        assert!(big[PCIE_CONFIG_SPACE_SIZE..].iter().all(|&b| b == 0));
    }

    #[test]
    fn clones_are_independent_and_debug_is_concise() {
        let cfg = nvme_like();
        let mut copy = cfg.clone();
        write16(&mut copy, PCI_COMMAND, PCI_COMMAND_MEMORY);
        assert!(!cfg.memory_enabled());
        let text = format!("{cfg:?}");
        assert!(text.contains("ConfigSpace"));
        assert!(text.len() < 2000, "{} bytes", text.len());
    }
}

mod builder_errors {
    use super::*;

    fn base() -> ConfigSpaceBuilder {
        ConfigSpace::builder(ids())
    }

    #[test]
    fn overlapping_bar_registers() {
        assert_build_err(
            base().bar(0, mem64(4 * KIB, false)).bar(1, mem32(4 * KIB)),
            ConfigError::BarOverlap { bar: 1 },
        );
        assert_build_err(
            base().bar(2, mem32(4 * KIB)).bar(2, mem32(4 * KIB)),
            ConfigError::BarOverlap { bar: 2 },
        );
    }

    #[test]
    fn bar_sizes() {
        assert_build_err(
            base().bar(0, mem32(12 * KIB)),
            ConfigError::BarSizeNotPowerOfTwo {
                bar: 0,
                size: 12 * KIB,
            },
        );
        assert_build_err(
            base().bar(0, mem32(8)),
            ConfigError::BarSizeRange {
                bar: 0,
                size: 8,
                min: 16,
                max: 2 * GIB,
            },
        );
        assert_build_err(
            base().bar(0, mem32(4 * GIB)),
            ConfigError::BarSizeRange {
                bar: 0,
                size: 4 * GIB,
                min: 16,
                max: 2 * GIB,
            },
        );
        assert!(base().bar(0, mem64(1 << 63, true)).build().is_ok());
    }

    #[test]
    fn bar_indices() {
        assert_build_err(
            base().bar(5, mem64(4 * KIB, false)),
            ConfigError::Bar64AtLastIndex { bar: 5 },
        );
        assert_build_err(
            base().bar(6, mem32(4 * KIB)),
            ConfigError::BarIndex { bar: 6 },
        );
    }

    #[test]
    fn msix_placement() {
        let with_bar = || base().bar(4, mem32(4 * KIB));
        assert_build_err(
            with_bar().msix(8, 0, 0, 4, 2048),
            ConfigError::MsixBarMissing {
                structure: "table",
                bar: 0,
            },
        );
        assert_build_err(
            with_bar().msix(8, 4, 4 * KIB - 64, 4, 2048),
            ConfigError::MsixOutsideBar {
                structure: "table",
                bar: 4,
                offset: 4 * KIB - 64,
                len: 128,
            },
        );
        assert_build_err(
            with_bar().msix(8, 4, 0, 4, 4 * KIB),
            ConfigError::MsixOutsideBar {
                structure: "PBA",
                bar: 4,
                offset: 4 * KIB,
                len: 8,
            },
        );
        assert_build_err(
            with_bar().msix(8, 4, 4, 4, 2048),
            ConfigError::MsixMisaligned {
                structure: "table",
                offset: 4,
            },
        );
        assert_build_err(
            with_bar().msix(8, 4, 0, 4, 64),
            ConfigError::MsixTablePbaOverlap { bar: 4 },
        );
        assert_build_err(
            with_bar().msix(0, 4, 0, 4, 2048),
            ConfigError::MsixVectors { vectors: 0 },
        );
        assert_build_err(
            with_bar().msix(MSIX_MAX_VECTORS + 1, 4, 0, 4, 2048),
            ConfigError::MsixVectors {
                vectors: MSIX_MAX_VECTORS + 1,
            },
        );
    }

    #[test]
    fn resizable_bar_declarations() {
        let with_bar = || base().pcie_endpoint().bar(2, mem64(128 * MIB, true));
        assert_build_err(
            with_bar().resizable_bar(0, rebar_bit(MIB)),
            ConfigError::RebarBarMissing { bar: 0 },
        );
        assert_build_err(
            with_bar().resizable_bar(2, rebar_bit(64 * MIB)),
            ConfigError::RebarCurrentSize {
                bar: 2,
                size: 128 * MIB,
            },
        );
        assert_build_err(
            with_bar().resizable_bar(2, 0),
            ConfigError::RebarSizes { bar: 2, sizes: 0 },
        );
        assert_build_err(
            with_bar()
                .resizable_bar(2, rebar_bit(128 * MIB))
                .resizable_bar(2, rebar_bit(128 * MIB)),
            ConfigError::RebarDuplicate { bar: 2 },
        );
        assert_build_err(
            base()
                .bar(2, mem64(128 * MIB, true))
                .resizable_bar(2, rebar_bit(128 * MIB)),
            ConfigError::ExtCapsWithoutPcie,
        );
    }

    #[test]
    fn header_fields() {
        let mut wide = ids();
        wide.class = 0x0100_0000;
        assert_build_err(
            ConfigSpace::builder(wide),
            ConfigError::ClassTooWide { class: 0x0100_0000 },
        );
        assert_build_err(
            base().interrupt_pin(5),
            ConfigError::InterruptPin { pin: 5 },
        );
        assert_build_err(
            base().pcie_link(PcieLink {
                speed: LinkSpeed::Gt8,
                width: 3,
            }),
            ConfigError::LinkWidth { width: 3 },
        );
    }
}

/// Key bytes of the representative NVMe-like function, as `lspci -xxxx` would show them.
mod golden_nvme {
    use super::*;

    #[track_caller]
    fn assert_bytes(cfg: &ConfigSpace, offset: usize, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        cfg.read(off(offset), &mut got);
        assert_eq!(got, expected, "bytes at {offset:#05x}");
    }

    #[test]
    fn header_bytes() {
        let cfg = nvme_like();
        // 00: vendor, device, command 0, status = capabilities list.
        assert_bytes(
            &cfg,
            0x00,
            &[0x36, 0x1b, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00],
        );
        // 08: revision, class 01 08 02 (prog-if first), cache line, latency, header 0, BIST.
        assert_bytes(
            &cfg,
            0x08,
            &[0x02, 0x02, 0x08, 0x01, 0x00, 0x00, 0x00, 0x00],
        );
        // 10: BAR0 64-bit, BAR1 upper, BAR2 64-bit prefetchable, BAR3 upper.
        assert_bytes(
            &cfg,
            0x10,
            &[0x04, 0, 0, 0, 0, 0, 0, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0],
        );
        // 20: BAR4 32-bit non-prefetchable, BAR5 absent, CardBus CIS 0, subsystem IDs.
        assert_bytes(
            &cfg,
            0x20,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf4, 0x1a, 0x00, 0x11],
        );
        // 30: no ROM, capabilities at 0x40, interrupt line 0, pin INTA.
        assert_bytes(
            &cfg,
            0x30,
            &[0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0, 0],
        );
    }

    #[test]
    fn bar_sizes() {
        let mut cfg = nvme_like();
        assert_eq!(cfg.bar_size(REG_BAR), 16 * KIB);
        assert_eq!(cfg.bar_size(CMB_BAR), 128 * MIB);
        assert_eq!(cfg.bar_size(MSIX_BAR), 16 * KIB);
        assert_eq!(size_register(&mut cfg, bar_reg(REG_BAR)), 0xffff_c004);
        assert_eq!(size_register(&mut cfg, bar_reg(CMB_BAR)), 0xf800_000c);
        assert_eq!(size_register(&mut cfg, bar_reg(MSIX_BAR)), 0xffff_c000);
    }

    #[test]
    fn capability_bytes() {
        let cfg = nvme_like();
        // 40: PM, next 0x50, PMC version 1.2, PMCSR D0 + No_Soft_Reset.
        assert_bytes(
            &cfg,
            0x40,
            &[0x01, 0x50, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00],
        );
        // 50: MSI-X, next 0x60, 64 vectors, table BIR 4 @ 0, PBA BIR 4 @ 0x2000.
        assert_bytes(
            &cfg,
            0x50,
            &[
                0x11, 0x60, 0x3f, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0x20, 0x00, 0x00,
            ],
        );
        // 60: PCIe v2 Endpoint, end of list; DEVCAP with FLR, 256 B MPS.
        assert_bytes(
            &cfg,
            0x60,
            &[0x10, 0x00, 0x02, 0x00, 0xe1, 0x8f, 0x00, 0x10],
        );
        // 6c: LNKCAP Gen4 x4; 72: LNKSTA Gen4 x4, slot clock.
        assert_bytes(&cfg, 0x6c, &[0x44, 0x00, 0x00, 0x00]);
        assert_bytes(&cfg, 0x72, &[0x44, 0x10]);
    }

    #[test]
    fn extended_capability_bytes() {
        let cfg = nvme_like();
        // 100: DSN v1, next 0x110; serial.
        assert_bytes(&cfg, 0x100, &[0x03, 0x00, 0x01, 0x11]);
        assert_bytes(&cfg, 0x104, &SERIAL.to_le_bytes());
        // 110: ReBAR v1, end; cap = 64M|128M|256M|1G; ctrl = BAR 2, 1 BAR, size 128 MiB (7).
        assert_bytes(&cfg, 0x110, &[0x15, 0x00, 0x01, 0x00]);
        assert_bytes(&cfg, 0x114, &[0x00, 0x5c, 0x00, 0x00]);
        assert_bytes(&cfg, 0x118, &[0x22, 0x07, 0x00, 0x00]);
    }
}
