//! PCI cases.
//! - pci-config: the guest's view of the p2plab devices' PCI config space (issue #2):
//!   IDs, class, BARs (size, 64-bit, prefetchable), capabilities (PM, MSI-X, PCI Express
//!   endpoint) and extended capabilities (Device Serial Number; Resizable BAR on the GPU).
//! - flr-reset: a Function Level Reset of the client NVMe controller through sysfs
//!   (driver unbound), then the driver rebound and the controller working.

use super::Ctx;
use crate::devices::{Found, Role};
use p2plab_guest_abi::ids::{
    GPU_CLASS_CODE as GPU_CLASS, GPU_REG_BAR_SIZE as GPU_REG_BAR, NVME_CLASS_CODE as NVME_CLASS,
    NVME_DEVICE_ID, NVME_REG_BAR_SIZE as NVME_REG_BAR, VENDOR_ID,
};
use p2plab_guest_abi::DeviceKind;

/// The designed layouts (devices/nvme/src/pci.rs, devices/gpu/src/pci.rs).
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
    let (want_dev, want_class, reg_bar, mem_bar, mem_size) = match d.info.kind {
        DeviceKind::Nvme => (NVME_DEVICE_ID, NVME_CLASS, NVME_REG_BAR, 2, d.info.cmb_size),
        DeviceKind::Gpu => (
            d.info.device.unwrap_or(0),
            GPU_CLASS,
            GPU_REG_BAR,
            2,
            d.info.vram_size,
        ),
        k @ DeviceKind::QemuNvme => return Err(format!("{name}: kind {k} is not a p2plab device")),
    };
    if vendor != u64::from(VENDOR_ID) || device != u64::from(want_dev) {
        errs.push(format!(
            "ids {vendor:04x}:{device:04x}, want {VENDOR_ID:04x}:{want_dev:04x}"
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
    if d.info.kind == DeviceKind::Gpu {
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
        .filter(|d| d.info.kind.is_p2plab())
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

// ---------------------------------------------------------------------------------------
// flr-reset: a Function Level Reset of the client NVMe controller through sysfs, with its
// driver unbound, then the driver back and the controller working.

use crate::devices::{DevInfo, Env, RunConfig};
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use std::time::{Duration, Instant};

/// BAR0 registers the case reads while no driver owns the controller (NVMe 1.4 §3.1;
/// Linux `NVME_REG_*`, `NVME_CC_*`, `NVME_CSTS_*`).
const NVME_REG_CC: usize = 0x14;
const NVME_REG_CSTS: usize = 0x1c;
const NVME_CC_ENABLE: u32 = 1 << 0;
const NVME_CSTS_RDY: u32 = 1 << 0;
/// The part of BAR0 the case maps (the registers up to the doorbells).
const NVME_REGS_LEN: usize = 4096;

/// The case's namespace region: after vendor-log (200M + 8M), before fio-verify (256M);
/// see the region map in cases/nvme.rs.
const FLR_OFF: u64 = 208 << 20;
const FLR_LEN: usize = 4 * MIB;
/// How long the re-probed controller may take to show its namespace again (TCG).
const REPROBE_WAIT: Duration = Duration::from_secs(30);

pub(super) fn read_sysfs(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

pub(super) fn write_sysfs(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing '{value}' to {path}: {e}"))
}

/// The driver bound to PCI function `bdf`, if any.
pub(super) fn driver_of(bdf: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
}

/// The first page of a function's BAR0, mapped through sysfs `resource0` (only while no
/// driver owns it). Every access is a trapped MMIO the device model answers.
struct Bar0 {
    ptr: *mut u8,
}

impl Bar0 {
    fn map(bdf: &str) -> Result<Bar0, String> {
        let path = format!("/sys/bus/pci/devices/{bdf}/resource0");
        let ptr = crate::mem::map_shared(&path, NVME_REGS_LEN, libc::PROT_READ)?;
        Ok(Bar0 { ptr })
    }

    /// The 32-bit register at `off` (< NVME_REGS_LEN, 4-byte aligned).
    fn read32(&self, off: usize) -> u32 {
        // SAFETY: off + 4 <= NVME_REGS_LEN and aligned (the callers' constants); the
        // mapping is live. A volatile load is one 32-bit MMIO read.
        unsafe { self.ptr.add(off).cast::<u32>().read_volatile() }
    }

    /// (CC, CSTS).
    fn cc_csts(&self) -> (u32, u32) {
        (self.read32(NVME_REG_CC), self.read32(NVME_REG_CSTS))
    }
}

impl Drop for Bar0 {
    fn drop(&mut self) {
        // SAFETY: ptr came from a successful mmap of NVME_REGS_LEN bytes, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), NVME_REGS_LEN) };
    }
}

/// The device again after its driver re-probed it (controller numbering may change), by
/// serial as devices.rs finds every NVMe controller, waiting for its namespace.
pub(super) fn rediscover(info: &DevInfo) -> Result<crate::devices::Found, String> {
    // A run configuration naming only this device, in run.json's own terms.
    let cfg: RunConfig = serde_json::from_value(serde_json::json!({
        "devices": [{"name": info.name, "kind": info.kind, "serial": info.serial}],
    }))
    .map_err(|e| format!("run configuration for {}: {e}", info.name))?;
    let env = Env::discover(&cfg, REPROBE_WAIT);
    let d = env
        .devices
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} vanished", info.name))?;
    if d.ctrl.is_none() || d.ns.is_none() {
        return Err(format!(
            "{} has no controller or namespace {} s after the rebind",
            info.name,
            REPROBE_WAIT.as_secs()
        ));
    }
    Ok(d)
}

/// An Identify Controller through the admin queue (`nvme id-ctrl`): the serial.
pub(super) fn identify_serial(ctrl: &str) -> Result<(String, String), String> {
    let dev = format!("/dev/{ctrl}");
    let o = std::process::Command::new("nvme")
        .args(["id-ctrl", &dev, "--output-format=json"])
        .output()
        .map_err(|e| format!("cannot run nvme id-ctrl: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "nvme id-ctrl {dev} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("nvme id-ctrl {dev}: not JSON ({e})"))?;
    let field = |k: &str| v[k].as_str().map(|s| s.trim().to_string());
    let sn = field("sn").ok_or_else(|| format!("nvme id-ctrl {dev}: no sn"))?;
    Ok((sn, field("mn").unwrap_or_default()))
}

/// A per-boot seed, so data an earlier run left on the namespace never verifies.
pub(super) fn boot_seed(tag: u64) -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    tag ^ ns.rotate_left(23)
}

/// The FLR itself, with the driver unbound: through `reset` with `reset_method` = flr,
/// proved by the controller registers going from the driver's shutdown state to their
/// power-on values.
fn reset_unbound(ctx: &mut Ctx, bdf: &str) -> Result<(), String> {
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    let before = Bar0::map(bdf)?.cc_csts();
    ctx.diag(&format!(
        "{bdf} unbound: CC {:#010x} CSTS {:#010x}",
        before.0, before.1
    ));
    if before.0 & NVME_CC_ENABLE == 0 && before.1 & NVME_CSTS_RDY == 0 {
        return Err(format!(
            "CC {:#x} CSTS {:#x} before the FLR: already at power-on, nothing to prove",
            before.0, before.1
        ));
    }
    let methods = format!("{dir}/reset_method");
    write_sysfs(&methods, "flr")?;
    let t = Instant::now();
    let reset = write_sysfs(&format!("{dir}/reset"), "1");
    let restored = write_sysfs(&methods, "default");
    reset?;
    restored?;
    let after = Bar0::map(bdf)?.cc_csts();
    ctx.diag(&format!(
        "FLR in {:.0} ms: CC {:#010x} CSTS {:#010x}",
        t.elapsed().as_secs_f64() * 1e3,
        after.0,
        after.1
    ));
    if after != (0, 0) {
        return Err(format!(
            "after the FLR CC is {:#x} and CSTS {:#x}, want both 0 (controller reset)",
            after.0, after.1
        ));
    }
    Ok(())
}

/// flr-reset: unbind nvme from the client, FLR it through sysfs, rebind, then Identify
/// and an O_DIRECT write + read-verify.
pub fn flr_reset(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role(Role::Client)?;
    if c.info.kind != DeviceKind::Nvme {
        return Err(format!(
            "client {} is a {}, not a p2plab NVMe controller",
            c.info.name, c.info.kind
        ));
    }
    let info = c.info.clone();
    let (ctrl0, ns0) = (c.ctrl.clone(), c.ns.clone());
    let bdf = c.bdf.clone().ok_or("client has no PCI address")?;
    let dir = format!("/sys/bus/pci/devices/{bdf}");
    let methods = read_sysfs(&format!("{dir}/reset_method"))?;
    ctx.diag(&format!("{} ({bdf}) reset_method: {methods}", info.name));
    if !methods.split_whitespace().any(|m| m == "flr") {
        return Err(format!(
            "reset_method '{methods}' has no flr (PCIe DEVCAP.FLR not advertised?)"
        ));
    }
    let driver = driver_of(&bdf);
    if driver.as_deref() != Some("nvme") {
        return Err(format!("{bdf} is bound to {driver:?}, want nvme"));
    }
    write_sysfs(&format!("{dir}/driver/unbind"), &bdf)?;
    if let Some(d) = driver_of(&bdf) {
        return Err(format!("{bdf} still bound to {d} after unbind"));
    }
    // Rebind whatever happened, so the cases after this one find the controller.
    let reset = reset_unbound(ctx, &bdf);
    let t = Instant::now();
    write_sysfs("/sys/bus/pci/drivers/nvme/bind", &bdf)?;
    reset?;
    let d = rediscover(&info)?;
    let (ctrl, ns) = (
        d.ctrl.clone().unwrap_or_default(),
        d.ns.clone().unwrap_or_default(),
    );
    let state = read_sysfs(&format!("/sys/class/nvme/{ctrl}/state"))?;
    ctx.diag(&format!(
        "rebound: {ctrl} {ns} state {state} after {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    if state != "live" {
        return Err(format!(
            "{ctrl} state is '{state}' after the rebind, want live"
        ));
    }
    let (sn, mn) = identify_serial(&ctrl)?;
    ctx.diag(&format!("Identify Controller: sn '{sn}' mn '{mn}'"));
    if sn != info.serial.trim() {
        return Err(format!("Identify says sn '{sn}', want '{}'", info.serial));
    }
    let seed = boot_seed(0x666c_7272);
    let f = open_direct(&ns)?;
    let out = Mapping::ram(FLR_LEN)?;
    out.fill(seed);
    let t = Instant::now();
    direct_io(&f, &out, FLR_OFF, MIB, true).map_err(|e| format!("pwrite {ns}: {e}"))?;
    let back = Mapping::ram(FLR_LEN)?;
    back.fill(!seed);
    direct_io(&f, &back, FLR_OFF, MIB, false).map_err(|e| format!("pread {ns}: {e}"))?;
    back.verify(seed)
        .map_err(|e| format!("{ns} read back after the FLR: {e}"))?;
    ctx.diag(&format!(
        "O_DIRECT write + read-verify of {} MiB at {}M: {:.2} s",
        FLR_LEN / MIB,
        FLR_OFF >> 20,
        t.elapsed().as_secs_f64()
    ));
    // The run's other cases use the names found at boot.
    if d.ctrl != ctrl0 || d.ns != ns0 {
        return Err(format!(
            "the client came back as {ctrl} {ns}, the run's other cases use {} {}",
            ctrl0.as_deref().unwrap_or("?"),
            ns0.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}
