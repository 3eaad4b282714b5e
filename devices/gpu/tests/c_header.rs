//! The guest driver's view of the device (`guest-tests/kmod/p2pgpu_regs.h` and the PCI
//! ids in `p2pgpu_uapi.h`) must be the device model's (for the ids: `p2plab-guest-abi`'s,
//! which the model uses): every `#define P2PGPU_<NAME>` there has a twin here with the
//! same value, and every twin listed here is defined there. A register moved on one side only fails this test, not a guest case.

use std::collections::BTreeMap;
use std::path::Path;

use p2plab_gpu::{copy, regs};
use p2plab_guest_abi::ids;

/// The device model's values, named as the C header names them (without `P2PGPU_`).
fn model() -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("REG_ID", regs::ID),
        ("REG_VERSION", regs::VERSION),
        ("REG_VRAM_SIZE_LO", regs::VRAM_SIZE_LO),
        ("REG_VRAM_SIZE_HI", regs::VRAM_SIZE_HI),
        ("REG_STATUS", regs::STATUS),
        ("REG_INTR_STATUS", regs::INTR_STATUS),
        ("REG_INTR_ENABLE", regs::INTR_ENABLE),
        ("REG_CE_RING_BASE_LO", regs::CE_RING_BASE_LO),
        ("REG_CE_RING_BASE_HI", regs::CE_RING_BASE_HI),
        ("REG_CE_RING_SIZE", regs::CE_RING_SIZE),
        ("REG_CE_HEAD", regs::CE_HEAD),
        ("REG_CE_TAIL", regs::CE_TAIL),
        ("REG_CE_CTRL", regs::CE_CTRL),
        ("REG_CE_STATUS", regs::CE_STATUS),
        ("REG_CK_OFFSET_LO", regs::CK_OFFSET_LO),
        ("REG_CK_OFFSET_HI", regs::CK_OFFSET_HI),
        ("REG_CK_LEN_LO", regs::CK_LEN_LO),
        ("REG_CK_LEN_HI", regs::CK_LEN_HI),
        ("REG_CK_CTRL", regs::CK_CTRL),
        ("REG_CK_STATUS", regs::CK_STATUS),
        ("REG_CK_ALGO", regs::CK_ALGO),
        ("REG_CK_DIGEST", regs::CK_DIGEST),
        ("ID_VALUE", u64::from(regs::ID_VALUE)),
        ("INTR_CE_DONE", u64::from(regs::INTR_CE_DONE)),
        ("INTR_CE_ERROR", u64::from(regs::INTR_CE_ERROR)),
        ("INTR_CK_DONE", u64::from(regs::INTR_CK_DONE)),
        ("INTR_CK_ERROR", u64::from(regs::INTR_CK_ERROR)),
        ("VECTOR_CE", u64::from(regs::VECTOR_CE)),
        ("VECTOR_CK", u64::from(regs::VECTOR_CK)),
        ("CE_CTRL_ENABLE", u64::from(regs::CE_CTRL_ENABLE)),
        ("CE_STATUS_HALTED", u64::from(regs::CE_STATUS_HALTED)),
        ("CE_STATUS_ACTIVE", u64::from(regs::CE_STATUS_ACTIVE)),
        ("CK_CTRL_START", u64::from(regs::CK_CTRL_START)),
        ("CK_STATUS_BUSY", u64::from(regs::CK_STATUS_BUSY)),
        ("CK_STATUS_DONE", u64::from(regs::CK_STATUS_DONE)),
        ("CK_STATUS_ERROR", u64::from(regs::CK_STATUS_ERROR)),
        ("DESC_SIZE", copy::DESC_SIZE),
        ("DESC_FLAG_INTERRUPT", u64::from(copy::DESC_FLAG_INTERRUPT)),
        ("DESC_STATUS_DONE", u64::from(copy::DESC_STATUS_DONE)),
        ("DESC_STATUS_ERROR", u64::from(copy::DESC_STATUS_ERROR)),
        // The one definition of the ids (the device model's `pci::VENDOR_ID` and
        // `pci::DEVICE_ID` are these; the guest runner finds the device by them).
        ("PCI_VENDOR_ID", u64::from(ids::VENDOR_ID)),
        ("PCI_DEVICE_ID", u64::from(ids::GPU_DEVICE_ID)),
    ])
}

/// `#define P2PGPU_NAME VALUE` lines with a literal or `BIT(n)` value (function-like
/// macros and expressions of other names are the driver's own, not the device's).
fn defines(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (w.next(), w.next()) else {
            continue;
        };
        let Some(name) = name.strip_prefix("P2PGPU_") else {
            continue;
        };
        let v = if let Some(bit) = value.strip_prefix("BIT(").and_then(|v| v.strip_suffix(')')) {
            bit.parse::<u32>().ok().map(|b| 1u64 << b)
        } else if let Some(hex) = value.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            value.parse().ok()
        };
        if let Some(v) = v {
            out.insert(name.to_string(), v);
        }
    }
    out
}

fn kmod(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../guest-tests/kmod")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn c_header_and_device_model_agree() {
    let mut c = defines(&kmod("p2pgpu_regs.h"));
    let uapi = defines(&kmod("p2pgpu_uapi.h"));
    for id in ["PCI_VENDOR_ID", "PCI_DEVICE_ID"] {
        c.insert(id.into(), uapi[id]);
    }
    let rust = model();
    let mut diffs = vec![];
    for (name, v) in &c {
        match rust.get(name.as_str()) {
            Some(r) if r == v => {}
            Some(r) => diffs.push(format!("P2PGPU_{name}: C {v:#x}, device model {r:#x}")),
            None => diffs.push(format!(
                "P2PGPU_{name} ({v:#x}) has no twin in the device model table"
            )),
        }
    }
    for name in rust.keys() {
        if !c.contains_key(*name) {
            diffs.push(format!("P2PGPU_{name} is not defined in the C headers"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn the_parser_sees_what_a_drift_would_change() {
    let d = defines("#define P2PGPU_REG_X\t0x1f\n#define P2PGPU_B BIT(3)\n#define P2PGPU_F(v) ((v) >> 1)\n#define OTHER 1\n");
    assert_eq!(d.len(), 2);
    assert_eq!((d["REG_X"], d["B"]), (0x1f, 8));
}
