//! P2P data cases: an NVMe namespace (client) and P2P memory (provider's p2pmem).

use super::gpu::{hex, pattern_digest, Gpu};
use super::Ctx;
use crate::devices::{Found, Role};
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use p2plab_guest_abi::DeviceKind;
use std::time::Instant;

/// Bytes moved per case, and the O_DIRECT chunk.
const LEN: usize = 64 * MIB;
const CHUNK: usize = MIB;
/// Bytes moved when QEMU's own NVMe is one end: it bounces P2P DMA through 4 KiB and
/// its CMB is trapped MMIO for the CPU (~20 MiB/s either way), so 64 MiB took 6–9 s a case
/// in the reference topologies; 16 MiB (16 O_DIRECT requests) checks the same path.
const QEMU_NVME_LEN: usize = 16 * MIB;

/// The bytes a P2P case moves between `client` and `provider`.
pub(super) fn case_len(client: &Found, provider: &Found) -> usize {
    if [client, provider]
        .iter()
        .any(|d| d.info.kind == DeviceKind::QemuNvme)
    {
        QEMU_NVME_LEN
    } else {
        LEN
    }
}
/// Namespace offset the cases use.
const NS_OFF: u64 = 0;
const SEED_READ: u64 = 0x7265_6164;
const SEED_WRITE: u64 = 0x7772_6974;

fn roles<'a>(ctx: &Ctx<'a>) -> Result<(&'a Found, &'a Found, String), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let ns = client
        .ns
        .clone()
        .ok_or_else(|| format!("client {} has no namespace block device", client.info.name))?;
    Ok((client, provider, ns))
}

fn mibs(len: usize, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!(
        "{:.2} s, {:.1} MiB/s",
        s,
        len as f64 / MIB as f64 / s.max(1e-9)
    )
}

pub fn read(ctx: &mut Ctx) -> Result<(), String> {
    let (client, provider, ns) = roles(ctx)?;
    let len = case_len(client, provider);
    let bdf = provider.bdf.as_deref().unwrap_or_default();
    let p2p = Mapping::p2pmem(bdf, len)?;
    let f = open_direct(&ns)?;
    // A GPU provider's VRAM is checked by its checksum engine: no CPU access to it.
    let gpu = if provider.info.kind == DeviceKind::Gpu {
        Some(Gpu::open(provider)?)
    } else {
        None
    };
    // Stage the pattern on the namespace from RAM first.
    let ram = Mapping::ram(len)?;
    ram.fill(SEED_READ);
    let t = Instant::now();
    direct_io(&f, &ram, NS_OFF, CHUNK, true)
        .map_err(|e| format!("staging pwrite from RAM to {ns}: {e}"))?;
    ctx.diag(&format!(
        "staged {} MiB RAM -> {ns}: {}",
        len / MIB,
        mibs(len, t)
    ));
    drop(ram);
    let gpu_check = match &gpu {
        Some(g) => {
            let off = g.vram_offset(&p2p)?;
            let want = pattern_digest(SEED_READ, len);
            // Stale data must not pass: the range must not hold the pattern yet.
            let before = g.checksum(off, len as u64)?;
            if before == want {
                return Err(format!(
                    "VRAM {off:#x}+{len:#x} already holds the pattern before the read"
                ));
            }
            ctx.diag(&format!(
                "p2pmem at VRAM {off:#x}; device SHA-256 before the read {}",
                &hex(&before)[..16]
            ));
            Some((g, off, want))
        }
        None => {
            p2p.fill(!SEED_READ); // make stale data visible
            None
        }
    };
    let t = Instant::now();
    direct_io(&f, &p2p, NS_OFF, CHUNK, false).map_err(|e| {
        format!(
            "pread {ns} -> p2pmem of {} ({bdf}): {e}",
            provider.info.name
        )
    })?;
    ctx.diag(&format!(
        "p2p read {} ({ns}) -> {} p2pmem: {}",
        client.info.name,
        provider.info.name,
        mibs(len, t)
    ));
    let t = Instant::now();
    match gpu_check {
        Some((g, off, want)) => {
            g.expect_digest(off, len, &want, "after the P2P read")?;
            ctx.diag(&format!(
                "device checksum engine: SHA-256 {} matches ({})",
                &hex(&want)[..16],
                mibs(len, t)
            ));
        }
        None => {
            p2p.verify(SEED_READ)?;
            ctx.diag(&format!(
                "verified {} MiB in p2pmem: {}",
                len / MIB,
                mibs(len, t)
            ));
        }
    }
    Ok(())
}

pub fn write(ctx: &mut Ctx) -> Result<(), String> {
    let (client, provider, ns) = roles(ctx)?;
    let len = case_len(client, provider);
    let bdf = provider.bdf.as_deref().unwrap_or_default();
    let p2p = Mapping::p2pmem(bdf, len)?;
    let f = open_direct(&ns)?;
    let t = Instant::now();
    p2p.fill(SEED_WRITE);
    ctx.diag(&format!("pattern into p2pmem: {}", mibs(len, t)));
    let t = Instant::now();
    direct_io(&f, &p2p, NS_OFF, CHUNK, true).map_err(|e| {
        format!(
            "pwrite p2pmem of {} ({bdf}) -> {ns}: {e}",
            provider.info.name
        )
    })?;
    ctx.diag(&format!(
        "p2p write {} p2pmem -> {} ({ns}): {}",
        provider.info.name,
        client.info.name,
        mibs(len, t)
    ));
    let ram = Mapping::ram(len)?;
    let t = Instant::now();
    direct_io(&f, &ram, NS_OFF, CHUNK, false)
        .map_err(|e| format!("read-back pread {ns} -> RAM: {e}"))?;
    ctx.diag(&format!("read back {ns} -> RAM: {}", mibs(len, t)));
    ram.verify(SEED_WRITE)
}

pub fn refused(ctx: &mut Ctx) -> Result<(), String> {
    let (_client, provider, ns) = roles(ctx)?;
    let bdf = provider.bdf.as_deref().unwrap_or_default();
    let p2p = Mapping::p2pmem(bdf, LEN)?;
    let f = open_direct(&ns)?;
    match direct_io(&f, &p2p, NS_OFF, CHUNK, false) {
        Ok(()) => Err("the P2P pread succeeded; it must be refused on this topology".into()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            ctx.diag(&format!(
                "pread {ns} -> p2pmem of {} refused: {e} (expected)",
                provider.info.name
            ));
            Ok(())
        }
        Err(e) => Err(format!("the P2P pread failed with '{e}', expected EINVAL")),
    }
}
