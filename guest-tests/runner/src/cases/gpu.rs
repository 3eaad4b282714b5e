//! The p2pgpu driver's user API (`/dev/p2pgpuN`, `guest-tests/kmod/p2pgpu_uapi.h`) and
//! the GPU-side cases: `copy-engine`, `dmabuf-export`, `cpu-copy`.
//!
//! Data in VRAM is checked with the device's checksum engine (SHA-256 computed by the
//! device) against the digest of the expected pattern computed here, so a case can prove
//! its data without any CPU access to VRAM.

use super::Ctx;
use crate::devices::{Found, Role};
use crate::mem::{pattern, Mapping, MIB};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

const LEN: usize = 64 * MIB;
const SEED_CE: u64 = 0x6365_6e67;
const SEED_CPU: u64 = 0x6370_7563;

// ---------------------------------------------------------------------------------------
// uapi mirror (field by field, see p2pgpu_uapi.h)

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Info {
    pub vram_size: u64,
    pub bar2_bus_addr: u64,
    pub bar2_phys_addr: u64,
    pub p2pmem_offset: u64,
    pub p2pmem_size: u64,
    pub version: u32,
    pub flags: u32,
    pub copy_bounce_size: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Default)]
struct Checksum {
    offset: u64,
    len: u64,
    algo: u32,
    status: u32,
    digest: [u8; 32],
}

#[repr(C)]
#[derive(Default)]
struct Copy {
    src: u64,
    dst: u64,
    len: u64,
    timeout_ms: u32,
    status: u32,
}

#[repr(C)]
#[derive(Default)]
struct CopyUser {
    user_addr: u64,
    dev_addr: u64,
    len: u64,
    timeout_ms: u32,
    status: u32,
}

#[repr(C)]
#[derive(Default)]
struct ExportDmabuf {
    offset: u64,
    len: u64,
    flags: u32,
    fd: i32,
}

#[repr(C)]
#[derive(Default, Debug)]
pub struct Selftest {
    fd: i32,
    flags: u32,
    peer_domain: u32,
    peer_bdf: u32,
    pub dma_addr: u64,
    pub dma_len: u64,
    pub nents: u32,
    pub contiguous: u32,
}

#[repr(C)]
#[derive(Default)]
struct Import {
    fd: i32,
    handle: u32,
    size: u64,
}

/// `P2PGPU_IOC_IMPORT_COPY`'s argument; the out fields are what a case checks.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct ImportCopy {
    handle: u32,
    flags: u32,
    offset: u64,
    local: u64,
    len: u64,
    timeout_ms: u32,
    pub status: u32,
    pub dma_addr: u64,
    pub maps: u64,
    pub invalidations: u64,
}

#[repr(C)]
#[derive(Default)]
struct Invalidate {
    fd: i32,
    flags: u32,
}

/// `P2PGPU_IOC_DMABUF_STATS`: the dma-bufs a device holds, as its driver counts them.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmabufStats {
    pub exports: u32,
    pub export_maps: u32,
    pub imports: u32,
    pub import_maps: u32,
}

pub const INFO_P2PMEM: u32 = 1;
const IMPORT_TO: u32 = 1;
const INVALIDATE_REVOKE: u32 = 1;
const SELFTEST_PEER: u32 = 1;
const CHECKSUM_SHA256: u32 = 1;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xB9 << 8) | nr
}
const IOR: u64 = 2;
const IOWR: u64 = 3;
const IOC_GET_INFO: u64 = ioc(IOR, 0, size_of::<Info>());
const IOC_CHECKSUM: u64 = ioc(IOWR, 1, size_of::<Checksum>());
const IOC_COPY: u64 = ioc(IOWR, 2, size_of::<Copy>());
const IOC_COPY_FROM_USER: u64 = ioc(IOWR, 3, size_of::<CopyUser>());
const IOC_COPY_TO_USER: u64 = ioc(IOWR, 4, size_of::<CopyUser>());
const IOC_EXPORT_DMABUF: u64 = ioc(IOWR, 5, size_of::<ExportDmabuf>());
const IOC_DMABUF_SELFTEST: u64 = ioc(IOWR, 6, size_of::<Selftest>());
const IOW: u64 = 1;
const IOC_IMPORT_DMABUF: u64 = ioc(IOWR, 7, size_of::<Import>());
const IOC_IMPORT_RELEASE: u64 = ioc(IOW, 8, size_of::<Import>());
const IOC_IMPORT_COPY: u64 = ioc(IOWR, 9, size_of::<ImportCopy>());
const IOC_DMABUF_INVALIDATE: u64 = ioc(IOW, 10, size_of::<Invalidate>());
const IOC_DMABUF_STATS: u64 = ioc(IOR, 11, size_of::<DmabufStats>());
const _: () = assert!(
    size_of::<Import>() == 16
        && size_of::<ImportCopy>() == 64
        && size_of::<Invalidate>() == 8
        && size_of::<DmabufStats>() == 16
);
const _: () =
    assert!(size_of::<Info>() == 56 && size_of::<Checksum>() == 56 && size_of::<Copy>() == 32);
const _: () = assert!(
    size_of::<CopyUser>() == 32 && size_of::<ExportDmabuf>() == 24 && size_of::<Selftest>() == 40
);

/// An open `/dev/p2pgpuN` of one GPU-kind device.
pub struct Gpu {
    f: File,
    pub dev: String,
    pub info: Info,
}

impl Gpu {
    /// The char device the driver registered below the device's PCI node.
    pub fn open(d: &Found) -> Result<Gpu, String> {
        let bdf = d
            .bdf
            .as_deref()
            .ok_or_else(|| format!("{} not found in the guest", d.info.name))?;
        let dir = format!("/sys/bus/pci/devices/{bdf}/misc");
        let name = std::fs::read_dir(&dir)
            .map_err(|e| format!("{dir}: {e} (is p2pgpu.ko loaded and bound to {bdf}?)"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("p2pgpu"))
            .ok_or_else(|| format!("no p2pgpu char device in {dir}"))?;
        let dev = format!("/dev/{name}");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| format!("open {dev}: {e}"))?;
        let mut g = Gpu {
            f,
            dev,
            info: Info::default(),
        };
        let mut info = Info::default();
        g.ioctl(IOC_GET_INFO, &mut info, "GET_INFO")?;
        g.info = info;
        Ok(g)
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T, what: &str) -> Result<(), String> {
        self.ioctl_raw(req, arg)
            .map_err(|e| format!("{} {what}: {e}", self.dev))
    }

    fn ioctl_raw<T>(&self, req: u64, arg: &mut T) -> Result<(), std::io::Error> {
        // SAFETY: `arg` is the exclusively borrowed uapi struct this request reads and
        // writes (its size is encoded in `req`); the fd is open.
        let r = unsafe { libc::ioctl(self.f.as_raw_fd(), req as _, std::ptr::from_mut(arg)) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// SHA-256 of VRAM `[offset, offset+len)`, computed by the device.
    pub fn checksum(&self, offset: u64, len: u64) -> Result<[u8; 32], String> {
        let mut ck = Checksum {
            offset,
            len,
            ..Default::default()
        };
        self.ioctl(
            IOC_CHECKSUM,
            &mut ck,
            &format!("CHECKSUM {offset:#x}+{len:#x}"),
        )?;
        if ck.algo != CHECKSUM_SHA256 {
            return Err(format!(
                "{} CHECKSUM: algo {} (want SHA-256), status {:#x}",
                self.dev, ck.algo, ck.status
            ));
        }
        Ok(ck.digest)
    }

    /// Copy engine: `len` bytes from bus address `src` to `dst`.
    pub fn copy(&self, src: u64, dst: u64, len: u64) -> Result<(), String> {
        let mut c = Copy {
            src,
            dst,
            len,
            ..Default::default()
        };
        let r = self.ioctl(
            IOC_COPY,
            &mut c,
            &format!("COPY {src:#x} -> {dst:#x} ({len} bytes)"),
        );
        r.map_err(|e| format!("{e} (descriptor status {:#x})", c.status))
    }

    /// User buffer -> (RAM bounce, copy engine) -> bus address `dev_addr`.
    pub fn copy_from_user(&self, m: &Mapping, dev_addr: u64) -> Result<(), String> {
        let mut c = CopyUser {
            user_addr: m.ptr() as u64,
            dev_addr,
            len: m.len() as u64,
            ..Default::default()
        };
        let r = self.ioctl(
            IOC_COPY_FROM_USER,
            &mut c,
            &format!("COPY_FROM_USER -> {dev_addr:#x}"),
        );
        r.map_err(|e| format!("{e} (descriptor status {:#x})", c.status))
    }

    /// Bus address `dev_addr` -> (copy engine, RAM bounce) -> user buffer.
    pub fn copy_to_user(&self, dev_addr: u64, m: &Mapping) -> Result<(), String> {
        let mut c = CopyUser {
            user_addr: m.ptr() as u64,
            dev_addr,
            len: m.len() as u64,
            ..Default::default()
        };
        let r = self.ioctl(
            IOC_COPY_TO_USER,
            &mut c,
            &format!("COPY_TO_USER {dev_addr:#x} ->"),
        );
        r.map_err(|e| format!("{e} (descriptor status {:#x})", c.status))
    }

    pub fn export_dmabuf(&self, offset: u64, len: u64) -> Result<OwnedFd, std::io::Error> {
        let mut ex = ExportDmabuf {
            offset,
            len,
            flags: 0,
            fd: -1,
        };
        self.ioctl_raw(IOC_EXPORT_DMABUF, &mut ex)?;
        // SAFETY: on success the driver installed a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ex.fd) })
    }

    /// Attach/map/unmap/detach `fd` as this device (`peer` None) or as the PCI device
    /// `peer` = (domain, bus << 8 | devfn).
    pub fn dmabuf_selftest(
        &self,
        fd: i32,
        peer: Option<(u32, u32)>,
    ) -> Result<Selftest, std::io::Error> {
        let mut st = Selftest {
            fd,
            ..Default::default()
        };
        if let Some((dom, bdf)) = peer {
            st.flags = SELFTEST_PEER;
            st.peer_domain = dom;
            st.peer_bdf = bdf;
        }
        self.ioctl_raw(IOC_DMABUF_SELFTEST, &mut st)?;
        Ok(st)
    }

    /// Import a dma-buf as this device (dynamic, peer-to-peer, revocable): the handle
    /// and the dma-buf's size. Nothing is mapped until the first `import_copy`.
    pub fn import(&self, fd: i32) -> Result<(u32, u64), std::io::Error> {
        let mut im = Import {
            fd,
            ..Default::default()
        };
        self.ioctl_raw(IOC_IMPORT_DMABUF, &mut im)?;
        Ok((im.handle, im.size))
    }

    pub fn import_release(&self, handle: u32) -> Result<(), String> {
        let mut im = Import {
            handle,
            ..Default::default()
        };
        self.ioctl(IOC_IMPORT_RELEASE, &mut im, "IMPORT_RELEASE")
    }

    /// The copy engine between bus address `local` and `[offset, offset+len)` of an
    /// import (`to_import`: local → import). The driver maps the import if it is not
    /// mapped; the result carries the errno of a failed map (a revoked export).
    pub fn import_copy(
        &self,
        handle: u32,
        to_import: bool,
        offset: u64,
        local: u64,
        len: u64,
    ) -> (ImportCopy, Result<(), std::io::Error>) {
        let mut ic = ImportCopy {
            handle,
            flags: if to_import { IMPORT_TO } else { 0 },
            offset,
            local,
            len,
            ..Default::default()
        };
        let r = self.ioctl_raw(IOC_IMPORT_COPY, &mut ic);
        (ic, r)
    }

    /// Exporter side: invalidate every importer's mapping of `fd` (`revoke`: for good).
    pub fn invalidate(&self, fd: i32, revoke: bool) -> Result<(), std::io::Error> {
        let mut inv = Invalidate {
            fd,
            flags: if revoke { INVALIDATE_REVOKE } else { 0 },
        };
        self.ioctl_raw(IOC_DMABUF_INVALIDATE, &mut inv)
    }

    pub fn dmabuf_stats(&self) -> Result<DmabufStats, String> {
        let mut st = DmabufStats::default();
        self.ioctl(IOC_DMABUF_STATS, &mut st, "DMABUF_STATS")?;
        Ok(st)
    }

    /// VRAM offset of a p2pmem mapping of this device (checked contiguous, inside BAR2).
    pub fn vram_offset(&self, m: &Mapping) -> Result<u64, String> {
        let phys = phys_contiguous(m)?;
        let (start, size) = (self.info.bar2_phys_addr, self.info.vram_size);
        if phys < start || phys + m.len() as u64 > start + size {
            return Err(format!(
                "p2pmem at phys {phys:#x} is outside BAR2 {start:#x}+{size:#x}"
            ));
        }
        Ok(phys - start)
    }

    /// Check VRAM `[offset, offset+len)` holds `want` with the checksum engine.
    pub fn expect_digest(
        &self,
        offset: u64,
        len: usize,
        want: &[u8; 32],
        what: &str,
    ) -> Result<(), String> {
        let got = self.checksum(offset, len as u64)?;
        if &got != want {
            return Err(format!(
                "{what}: device SHA-256 of VRAM {offset:#x}+{len:#x} is {}, expected {}",
                hex(&got),
                hex(want)
            ));
        }
        Ok(())
    }
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `len` bytes of pattern `seed` (as `Mapping::fill` lays it out).
pub fn pattern_digest(seed: u64, len: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
    let mut i = 0u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        for w in buf[..n].chunks_exact_mut(8) {
            w.copy_from_slice(&pattern(seed, i).to_le_bytes());
            i += 1;
        }
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize().into()
}

/// Physical address of a mapping whose pages are present and physically contiguous
/// (`/proc/self/pagemap`; needs CAP_SYS_ADMIN). Reads no byte of the mapping.
pub fn phys_contiguous(m: &Mapping) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 4096;
    let f =
        File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    let va = m.ptr() as u64;
    let pages = m.len().div_ceil(PAGE as usize);
    let mut raw = vec![0u8; pages * 8];
    f.read_exact_at(&mut raw, va / PAGE * 8)
        .map_err(|e| format!("read /proc/self/pagemap: {e}"))?;
    let mut first = 0u64;
    for (i, e) in raw.chunks_exact(8).enumerate() {
        let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
        let pfn = e & ((1 << 55) - 1);
        if e >> 63 == 0 || pfn == 0 {
            return Err(format!("page {i} of the mapping at {va:#x} is not present or its PFN is hidden (pagemap {e:#x})"));
        }
        if i == 0 {
            first = pfn;
        } else if pfn != first + i as u64 {
            return Err(format!("the mapping at {va:#x} is not physically contiguous (page {i}: pfn {pfn:#x}, page 0: {first:#x})"));
        }
    }
    Ok(first * PAGE)
}

pub fn mibs(len: usize, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!(
        "{:.2} s, {:.1} MiB/s",
        s,
        len as f64 / MIB as f64 / s.max(1e-9)
    )
}

/// Start and size of BAR `bar` from `/sys/bus/pci/devices/<bdf>/resource`.
pub fn bar_resource(bdf: &str, bar: usize) -> Result<(u64, u64), String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/resource");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = text
        .lines()
        .nth(bar)
        .ok_or_else(|| format!("{path}: no line for BAR{bar}"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .collect();
    match f[..] {
        [start, end, _flags] if start != 0 && end > start => Ok((start, end - start + 1)),
        _ => Err(format!("{path}: BAR{bar} is not assigned ('{line}')")),
    }
}

/// `0000:03:00.0` -> (domain, bus << 8 | dev << 3 | fn).
fn parse_bdf(bdf: &str) -> Option<(u32, u32)> {
    let (dom, rest) = bdf.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let h = |s: &str| u32::from_str_radix(s, 16).ok();
    Some((h(dom)?, h(bus)? << 8 | h(dev)? << 3 | h(func)?))
}

// ---------------------------------------------------------------------------------------
// cases

/// Guest RAM -> VRAM A (COPY_FROM_USER) -> client CMB (COPY) -> VRAM B (COPY) -> RAM
/// (COPY_TO_USER); bytes checked in RAM, VRAM checked by the checksum engine.
pub fn copy_engine(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let gpu = Gpu::open(provider)?;
    let cbdf = client.bdf.as_deref().unwrap_or_default();
    let (cmb_start, cmb_size) =
        bar_resource(cbdf, 2).map_err(|e| format!("{} CMB: {e}", client.info.name))?;
    // Reserve the CMB range through the client's p2pmem allocator, so no SQ or other
    // user of the CMB shares it; the CPU never touches it.
    let cmb =
        Mapping::p2pmem(cbdf, LEN).map_err(|e| format!("{} CMB p2pmem: {e}", client.info.name))?;
    let cmb_bus = phys_contiguous(&cmb)?;
    if cmb_bus < cmb_start || cmb_bus + LEN as u64 > cmb_start + cmb_size {
        return Err(format!(
            "CMB p2pmem at {cmb_bus:#x} is outside BAR2 {cmb_start:#x}+{cmb_size:#x} of {cbdf}"
        ));
    }
    // Two VRAM ranges at the top of the BAR (the p2pmem allocator hands out the bottom).
    let vram = gpu.info.vram_size;
    if vram < 4 * LEN as u64 {
        return Err(format!(
            "VRAM of {} is only {vram:#x} bytes",
            provider.info.name
        ));
    }
    let (a, b) = (vram - 2 * LEN as u64, vram - LEN as u64);
    let bus = gpu.info.bar2_bus_addr;
    ctx.diag(&format!(
        "{}: VRAM {} MiB at bus {bus:#x}; {} CMB BAR2 {cmb_start:#x}+{cmb_size:#x}, range at {cmb_bus:#x}",
        gpu.dev,
        vram / MIB as u64,
        client.info.name
    ));
    let want = pattern_digest(SEED_CE, LEN);
    let src = Mapping::ram(LEN)?;
    src.fill(SEED_CE);
    // Stale VRAM must not pass for the result.
    for (off, what) in [(a, "VRAM A"), (b, "VRAM B")] {
        if gpu.checksum(off, LEN as u64)? == want {
            return Err(format!("{what} already holds the pattern before the copy"));
        }
    }

    let t = Instant::now();
    gpu.copy_from_user(&src, bus + a)?;
    ctx.diag(&format!(
        "RAM -> VRAM A (COPY_FROM_USER, bounce {} KiB): {}",
        gpu.info.copy_bounce_size / 1024,
        mibs(LEN, t)
    ));
    gpu.expect_digest(a, LEN, &want, "after RAM -> VRAM A")?;

    let t = Instant::now();
    gpu.copy(bus + a, cmb_bus, LEN as u64)?;
    ctx.diag(&format!(
        "VRAM A -> {} CMB (COPY): {}",
        client.info.name,
        mibs(LEN, t)
    ));

    let t = Instant::now();
    gpu.copy(cmb_bus, bus + b, LEN as u64)?;
    ctx.diag(&format!(
        "{} CMB -> VRAM B (COPY): {}",
        client.info.name,
        mibs(LEN, t)
    ));
    gpu.expect_digest(b, LEN, &want, "after CMB -> VRAM B")?;

    let dst = Mapping::ram(LEN)?;
    let t = Instant::now();
    gpu.copy_to_user(bus + b, &dst)?;
    ctx.diag(&format!("VRAM B -> RAM (COPY_TO_USER): {}", mibs(LEN, t)));
    dst.verify(SEED_CE)
        .map_err(|e| format!("RAM after the round trip: {e}"))?;
    ctx.diag(&format!(
        "verified {} MiB in RAM and both VRAM ranges (SHA-256 {})",
        LEN / MIB,
        &hex(&want)[..16]
    ));
    Ok(())
}

/// Export a VRAM range as a page-less dma-buf and map it as the GPU itself and as the
/// client NVMe device: the DMA address must be the BAR2 bus address + offset.
pub fn dmabuf_export(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let gpu = Gpu::open(provider)?;
    const OFF: u64 = 16 * MIB as u64;
    const SIZE: u64 = 8 * MIB as u64;
    let want_addr = gpu.info.bar2_bus_addr + OFF;

    // Bad ranges are refused.
    for (off, len, why) in [
        (OFF + 1, SIZE, "unaligned offset"),
        (OFF, 0, "zero length"),
        (gpu.info.vram_size, SIZE, "outside VRAM"),
    ] {
        match gpu.export_dmabuf(off, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(format!("EXPORT_DMABUF with {why}: {e}, expected EINVAL")),
            Ok(_) => {
                return Err(format!(
                    "EXPORT_DMABUF with {why} succeeded, expected EINVAL"
                ))
            }
        }
    }

    let fd = gpu
        .export_dmabuf(OFF, SIZE)
        .map_err(|e| format!("{} EXPORT_DMABUF {OFF:#x}+{SIZE:#x}: {e}", gpu.dev))?;
    let raw = fd.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // SAFETY: lseek on an fd we own; a dma-buf reports its size at SEEK_END.
    let size = unsafe { libc::lseek(raw, 0, libc::SEEK_END) };
    ctx.diag(&format!(
        "exported VRAM {OFF:#x}+{SIZE:#x} as fd {raw} ({link}), lseek(SEEK_END) = {size}"
    ));
    if !link.contains("dmabuf") {
        return Err(format!("fd {raw} is not a dma-buf: {link}"));
    }
    if size != SIZE as i64 {
        return Err(format!("dma-buf size {size}, expected {SIZE}"));
    }

    let cbdf = client.bdf.as_deref().unwrap_or_default();
    let peer = parse_bdf(cbdf).ok_or_else(|| format!("cannot parse client bdf '{cbdf}'"))?;
    for (who, p) in [
        (provider.info.name.as_str(), None),
        (client.info.name.as_str(), Some(peer)),
    ] {
        let st = gpu
            .dmabuf_selftest(raw, p)
            .map_err(|e| format!("DMABUF_SELFTEST as {who}: {e}"))?;
        ctx.diag(&format!(
            "importer {who}: dma_addr {:#x} dma_len {:#x} nents {} contiguous {}",
            st.dma_addr, st.dma_len, st.nents, st.contiguous
        ));
        if st.dma_addr != want_addr || st.dma_len != SIZE || st.contiguous != 1 || st.nents == 0 {
            return Err(format!(
                "importer {who} mapped {:#x}+{:#x} (nents {}, contiguous {}), expected BAR2 bus {:#x} + {OFF:#x} = {want_addr:#x}, length {SIZE:#x}, contiguous",
                st.dma_addr, st.dma_len, st.nents, st.contiguous, gpu.info.bar2_bus_addr
            ));
        }
    }
    drop(fd);
    // The fd is gone: the selftest must not find it.
    match gpu.dmabuf_selftest(raw, None) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => Err(format!(
            "DMABUF_SELFTEST on the closed fd: {e}, expected EBADF"
        )),
        Ok(_) => Err("DMABUF_SELFTEST on the closed fd succeeded".into()),
    }
}

/// The CPU copies the pattern into p2pmem with 64-bit stores and reads it back (the CPU
/// witness must count it); the checksum engine confirms the stores reached VRAM.
pub fn cpu_copy(ctx: &mut Ctx) -> Result<(), String> {
    let provider = ctx.env.role(Role::Provider)?;
    let gpu = Gpu::open(provider)?;
    let bdf = provider.bdf.as_deref().unwrap_or_default();
    let p2p = Mapping::p2pmem(bdf, LEN)?;
    let off = gpu.vram_offset(&p2p)?;
    let t = Instant::now();
    p2p.fill(SEED_CPU);
    ctx.diag(&format!(
        "CPU stores {} MiB into {} p2pmem (VRAM {off:#x}): {}",
        LEN / MIB,
        provider.info.name,
        mibs(LEN, t)
    ));
    let t = Instant::now();
    p2p.verify(SEED_CPU)?;
    ctx.diag(&format!(
        "CPU loads and verifies {} MiB: {}",
        LEN / MIB,
        mibs(LEN, t)
    ));
    gpu.expect_digest(
        off,
        LEN,
        &pattern_digest(SEED_CPU, LEN),
        "after the CPU stores",
    )
}
