//! The page-less P2PDMA cases: one GPU (the importer) DMAs into another GPU's VRAM
//! (the exporter) through a dma-buf, with no struct pages anywhere — the exporter
//! publishes no p2pmem at all in the `two-gpu` topology.
//!
//! - `dmabuf-peer-copy`: 64 MiB from the importer's VRAM into the exported range, checked
//!   with the exporter's checksum engine; the drivers' map counts back to zero after.
//! - `dmabuf-revoke`: an invalidation makes the importer re-map; a revoke makes the next
//!   copy fail cleanly (ENODEV) and move nothing.
//! - `dmabuf-unbind`: the exporter is unbound while the importer holds a mapping and a
//!   copy is in flight; it completes (or is refused) without hang, leak or splat, and the
//!   exporter binds again.

use super::gpu::{hex, mibs, pattern_digest, Gpu, INFO_P2PMEM};
use super::Ctx;
use crate::devices::{Found, Role};
use crate::mem::{Mapping, MIB};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

const LEN: usize = 64 * MIB;
/// Where in the exporter's VRAM the exported range starts.
const EXPORT_OFFSET: u64 = 128 << 20;
const SEED: u64 = 0x6470_6263;
const SMALL: usize = 4 * MIB;

/// The importer and exporter GPUs; the exporter must have no p2pmem when the topology
/// says so (`p2pmem = false`): that is what makes the path page-less.
fn gpus(ctx: &mut Ctx) -> Result<(Found, Gpu, Found, Gpu), String> {
    let imp_dev = ctx.env.role(Role::Importer)?.clone();
    let exp_dev = ctx.env.role(Role::Exporter)?.clone();
    let imp = Gpu::open(&imp_dev)?;
    let exp = Gpu::open(&exp_dev)?;
    let bdf = exp_dev.bdf.clone().unwrap_or_default();
    let sysfs_p2pmem = Path::new(&format!("/sys/bus/pci/devices/{bdf}/p2pmem")).exists();
    let has_p2pmem = exp.info.flags & INFO_P2PMEM != 0;
    if !exp_dev.info.p2pmem && (has_p2pmem || sysfs_p2pmem) {
        return Err(format!(
            "{} should publish no p2pmem (topology p2pmem = false), but the driver says {} and sysfs p2pmem/ {}",
            exp_dev.info.name,
            if has_p2pmem { "yes" } else { "no" },
            if sysfs_p2pmem { "exists" } else { "is absent" }
        ));
    }
    ctx.diag(&format!(
        "struct pages behind {}'s VRAM: {}",
        exp_dev.info.name,
        if has_p2pmem {
            format!("p2pmem published ({} MiB)", exp.info.p2pmem_size >> 20)
        } else {
            format!("none (no p2pmem published on {})", exp_dev.info.name)
        }
    ));
    Ok((imp_dev, imp, exp_dev, exp))
}

/// `len` bytes of pattern `seed` in the importer's VRAM, written by the CPU through its
/// p2pmem (not by DMA from guest RAM, so the importer's RAM traffic stays at its ring);
/// returns the mapping (keeps the range allocated) and its bus address.
fn source(
    ctx: &mut Ctx,
    dev: &Found,
    gpu: &Gpu,
    len: usize,
    seed: u64,
) -> Result<(Mapping, u64), String> {
    let bdf = dev.bdf.as_deref().unwrap_or_default();
    let m = Mapping::p2pmem(bdf, len)
        .map_err(|e| format!("{} p2pmem for the source: {e}", dev.info.name))?;
    m.fill(seed);
    let off = gpu.vram_offset(&m)?;
    gpu.expect_digest(
        off,
        len,
        &pattern_digest(seed, len),
        "the source in the importer's VRAM",
    )?;
    ctx.diag(&format!(
        "source: {} MiB of pattern in {} VRAM {off:#x}",
        len / MIB,
        dev.info.name
    ));
    Ok((m, gpu.info.bar2_bus_addr + off))
}

#[track_caller]
fn want_stats(
    gpu: &Gpu,
    what: &str,
    f: impl Fn(&super::gpu::DmabufStats) -> bool,
) -> Result<(), String> {
    let st = gpu.dmabuf_stats()?;
    if f(&st) {
        Ok(())
    } else {
        Err(format!("{} {what}: driver counts {st:?}", gpu.dev))
    }
}

pub fn peer_copy(ctx: &mut Ctx) -> Result<(), String> {
    let (imp_dev, imp, exp_dev, exp) = gpus(ctx)?;
    let (_src, src_bus) = source(ctx, &imp_dev, &imp, LEN, SEED)?;
    let want = pattern_digest(SEED, LEN);

    let fd = exp
        .export_dmabuf(EXPORT_OFFSET, LEN as u64)
        .map_err(|e| format!("{} EXPORT_DMABUF: {e}", exp.dev))?;
    let (handle, size) = imp
        .import(fd.as_raw_fd())
        .map_err(|e| format!("{} IMPORT_DMABUF: {e}", imp.dev))?;
    if size != LEN as u64 {
        return Err(format!("import size {size}, exported {LEN}"));
    }
    let t = Instant::now();
    let (ic, r) = imp.import_copy(handle, true, 0, src_bus, LEN as u64);
    r.map_err(|e| {
        format!(
            "{} IMPORT_COPY -> {}: {e} (status {:#x})",
            imp.dev, exp_dev.info.name, ic.status
        )
    })?;
    ctx.diag(&format!(
        "{} copy engine -> {} VRAM through the imported dma-buf (bus {:#x}): {}",
        imp_dev.info.name,
        exp_dev.info.name,
        ic.dma_addr,
        mibs(LEN, t)
    ));
    let expect_bus = exp.info.bar2_bus_addr + EXPORT_OFFSET;
    if ic.dma_addr != expect_bus || ic.maps != 1 {
        return Err(format!(
            "the import mapped to {:#x} ({} maps); expected {expect_bus:#x} (BAR2 + {EXPORT_OFFSET:#x}) once",
            ic.dma_addr, ic.maps
        ));
    }
    let got = exp.checksum(EXPORT_OFFSET, LEN as u64)?;
    if got != want {
        return Err(format!(
            "{} VRAM after the copy: device SHA-256 {} expected {}",
            exp_dev.info.name,
            hex(&got),
            hex(&want)
        ));
    }
    ctx.diag(&format!(
        "device checksum engine of {}: SHA-256 {} matches",
        exp_dev.info.name,
        &hex(&got)[..16]
    ));
    want_stats(&exp, "while imported", |s| {
        s.exports == 1 && s.export_maps == 1
    })?;
    want_stats(&imp, "while imported", |s| {
        s.imports == 1 && s.import_maps == 1
    })?;
    imp.import_release(handle)?;
    drop(fd);
    want_stats(&exp, "after release", |s| {
        s.exports == 0 && s.export_maps == 0
    })?;
    want_stats(&imp, "after release", |s| {
        s.imports == 0 && s.import_maps == 0
    })?;
    ctx.diag("map counts back to zero on both drivers");
    Ok(())
}

pub fn revoke(ctx: &mut Ctx) -> Result<(), String> {
    let (imp_dev, imp, _, exp) = gpus(ctx)?;
    let (_src, src_bus) = source(ctx, &imp_dev, &imp, SMALL, SEED)?;
    let fd = exp
        .export_dmabuf(EXPORT_OFFSET, SMALL as u64)
        .map_err(|e| format!("{} EXPORT_DMABUF: {e}", exp.dev))?;
    let (handle, _) = imp
        .import(fd.as_raw_fd())
        .map_err(|e| format!("{} IMPORT_DMABUF: {e}", imp.dev))?;
    let copy = |what: &str| {
        let (ic, r) = imp.import_copy(handle, true, 0, src_bus, SMALL as u64);
        r.map(|()| ic).map_err(|e| {
            format!(
                "{what}: {} IMPORT_COPY: {e} (status {:#x})",
                imp.dev, ic.status
            )
        })
    };

    let first = copy("first copy")?;
    if (first.maps, first.invalidations) != (1, 0) {
        return Err(format!(
            "first copy: {} maps, {} invalidations; expected 1, 0",
            first.maps, first.invalidations
        ));
    }
    // Invalidate: the importer drops its mapping at once; the next copy maps again.
    exp.invalidate(fd.as_raw_fd(), false)
        .map_err(|e| format!("{} DMABUF_INVALIDATE: {e}", exp.dev))?;
    want_stats(&exp, "after the invalidation", |s| s.export_maps == 0)?;
    want_stats(&imp, "after the invalidation", |s| {
        s.imports == 1 && s.import_maps == 0
    })?;
    let second = copy("copy after the invalidation")?;
    if (second.maps, second.invalidations) != (2, 1) {
        return Err(format!(
            "after an invalidation the copy should re-map: {} maps, {} invalidations; expected 2, 1",
            second.maps, second.invalidations
        ));
    }
    exp.expect_digest(
        EXPORT_OFFSET,
        SMALL,
        &pattern_digest(SEED, SMALL),
        "after the re-mapped copy",
    )?;
    ctx.diag(
        "invalidate: the importer unmapped, the next copy re-mapped (2 maps) and moved the data",
    );

    // Revoke: every later map fails; a copy moves nothing.
    exp.invalidate(fd.as_raw_fd(), true)
        .map_err(|e| format!("{} DMABUF_INVALIDATE|REVOKE: {e}", exp.dev))?;
    want_stats(&exp, "after the revoke", |s| s.export_maps == 0)?;
    let before = exp.checksum(EXPORT_OFFSET, SMALL as u64)?;
    let (ic, r) = imp.import_copy(handle, true, 0, src_bus + SMALL as u64, SMALL as u64);
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
        Err(e) => return Err(format!("copy after the revoke: {e}, expected ENODEV")),
        Ok(()) => return Err("a copy after the revoke succeeded".into()),
    }
    if ic.maps != 2 {
        return Err(format!(
            "the revoked import was mapped again ({} maps)",
            ic.maps
        ));
    }
    if exp.checksum(EXPORT_OFFSET, SMALL as u64)? != before {
        return Err("the refused copy changed the exported VRAM".into());
    }
    ctx.diag("revoke: the next copy failed with ENODEV, mapped nothing and moved nothing");
    imp.import_release(handle)?;
    drop(fd);
    want_stats(&exp, "at the end", |s| s.exports == 0 && s.export_maps == 0)?;
    want_stats(&imp, "at the end", |s| s.imports == 0 && s.import_maps == 0)
}

fn sysfs_write(path: &str, v: &str) -> Result<(), String> {
    std::fs::write(path, v).map_err(|e| format!("write {v} to {path}: {e}"))
}

pub fn unbind(ctx: &mut Ctx) -> Result<(), String> {
    let (imp_dev, imp, exp_dev, exp) = gpus(ctx)?;
    let bdf = exp_dev.bdf.clone().unwrap_or_default();
    let (_src, src_bus) = source(ctx, &imp_dev, &imp, LEN, SEED)?;
    let fd = exp
        .export_dmabuf(EXPORT_OFFSET, LEN as u64)
        .map_err(|e| format!("{} EXPORT_DMABUF: {e}", exp.dev))?;
    let (handle, _) = imp
        .import(fd.as_raw_fd())
        .map_err(|e| format!("{} IMPORT_DMABUF: {e}", imp.dev))?;
    let (ic, r) = imp.import_copy(handle, true, 0, src_bus, MIB as u64);
    r.map_err(|e| format!("first copy: {e} (status {:#x})", ic.status))?;

    // A 64 MiB copy in flight (it holds the reservation lock) while the exporter goes.
    let t = Instant::now();
    let (inflight, unbind_secs) = std::thread::scope(|s| {
        let h = s.spawn(|| imp.import_copy(handle, true, 0, src_bus, LEN as u64));
        std::thread::sleep(Duration::from_millis(5));
        let tu = Instant::now();
        let u = sysfs_write("/sys/bus/pci/drivers/p2pgpu/unbind", &bdf);
        (h.join(), u.map(|()| tu.elapsed().as_secs_f64()))
    });
    let unbind_secs = unbind_secs?;
    let (ic, r) = inflight.map_err(|_| "the copy thread panicked".to_string())?;
    let outcome = match r {
        Ok(()) => "completed".to_string(),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            "was refused (ENODEV: the unbind won)".into()
        }
        Err(e) => {
            return Err(format!(
                "the in-flight copy failed with {e} (status {:#x})",
                ic.status
            ))
        }
    };
    ctx.diag(&format!(
        "unbind of {} with a live import and a copy in flight: unbind took {unbind_secs:.2} s, the copy {outcome}, {:.2} s in all",
        exp_dev.info.name,
        t.elapsed().as_secs_f64()
    ));
    let (_, r) = imp.import_copy(handle, true, 0, src_bus, MIB as u64);
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
        other => {
            return Err(format!(
                "a copy after the unbind: {other:?}, expected ENODEV"
            ))
        }
    }
    want_stats(&imp, "after the unbind", |s| {
        s.imports == 1 && s.import_maps == 0
    })?;
    imp.import_release(handle)?;
    drop(fd);
    drop(exp);
    want_stats(&imp, "after the release", |s| {
        s.imports == 0 && s.import_maps == 0
    })?;

    // The exporter binds again and holds nothing.
    sysfs_write("/sys/bus/pci/drivers/p2pgpu/bind", &bdf)?;
    let exp = Gpu::open(&exp_dev)?;
    want_stats(&exp, "after the rebind", |s| *s == Default::default())?;
    ctx.diag(&format!(
        "{} bound again: no exports, no maps",
        exp_dev.info.name
    ));
    Ok(())
}
