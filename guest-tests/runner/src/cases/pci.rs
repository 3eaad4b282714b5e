//! pci-config: the guest's view of the p2plab devices' PCI config space (issue #2):
//! IDs, class, BARs (size, 64-bit, prefetchable), capabilities (PM, MSI-X, PCI Express
//! endpoint) and extended capabilities (Device Serial Number; Resizable BAR on the GPU).

use super::Ctx;
use crate::devices::Found;

/// The designed layouts (devices/nvme/src/pci.rs, devices/gpu/src/pci.rs).
const VENDOR: u16 = 0x2b2b;
const NVME_DEVICE: u16 = 0x0002;
const NVME_CLASS: u32 = 0x01_08_02;
const NVME_REG_BAR: u64 = 16 << 10;
const GPU_CLASS: u32 = 0x03_02_00;
const GPU_REG_BAR: u64 = 64 << 10;
const MSIX_BAR: usize = 4;
const MSIX_BAR_SIZE: u64 = 4096;

const CAP_PM: u8 = 0x01;
const CAP_PCIE: u8 = 0x10;
const CAP_MSIX: u8 = 0x11;
const ECAP_DSN: u16 = 0x0003;
const ECAP_REBAR: u16 = 0x0015;

// Linux resource flags (include/linux/ioport.h).
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn rd16(c: &[u8], o: usize) -> u16 {
    c.get(o..o + 2)
        .map_or(0xffff, |b| u16::from_le_bytes([b[0], b[1]]))
}
fn rd32(c: &[u8], o: usize) -> u32 {
    c.get(o..o + 4).map_or(0xffff_ffff, |b| {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// Capability id → offset (standard list).
fn caps(c: &[u8]) -> Result<Vec<(u8, usize)>, String> {
    if rd16(c, 0x06) & 0x10 == 0 {
        return Err("status register has no Capabilities List bit".into());
    }
    let mut out = vec![];
    let mut p = usize::from(c[0x34] & 0xfc);
    while p != 0 {
        if !(0x40..=0xfc).contains(&p) || out.len() > 48 {
            return Err(format!(
                "capability pointer {p:#x} is invalid or the list loops"
            ));
        }
        out.push((c[p], p));
        p = usize::from(c[p + 1] & 0xfc);
    }
    Ok(out)
}

/// Extended capability id → offset.
fn ext_caps(c: &[u8]) -> Result<Vec<(u16, usize)>, String> {
    if c.len() < 4096 {
        return Err(format!(
            "config is {} bytes: no extended config space",
            c.len()
        ));
    }
    let mut out = vec![];
    let mut p = 0x100usize;
    loop {
        let h = rd32(c, p);
        if h == 0 || h == 0xffff_ffff {
            break;
        }
        out.push(((h & 0xffff) as u16, p));
        let next = (h >> 20) as usize & 0xffc;
        if next == 0 {
            break;
        }
        if next < 0x100 || out.len() > 64 {
            return Err(format!(
                "extended capability pointer {next:#x} is invalid or the list loops"
            ));
        }
        p = next;
    }
    Ok(out)
}

struct Bar {
    start: u64,
    size: u64,
    flags: u64,
}

fn resources(bdf: &str) -> Result<Vec<Bar>, String> {
    let p = format!("/sys/bus/pci/devices/{bdf}/resource");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    Ok(text
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(hex).collect();
            let (s, e, fl) = (
                f.first().copied().unwrap_or(0),
                f.get(1).copied().unwrap_or(0),
                f.get(2).copied().unwrap_or(0),
            );
            Bar {
                start: s,
                size: if e > s { e - s + 1 } else { 0 },
                flags: fl,
            }
        })
        .collect())
}

fn check_bar(errs: &mut Vec<String>, bars: &[Bar], i: usize, size: u64, mem64: bool, pref: bool) {
    let Some(b) = bars.get(i) else {
        errs.push(format!("BAR{i}: missing"));
        return;
    };
    let got64 = b.flags & IORESOURCE_MEM_64 != 0;
    let gotp = b.flags & IORESOURCE_PREFETCH != 0;
    if b.flags & IORESOURCE_MEM == 0 || b.size != size || got64 != mem64 || gotp != pref {
        errs.push(format!(
            "BAR{i}: size {:#x} flags {:#x} (64-bit {got64}, prefetchable {gotp}); want size {size:#x}, 64-bit {mem64}, prefetchable {pref}",
            b.size, b.flags
        ));
    }
    if b.start == 0 {
        errs.push(format!("BAR{i}: not assigned"));
    }
}

fn check_device(ctx: &mut Ctx, d: &Found) -> Result<u64, String> {
    let name = &d.info.name;
    let bdf = d
        .bdf
        .as_deref()
        .ok_or_else(|| format!("{name} not found in the guest"))?;
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    let rd = |f: &str| {
        std::fs::read_to_string(format!("{dir}/{f}"))
            .ok()
            .and_then(|s| hex(&s))
            .unwrap_or(u64::MAX)
    };
    let (vendor, device, class) = (rd("vendor"), rd("device"), rd("class"));
    let cfg = std::fs::read(format!("{dir}/config")).map_err(|e| format!("{dir}/config: {e}"))?;
    let bars = resources(bdf)?;
    let mut errs = vec![];
    let (want_dev, want_class, reg_bar, mem_bar, mem_size) = match d.info.kind.as_str() {
        "nvme" => (NVME_DEVICE, NVME_CLASS, NVME_REG_BAR, 2, d.info.cmb_size),
        "gpu" => (
            d.info.device.unwrap_or(0),
            GPU_CLASS,
            GPU_REG_BAR,
            2,
            d.info.vram_size,
        ),
        k => return Err(format!("{name}: kind {k} is not a p2plab device")),
    };
    if vendor != u64::from(VENDOR) || device != u64::from(want_dev) {
        errs.push(format!(
            "ids {vendor:04x}:{device:04x}, want {VENDOR:04x}:{want_dev:04x}"
        ));
    }
    if class != u64::from(want_class) {
        errs.push(format!("class {class:#08x}, want {want_class:#08x}"));
    }
    if u64::from(rd16(&cfg, 0)) != vendor || u64::from(rd16(&cfg, 2)) != device {
        errs.push("config bytes 0..4 disagree with sysfs vendor/device".into());
    }
    check_bar(&mut errs, &bars, 0, reg_bar, true, false);
    if mem_size == 0 {
        errs.push(format!("run.json gives no size for {name}'s memory BAR"));
    } else {
        check_bar(&mut errs, &bars, mem_bar, mem_size, true, true);
    }
    check_bar(&mut errs, &bars, MSIX_BAR, MSIX_BAR_SIZE, false, false);
    let cl = caps(&cfg)?;
    let has = |id: u8| cl.iter().find(|c| c.0 == id).map(|c| c.1);
    for (id, n) in [
        (CAP_PM, "PM"),
        (CAP_MSIX, "MSI-X"),
        (CAP_PCIE, "PCI Express"),
    ] {
        if has(id).is_none() {
            errs.push(format!("no {n} capability"));
        }
    }
    if let Some(p) = has(CAP_PCIE) {
        let ty = (rd16(&cfg, p + 2) >> 4) & 0xf;
        if ty != 0 {
            errs.push(format!("PCIe device/port type {ty}, want 0 (endpoint)"));
        }
    }
    let mut msix = String::new();
    if let Some(p) = has(CAP_MSIX) {
        let n = (rd16(&cfg, p + 2) & 0x7ff) + 1;
        let (tbl, pba) = (rd32(&cfg, p + 4), rd32(&cfg, p + 8));
        msix = format!("MSI-X {n} vectors table BAR{} PBA BAR{}", tbl & 7, pba & 7);
        if (tbl & 7) as usize != MSIX_BAR || (pba & 7) as usize != MSIX_BAR {
            errs.push(format!("{msix}: want both in BAR{MSIX_BAR}"));
        }
    }
    let el = ext_caps(&cfg)?;
    let ehas = |id: u16| el.iter().find(|c| c.0 == id).map(|c| c.1);
    let mut dsn = 0u64;
    match ehas(ECAP_DSN) {
        Some(p) => {
            dsn = u64::from(rd32(&cfg, p + 4)) | (u64::from(rd32(&cfg, p + 8)) << 32);
            if dsn == 0 {
                errs.push("Device Serial Number is 0".into());
            }
        }
        None => errs.push("no Device Serial Number extended capability".into()),
    }
    let mut rebar = String::new();
    if d.info.kind == "gpu" {
        match ehas(ECAP_REBAR) {
            Some(p) => {
                let cap = rd32(&cfg, p + 4);
                let ctrl = rd32(&cfg, p + 8);
                let idx = (ctrl >> 8) & 0x3f;
                let cur = 1u64 << (idx + 20);
                rebar = format!(
                    "ReBAR BAR{} sizes {:#x} current {} MiB",
                    ctrl & 7,
                    cap >> 4,
                    cur >> 20
                );
                if (ctrl & 7) as usize != mem_bar || cur != mem_size || (cap >> 4) & (1 << idx) == 0
                {
                    errs.push(format!(
                        "{rebar}: want BAR{mem_bar} at {} MiB, supported",
                        mem_size >> 20
                    ));
                }
            }
            None => errs.push("no Resizable BAR extended capability".into()),
        }
    }
    ctx.diag(&format!(
        "{name} {bdf}: {vendor:04x}:{device:04x} class {class:06x}; caps [{}]; ext caps [{}]; {msix}; DSN {dsn:016x}{}{}",
        cl.iter().map(|c| format!("{:#04x}@{:#x}", c.0, c.1)).collect::<Vec<_>>().join(" "),
        el.iter().map(|c| format!("{:#06x}@{:#x}", c.0, c.1)).collect::<Vec<_>>().join(" "),
        if rebar.is_empty() { String::new() } else { format!("; {rebar}") },
        ""
    ));
    for (i, b) in bars.iter().enumerate().take(6).filter(|(_, b)| b.size != 0) {
        ctx.diag(&format!(
            "{name} BAR{i}: {:#x} size {:#x} flags {:#x}",
            b.start, b.size, b.flags
        ));
    }
    if errs.is_empty() {
        Ok(dsn)
    } else {
        Err(format!("{name} ({bdf}): {}", errs.join("; ")))
    }
}

pub fn config(ctx: &mut Ctx) -> Result<(), String> {
    // Diagnostics: busybox lspci -k (driver bindings).
    if let Ok(o) = std::process::Command::new("lspci").arg("-k").output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            ctx.diag(&format!("lspci: {l}"));
        }
    }
    let devs: Vec<Found> = ctx
        .env
        .devices
        .iter()
        .filter(|d| d.info.kind == "nvme" || d.info.kind == "gpu")
        .cloned()
        .collect();
    if devs.is_empty() {
        return Err("no p2plab device (kind nvme or gpu) in this topology".into());
    }
    let mut errs = vec![];
    let mut dsns = vec![];
    for d in &devs {
        match check_device(ctx, d) {
            Ok(dsn) => dsns.push((d.info.name.clone(), dsn)),
            Err(e) => errs.push(e),
        }
    }
    for (i, a) in dsns.iter().enumerate() {
        if let Some(b) = dsns[i + 1..].iter().find(|b| b.1 == a.1) {
            errs.push(format!(
                "{} and {} share the Device Serial Number {:016x}",
                a.0, b.0, a.1
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join(" | "))
    }
}
