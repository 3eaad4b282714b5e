//! NVMe controller cases: binding, identity, CMB publication.

use super::Ctx;

fn sysfs(p: &str) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

pub fn identify(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role("client")?;
    if !c.info.is_nvme() {
        return Err(format!("client {} is a {}, not an NVMe controller", c.info.name, c.info.kind));
    }
    let ctrl = c.ctrl.as_deref().ok_or("no controller")?;
    let bdf = c.bdf.as_deref().unwrap_or_default();
    let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("nvme") {
        return Err(format!("{bdf} is bound to {driver:?}, want nvme"));
    }
    let base = format!("/sys/class/nvme/{ctrl}");
    let serial = sysfs(&format!("{base}/serial")).unwrap_or_default();
    let state = sysfs(&format!("{base}/state")).unwrap_or_default();
    let model = sysfs(&format!("{base}/model")).unwrap_or_default();
    let fw = sysfs(&format!("{base}/firmware_rev")).unwrap_or_default();
    ctx.diag(&format!("{} = {ctrl} at {bdf}: serial '{serial}' model '{model}' fw '{fw}' state {state}", c.info.name));
    if serial != c.info.serial.trim() {
        return Err(format!("serial '{serial}', want '{}'", c.info.serial));
    }
    if state != "live" {
        return Err(format!("{ctrl} state is '{state}', want live"));
    }
    let ns = c.ns.as_deref().ok_or_else(|| format!("{ctrl} has no namespace"))?;
    if !std::path::Path::new(ns).exists() {
        return Err(format!("{ns} does not exist"));
    }
    Ok(())
}

/// The kernel log (SYSLOG_ACTION_READ_ALL).
fn dmesg() -> String {
    // SAFETY: action 10 (SIZE_BUFFER) takes no buffer.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) }.max(1 << 16) as usize;
    let mut buf = vec![0u8; size];
    // SAFETY: buf is valid for `size` bytes.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), size as libc::c_int) };
    buf.truncate(n.max(0) as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn cmb_p2pmem(ctx: &mut Ctx) -> Result<(), String> {
    const MIN: u64 = 64 << 20;
    let mut checked = 0;
    let log = dmesg();
    let names: Vec<String> = [ctx.env.roles.client.clone(), ctx.env.roles.provider.clone()].into_iter().flatten().collect();
    for name in names {
        let Some(d) = ctx.env.device(&name) else { continue };
        if !d.info.is_nvme() || d.info.cmb_size == 0 {
            continue;
        }
        let bdf = d.bdf.as_deref().ok_or_else(|| format!("{name} not found in the guest"))?;
        let size_s = sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/size"))
            .ok_or_else(|| format!("{name} ({bdf}): no p2pmem published (CMB not mapped by nvme)"))?;
        let size: u64 = size_s.parse().map_err(|_| format!("{name}: p2pmem/size '{size_s}'"))?;
        let avail = sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/available")).unwrap_or_default();
        let published = sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/published")).unwrap_or_default();
        ctx.diag(&format!("{name} ({bdf}): p2pmem size {size} available {avail} published {published}"));
        if size < MIN {
            return Err(format!("{name}: p2pmem/size {size} < {MIN}"));
        }
        if published != "1" {
            return Err(format!("{name}: p2pmem/published is '{published}'"));
        }
        if !log.lines().any(|l| l.contains(bdf) && l.contains("added peer-to-peer DMA memory")) {
            return Err(format!("{name}: no 'added peer-to-peer DMA memory' for {bdf} in dmesg"));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no NVMe client/provider with a CMB in this topology".into());
    }
    Ok(())
}
