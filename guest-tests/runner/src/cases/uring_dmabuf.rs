//! Block I/O straight into a dma-buf: the "Add dmabuf read/write via io_uring" series
//! (shared/DESIGN.md §7). A p2pgpu export (VRAM, no struct pages) is registered as an
//! io_uring fixed buffer for the client namespace opened O_DIRECT, and NVMe
//! `READ_FIXED`/`WRITE_FIXED` DMA between the namespace and VRAM.
//!
//! Every case first probes the kernel: an `IORING_RSRC_UPDATE_EXTENDED` buffer update
//! with an EMPTY descriptor returns 1 with the series and fails (EINVAL) without it; a
//! kernel without the series reports each case `# SKIP` with the probe's answer.
//!
//! The uAPI mirrored here is the series' (patches 09-10 of v3; layouts as DESIGN §7
//! records them) — facts, not code, of the series.

use super::gpu::{hex, mibs, pattern_digest, Gpu};
use super::uring::{Cqe, Ring, Sqe};
use super::Ctx;
use crate::devices::{Found, Role};
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const IORING_REGISTER_BUFFERS2: u32 = 15;
const IORING_REGISTER_BUFFERS_UPDATE: u32 = 16;
const IORING_RSRC_REGISTER_SPARSE: u32 = 1 << 0;
const IORING_RSRC_UPDATE_EXTENDED: u32 = 1 << 1;
const IO_REGBUF_TYPE_EMPTY: u32 = 0;
const IO_REGBUF_TYPE_DMABUF: u32 = 2;
const OP_READ_FIXED: u8 = 4;
const OP_WRITE_FIXED: u8 = 5;

/// `struct io_uring_rsrc_register`.
#[repr(C)]
#[derive(Default)]
struct RsrcRegister {
    nr: u32,
    flags: u32,
    resv2: u64,
    data: u64,
    tags: u64,
}

/// `struct io_uring_rsrc_update2`.
#[repr(C)]
#[derive(Default)]
struct RsrcUpdate2 {
    offset: u32,
    flags: u32,
    data: u64,
    tags: u64,
    nr: u32,
    resv2: u32,
}

/// `struct io_uring_regbuf_desc` (the series).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RegbufDesc {
    typ: u32,
    flags: u32,
    size: u64,
    uaddr: u64,
    dmabuf_fd: i32,
    target_fd: i32,
    resv: [u64; 6],
}
const _: () = assert!(
    size_of::<RsrcRegister>() == 32
        && size_of::<RsrcUpdate2>() == 32
        && size_of::<RegbufDesc>() == 80
);

const LEN: usize = 64 * MIB;
const SEED: u64 = 0x6462_7566;
/// Namespace layout: A holds the staged pattern, B receives WRITE_FIXED, C the
/// buffered-fd regression.
const NS_A: u64 = 512 << 20;
const NS_B: u64 = 640 << 20;
const NS_C: u64 = 800 << 20;
/// Where the exported range starts in the exporter's VRAM.
const EXPORT_OFFSET: u64 = 256 << 20;
const SLOTS: u32 = 4;

/// A ring with a sparse fixed-buffer table.
fn sparse_ring(depth: u32) -> Result<Ring, String> {
    sparse_ring_with(Ring::new(depth)?)
}

/// [`sparse_ring`]'s table on `ring` (e.g. a polled one).
fn sparse_ring_with(ring: Ring) -> Result<Ring, String> {
    let mut reg = RsrcRegister {
        nr: SLOTS,
        flags: IORING_RSRC_REGISTER_SPARSE,
        ..Default::default()
    };
    ring.register(
        IORING_REGISTER_BUFFERS2,
        &mut reg,
        size_of::<RsrcRegister>() as u32,
    )
    .map_err(|e| format!("IORING_REGISTER_BUFFERS2 (sparse, {SLOTS} slots): {e}"))?;
    Ok(ring)
}

/// An EXTENDED update of `slot` with `desc`: the kernel's result (1 when it took it).
fn update(ring: &Ring, slot: u32, desc: &RegbufDesc) -> Result<i32, std::io::Error> {
    let mut d = *desc;
    let mut up = RsrcUpdate2 {
        offset: slot,
        flags: IORING_RSRC_UPDATE_EXTENDED,
        data: std::ptr::from_mut(&mut d) as u64,
        nr: 1,
        ..Default::default()
    };
    ring.register(
        IORING_REGISTER_BUFFERS_UPDATE,
        &mut up,
        size_of::<RsrcUpdate2>() as u32,
    )
}

fn dmabuf_desc(dmabuf: i32, target: i32) -> RegbufDesc {
    RegbufDesc {
        typ: IO_REGBUF_TYPE_DMABUF,
        dmabuf_fd: dmabuf,
        target_fd: target,
        ..Default::default()
    }
}

/// The series' probe (DESIGN §7): `Ok(())` with it, else the reason to skip.
fn probe() -> Result<(), String> {
    let ring = sparse_ring(4)?;
    let empty = RegbufDesc {
        typ: IO_REGBUF_TYPE_EMPTY,
        ..Default::default()
    };
    match update(&ring, 0, &empty) {
        Ok(1) => Ok(()),
        Ok(n) => Err(format!("the probe update returned {n}, not 1")),
        Err(e) => Err(format!(
            "this kernel has no dma-buf io_uring buffers (probe: EXTENDED update with an EMPTY descriptor -> {e})"
        )),
    }
}

/// One request of a batch.
#[derive(Clone, Copy)]
struct Req {
    write: bool,
    /// Namespace byte offset.
    ns_off: u64,
    /// Byte offset in the registered dma-buf.
    buf_off: u64,
    len: u32,
}

/// Results of a batch: one `res` per request, and how many -EAGAIN were reissued.
struct Batch {
    res: Vec<i32>,
    eagain: u32,
}

/// Run `reqs` on `fd` against fixed buffer `slot`, at most `depth` in flight, in order;
/// a spurious -EAGAIN (first I/O after registration or invalidation) is reissued.
fn run(
    ring: &Ring,
    fd: i32,
    slot: u16,
    reqs: &[Req],
    depth: u32,
    sqe_flags: u8,
) -> Result<Batch, String> {
    let depth = depth.min(ring.sq_entries()).max(1);
    let mut res = vec![i32::MIN; reqs.len()];
    let (mut next, mut inflight, mut done, mut eagain) = (0usize, 0u32, 0usize, 0u32);
    let mut retry: Vec<usize> = vec![];
    let mut cqes: Vec<Cqe> = Vec::new();
    let sqe = |i: usize| {
        let r = reqs[i];
        Sqe {
            opcode: if r.write {
                OP_WRITE_FIXED
            } else {
                OP_READ_FIXED
            },
            flags: sqe_flags,
            fd,
            off: r.ns_off,
            addr: r.buf_off,
            len: r.len,
            buf_index: slot,
            user_data: i as u64,
            ..Default::default()
        }
    };
    while done < reqs.len() {
        let mut queued = 0;
        while inflight < depth && (!retry.is_empty() || next < reqs.len()) {
            let i = retry.pop().unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            ring.push(sqe(i));
            inflight += 1;
            queued += 1;
        }
        ring.enter(queued, 1)
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        cqes.clear();
        ring.reap(&mut cqes);
        for c in &cqes {
            inflight -= 1;
            let i = c.user_data as usize;
            if c.res == -libc::EAGAIN && eagain < 64 * reqs.len() as u32 {
                eagain += 1;
                retry.push(i);
                continue;
            }
            res[i] = c.res;
            done += 1;
        }
    }
    Ok(Batch { res, eagain })
}

/// Every request moved its whole length, else the first failure.
fn all_ok(b: &Batch, reqs: &[Req], what: &str) -> Result<(), String> {
    for (r, q) in b.res.iter().zip(reqs) {
        if *r != q.len as i32 {
            return Err(format!(
                "{what}: {} at ns {:#x} -> buf {:#x} ({} bytes): {}",
                if q.write { "WRITE_FIXED" } else { "READ_FIXED" },
                q.ns_off,
                q.buf_off,
                q.len,
                errno_or_len(*r)
            ));
        }
    }
    Ok(())
}

fn errno_or_len(r: i32) -> String {
    if r < 0 {
        format!("{} ({r})", std::io::Error::from_raw_os_error(-r))
    } else {
        format!("{r} bytes")
    }
}

/// `len` bytes as requests of `chunk` bytes, namespace and buffer advancing together.
fn chunks(write: bool, ns_off: u64, buf_off: u64, len: usize, chunk: usize) -> Vec<Req> {
    (0..len.div_ceil(chunk))
        .map(|i| Req {
            write,
            ns_off: ns_off + (i * chunk) as u64,
            buf_off: buf_off + (i * chunk) as u64,
            len: chunk.min(len - i * chunk) as u32,
        })
        .collect()
}

/// What every case starts from: the series present, the namespace opened O_DIRECT with
/// the pattern staged at A, and the exporter's VRAM exported (`len` bytes) and
/// registered in slot 0 for that namespace.
struct Setup {
    ns: String,
    f: File,
    gpu: Gpu,
    gpu_dev: Found,
    dmabuf: OwnedFd,
    ring: Ring,
}

/// `None`: skipped (the kernel lacks the series; already reported).
fn setup(ctx: &mut Ctx, len: usize, stage: bool) -> Result<Option<Setup>, String> {
    if let Err(why) = probe() {
        ctx.skip(&why)?;
        return Ok(None);
    }
    ctx.diag("kernel has dma-buf io_uring buffers (probe: EXTENDED update -> 1)");
    let client = ctx.env.role(Role::Client)?.clone();
    let gpu_dev = ctx
        .env
        .role(Role::Exporter)
        .or_else(|_| ctx.env.role(Role::Provider))?
        .clone();
    let ns = client
        .ns
        .clone()
        .ok_or_else(|| format!("client {} has no namespace block device", client.info.name))?;
    let gpu = Gpu::open(&gpu_dev)?;
    ctx.diag(&format!(
        "target: {} VRAM {EXPORT_OFFSET:#x}+{len:#x} ({})",
        gpu_dev.info.name,
        if gpu_dev.info.p2pmem {
            "p2pmem published too"
        } else {
            "no struct pages: no p2pmem published"
        }
    ));
    let f = open_direct(&ns)?;
    if stage {
        let ram = Mapping::ram(LEN)?;
        ram.fill(SEED);
        direct_io(&f, &ram, NS_A, MIB, true).map_err(|e| format!("staging RAM -> {ns}: {e}"))?;
    }
    let dmabuf = gpu
        .export_dmabuf(EXPORT_OFFSET, len as u64)
        .map_err(|e| format!("{} EXPORT_DMABUF: {e}", gpu.dev))?;
    let ring = sparse_ring(32)?;
    let n = update(&ring, 0, &dmabuf_desc(dmabuf.as_raw_fd(), f.as_raw_fd()))
        .map_err(|e| format!("registering the dma-buf for {ns}: {e}"))?;
    if n != 1 {
        return Err(format!("registering the dma-buf returned {n}, not 1"));
    }
    Ok(Some(Setup {
        ns,
        f,
        gpu,
        gpu_dev,
        dmabuf,
        ring,
    }))
}

impl Setup {
    fn fd(&self) -> i32 {
        self.f.as_raw_fd()
    }

    /// Drop the registration (slot 0 back to EMPTY).
    fn unregister(&self) -> Result<(), String> {
        let empty = RegbufDesc::default();
        update(&self.ring, 0, &empty)
            .map(|_| ())
            .map_err(|e| format!("unregistering slot 0: {e}"))
    }
}

pub fn read(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, LEN, true)? else {
        return Ok(());
    };
    let want = pattern_digest(SEED, LEN);
    // 64 MiB in 1 MiB requests at QD 8 (the first pass also creates the mapping).
    let reqs = chunks(false, NS_A, 0, LEN, MIB);
    let t = Instant::now();
    let b = run(&s.ring, s.fd(), 0, &reqs, 8, 0)?;
    all_ok(&b, &reqs, "QD 8")?;
    ctx.diag(&format!(
        "READ_FIXED {}@{NS_A:#x} -> {} dma-buf, 64 x 1 MiB, QD 8: {} ({} -EAGAIN reissued)",
        s.ns,
        s.gpu_dev.info.name,
        mibs(LEN, t),
        b.eagain
    ));
    s.gpu
        .expect_digest(EXPORT_OFFSET, LEN, &want, "VRAM after READ_FIXED")?;
    // Again at QD 1 and QD 32 with other sizes, into a shifted buffer offset (512 B).
    for (qd, chunk, shift) in [(1u32, 128 * 1024, 512u64), (32, 256 * 1024, 4096)] {
        let len = 8 * MIB;
        let reqs = chunks(false, NS_A, shift, len, chunk);
        let t = Instant::now();
        let b = run(&s.ring, s.fd(), 0, &reqs, qd, 0)?;
        all_ok(&b, &reqs, &format!("QD {qd}"))?;
        s.gpu.expect_digest(
            EXPORT_OFFSET + shift,
            len,
            &pattern_digest(SEED, len),
            &format!("VRAM after READ_FIXED at buffer offset {shift}"),
        )?;
        ctx.diag(&format!(
            "READ_FIXED 8 MiB in {} KiB requests at QD {qd}, buffer offset {shift}: {}",
            chunk / 1024,
            mibs(len, t)
        ));
    }
    ctx.diag(&format!(
        "device checksum engine of {}: SHA-256 {} matches",
        s.gpu_dev.info.name,
        &hex(&want)[..16]
    ));
    s.unregister()?;
    drop(s.ring);
    want_no_maps(&s.gpu)
}

/// The export's importer mappings are gone (the NVMe's map dropped with the registration).
fn want_no_maps(gpu: &Gpu) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = gpu.dmabuf_stats()?;
        if st.export_maps == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: {} mapping(s) of its export left after unregistering",
                gpu.dev, st.export_maps
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn write(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, LEN, true)? else {
        return Ok(());
    };
    // Fill the dma-buf from the namespace (the read path), then write it to B.
    let fill = chunks(false, NS_A, 0, LEN, MIB);
    all_ok(
        &run(&s.ring, s.fd(), 0, &fill, 8, 0)?,
        &fill,
        "filling the dma-buf",
    )?;
    let reqs = chunks(true, NS_B, 0, LEN, MIB);
    let t = Instant::now();
    let b = run(&s.ring, s.fd(), 0, &reqs, 8, 0)?;
    all_ok(&b, &reqs, "QD 8")?;
    ctx.diag(&format!(
        "WRITE_FIXED {} dma-buf -> {}@{NS_B:#x}, 64 x 1 MiB, QD 8: {}",
        s.gpu_dev.info.name,
        s.ns,
        mibs(LEN, t)
    ));
    let back = Mapping::ram(LEN)?;
    direct_io(&s.f, &back, NS_B, MIB, false).map_err(|e| format!("read-back {}: {e}", s.ns))?;
    back.verify(SEED)
        .map_err(|e| format!("{}@{NS_B:#x} after WRITE_FIXED: {e}", s.ns))?;
    ctx.diag("read back through RAM: the namespace holds the pattern");
    s.unregister()?;
    drop(s.ring);
    want_no_maps(&s.gpu)
}

pub fn invalidate(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, LEN, true)? else {
        return Ok(());
    };
    let want = pattern_digest(SEED, LEN);
    // Warm: map once.
    let one = chunks(false, NS_A, 0, MIB, MIB);
    all_ok(&run(&s.ring, s.fd(), 0, &one, 1, 0)?, &one, "first read")?;
    // 64 MiB of reads in flight (on a thread that borrows the ring) while the exporter
    // invalidates its mappings.
    let reqs = chunks(false, NS_A, 0, LEN, MIB);
    let Setup {
        ns,
        f,
        gpu,
        gpu_dev,
        dmabuf,
        ring,
    } = s;
    let fd = f.as_raw_fd();
    let (batch, inv) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let b = run(&ring, fd, 0, &reqs, 16, 0);
            (b, ring)
        });
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        let inv = gpu
            .invalidate(dmabuf.as_raw_fd(), false)
            .map(|()| t.elapsed().as_secs_f64());
        (h.join(), inv)
    });
    let (b, ring) = batch.map_err(|_| "the I/O thread panicked".to_string())?;
    let s = Setup {
        ns,
        f,
        gpu,
        gpu_dev,
        dmabuf,
        ring,
    };
    let b = b?;
    let inv_secs = inv.map_err(|e| format!("{} DMABUF_INVALIDATE: {e}", s.gpu.dev))?;
    all_ok(&b, &reqs, "reads across the invalidation")?;
    s.gpu.expect_digest(
        EXPORT_OFFSET,
        LEN,
        &want,
        "VRAM after reads across an invalidation",
    )?;
    ctx.diag(&format!(
        "invalidation during 64 x 1 MiB READ_FIXED at QD 16: took {inv_secs:.3} s; every read completed with the right data ({} -EAGAIN reissued)",
        b.eagain
    ));
    // The mapping is rebuilt by the next I/O.
    all_ok(
        &run(&s.ring, s.fd(), 0, &one, 1, 0)?,
        &one,
        "read after the invalidation",
    )?;
    let st = s.gpu.dmabuf_stats()?;
    if st.export_maps != 1 {
        return Err(format!(
            "after the invalidation and one read the export has {} mappings, expected 1 (rebuilt)",
            st.export_maps
        ));
    }
    // Revoke: new I/O fails with the exporter's error.
    s.gpu
        .invalidate(s.dmabuf.as_raw_fd(), true)
        .map_err(|e| format!("{} DMABUF_INVALIDATE|REVOKE: {e}", s.gpu.dev))?;
    let b = run(&s.ring, s.fd(), 0, &one, 1, 0)?;
    if b.res[0] != -libc::ENODEV {
        return Err(format!(
            "a read after the revoke: {}, expected ENODEV (the exporter's map error)",
            errno_or_len(b.res[0])
        ));
    }
    ctx.diag("revoke: the next READ_FIXED failed with ENODEV");
    s.unregister()?;
    drop(s.ring);
    want_no_maps(&s.gpu)?;
    ctx.diag("unregistered: the export's map count is 0");
    Ok(())
}

pub fn refused(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, 4 * MIB, false)? else {
        return Ok(());
    };
    let one = chunks(false, NS_A, 0, MIB, MIB);
    let b = run(&s.ring, s.fd(), 0, &one, 1, 0)?;
    if b.res[0] != -libc::EINVAL {
        return Err(format!(
            "READ_FIXED into {} across root ports: {}, expected EINVAL (P2P distance refused)",
            s.gpu_dev.info.name,
            errno_or_len(b.res[0])
        ));
    }
    ctx.diag("the P2P distance check refused the first READ_FIXED with EINVAL");
    s.unregister()
}

pub fn errors(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, 4 * MIB, false)? else {
        return Ok(());
    };
    let len = 4 * MIB as u64;
    let reg =
        |desc: RegbufDesc| update(&s.ring, 1, &desc).map_err(|e| e.raw_os_error().unwrap_or(0));
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open("/tmp/uring-dmabuf-target")
        .map_err(|e| format!("tmpfs file: {e}"))?;
    let d = dmabuf_desc(s.dmabuf.as_raw_fd(), s.fd());
    let checks: Vec<(&str, Result<i32, i32>, i32)> = vec![
        (
            "not a dma-buf",
            reg(dmabuf_desc(s.fd(), s.fd())),
            libc::EINVAL,
        ),
        (
            "a tmpfs file as target",
            reg(dmabuf_desc(s.dmabuf.as_raw_fd(), tmp.as_raw_fd())),
            libc::EOPNOTSUPP,
        ),
        (
            "size != 0",
            reg(RegbufDesc { size: 4096, ..d }),
            libc::EINVAL,
        ),
        (
            "reserved != 0",
            reg(RegbufDesc {
                resv: [0, 0, 0, 0, 0, 1],
                ..d
            }),
            libc::EINVAL,
        ),
        (
            "a closed fd",
            reg(dmabuf_desc(1 << 20, s.fd())),
            libc::EBADF,
        ),
    ];
    let mut bad = vec![];
    for (what, got, want) in &checks {
        match got {
            Err(e) if e == want => {}
            other => bad.push(format!("{what}: {other:?}, expected errno {want}")),
        }
    }
    // Out-of-range and misaligned I/O on the registered slot 0.
    let other_fd = open_direct(&s.ns)?;
    let io = |r: Req, fd: i32| run(&s.ring, fd, 0, &[r], 1, 0).map(|b| b.res[0]);
    let rd = |buf_off: u64, l: u32| Req {
        write: false,
        ns_off: NS_A,
        buf_off,
        len: l,
    };
    let io_checks: Vec<(&str, i32, i32)> = vec![
        ("past the end", io(rd(len, 4096), s.fd())?, -libc::EFAULT),
        (
            "straddling the end",
            io(rd(len - 4096, 8192), s.fd())?,
            -libc::EFAULT,
        ),
        ("buffer offset 1", io(rd(1, 4096), s.fd())?, -libc::EINVAL),
        (
            "a 1000-byte length",
            io(rd(0, 1000), s.fd())?,
            -libc::EINVAL,
        ),
        (
            "another fd of the namespace",
            io(rd(0, 4096), other_fd.as_raw_fd())?,
            -libc::EBADF,
        ),
    ];
    for (what, got, want) in &io_checks {
        if got != want {
            bad.push(format!(
                "I/O {what}: {}, expected {}",
                errno_or_len(*got),
                errno_or_len(*want)
            ));
        }
    }
    ctx.diag(&format!(
        "{} refused registrations and {} refused I/Os checked",
        checks.len(),
        io_checks.len()
    ));
    let _ = std::fs::remove_file("/tmp/uring-dmabuf-target");
    s.unregister()?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Regression (v3 bug 1): an inline READ/WRITE_FIXED larger than the queue's
/// max_sectors leaks a map reference, and a later revoke of the exporter hangs. Runs
/// 4 and 8 MiB inline requests, then revokes with a watchdog: a revoke that does not
/// return in time is reported with the blocked tasks' stacks (sysrq-w) and fails the
/// case; the stuck thread is left behind and the run goes on.
pub fn large(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, LEN, true)? else {
        return Ok(());
    };
    for chunk in [4 * MIB, 8 * MIB] {
        for round in 0..4 {
            let reqs = chunks(false, NS_A, 0, 32 * MIB, chunk);
            let b = run(&s.ring, s.fd(), 0, &reqs, 4, 0)?;
            all_ok(
                &b,
                &reqs,
                &format!("{} MiB inline reads, round {round}", chunk / MIB),
            )?;
            let w = chunks(true, NS_B, 0, 16 * MIB, chunk);
            all_ok(
                &run(&s.ring, s.fd(), 0, &w, 2, 0)?,
                &w,
                &format!("{} MiB inline writes", chunk / MIB),
            )?;
        }
    }
    s.gpu.expect_digest(
        EXPORT_OFFSET,
        32 * MIB,
        &pattern_digest(SEED, 32 * MIB),
        "VRAM after large reads",
    )?;
    ctx.diag("4 and 8 MiB inline READ_FIXED/WRITE_FIXED moved the right data");
    s.unregister()?;
    let gpu_dev = s.gpu_dev.clone();
    let dev = s.gpu.dev.clone();
    let Setup {
        gpu, dmabuf, ring, ..
    } = s;
    drop(ring);
    // Revoke with a watchdog; the thread owns what it needs and may never return.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = gpu.invalidate(dmabuf.as_raw_fd(), true);
        let st = gpu.dmabuf_stats();
        let _ = tx.send((r, st, t.elapsed().as_secs_f64()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok((Ok(()), Ok(st), secs)) if st.export_maps == 0 => {
            ctx.diag(&format!("revoke after large requests returned in {secs:.2} s; no mapping left"));
            Ok(())
        }
        Ok((r, st, secs)) => Err(format!(
            "revoke of {} after large requests: {r:?} in {secs:.2} s, driver counts {st:?} (a leaked map reference?)",
            gpu_dev.info.name
        )),
        Err(_) => {
            // The blocked tasks' stacks are KERN_INFO: raise the console loglevel (sysrq
            // '8') for the dump, then back to the lab's 5.
            let _ = std::fs::write("/proc/sysrq-trigger", "8");
            let _ = std::fs::write("/proc/sysrq-trigger", "w");
            // The console prints the dump after the write returns: let it drain.
            std::thread::sleep(Duration::from_secs(2));
            let _ = std::fs::write("/proc/sysrq-trigger", "5");
            Err(format!(
                "revoke of {dev} did not return within 30 s after 4/8 MiB inline requests (leaked map reference: the fence is never signalled); blocked tasks dumped on the console (sysrq-w)"
            ))
        }
    }
}

/// Regression (v3 bug 2): O_DIRECT cleared on the target after registration. A
/// READ_FIXED must fail or move the right bytes; a WRITE_FIXED must fail or write the
/// dma-buf's bytes — the case checks VRAM and the disk block afterwards.
pub fn buffered(ctx: &mut Ctx) -> Result<(), String> {
    let Some(s) = setup(ctx, 4 * MIB, true)? else {
        return Ok(());
    };
    // Known contents: the dma-buf holds pattern A (via a direct read); block C is zeroed.
    let fill = chunks(false, NS_A, 0, MIB, MIB);
    all_ok(
        &run(&s.ring, s.fd(), 0, &fill, 1, 0)?,
        &fill,
        "filling the dma-buf",
    )?;
    let zero = Mapping::ram(MIB)?;
    direct_io(&s.f, &zero, NS_C, MIB, true).map_err(|e| format!("zeroing C: {e}"))?;
    // Clear O_DIRECT on the registered target.
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take and return plain flags.
    let fl = unsafe { libc::fcntl(s.fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(s.fd(), libc::F_SETFL, fl & !libc::O_DIRECT) } < 0 {
        return Err(format!("F_SETFL: {}", std::io::Error::last_os_error()));
    }
    let mut bad = vec![];
    // WRITE_FIXED 1 MiB dma-buf -> C.
    let w = Req {
        write: true,
        ns_off: NS_C,
        buf_off: 0,
        len: MIB as u32,
    };
    let wr = run(&s.ring, s.fd(), 0, &[w], 1, 0)?.res[0];
    let back = Mapping::ram(MIB)?;
    let direct = open_direct(&s.ns)?;
    // SAFETY: as above; flush whatever the buffered fd left in the page cache first.
    unsafe { libc::fsync(s.fd()) };
    direct_io(&direct, &back, NS_C, MIB, false).map_err(|e| format!("reading C back: {e}"))?;
    let disk_ok = back.verify(SEED).is_ok();
    ctx.diag(&format!(
        "WRITE_FIXED on the buffered fd: {}; block C {}",
        errno_or_len(wr),
        if disk_ok {
            "holds the dma-buf's bytes"
        } else {
            "does NOT hold the dma-buf's bytes"
        }
    ));
    if wr == MIB as i32 && !disk_ok {
        bad.push(format!("WRITE_FIXED reported {wr} bytes but the disk block holds other data (unrelated memory written?)"));
    }
    // READ_FIXED 1 MiB of zeros (C, if the write failed, else B's region) -> dma-buf.
    let before = s.gpu.checksum(EXPORT_OFFSET, MIB as u64)?;
    let src = NS_B + 64 * MIB as u64;
    direct_io(&direct, &zero, src, MIB, true)
        .map_err(|e| format!("zeroing the read source: {e}"))?;
    let r = Req {
        write: false,
        ns_off: src,
        buf_off: 0,
        len: MIB as u32,
    };
    let rr = run(&s.ring, s.fd(), 0, &[r], 1, 0)?.res[0];
    let after = s.gpu.checksum(EXPORT_OFFSET, MIB as u64)?;
    let zeros = pattern_zero_digest(MIB);
    ctx.diag(&format!(
        "READ_FIXED on the buffered fd: {}; VRAM {}",
        errno_or_len(rr),
        if after == zeros {
            "now holds the zeros read"
        } else if after == before {
            "unchanged"
        } else {
            "changed to something else"
        }
    ));
    if rr == MIB as i32 && after != zeros {
        bad.push(format!(
            "READ_FIXED reported {rr} bytes but VRAM does not hold them"
        ));
    }
    s.unregister()?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

fn pattern_zero_digest(len: usize) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let z = vec![0u8; MIB];
    for _ in 0..len / MIB {
        h.update(&z);
    }
    h.finalize().into()
}

/// `p2plab bench`'s `uring_dmabuf_read` (`polled`: `uring_dmabuf_read_polled`, the ring
/// set up with `IORING_SETUP_IOPOLL`, for a namespace with poll queues): `samples`
/// passes of `len` bytes of 1 MiB READ_FIXED at QD 8 from `ns` (at `ns_off`, already
/// written) into a dma-buf of `gpu`'s VRAM at `vram_off`, each in MiB/s; the first map
/// happens in a warm-up pass that is not counted. An inner `Err`: the kernel lacks the
/// series (the probe's answer, for the caller's note).
pub(super) fn bench_read(
    ns: &str,
    ns_off: u64,
    gpu: &Gpu,
    vram_off: u64,
    len: usize,
    samples: usize,
    polled: bool,
) -> Result<Result<Vec<f64>, String>, String> {
    if let Err(why) = probe() {
        return Ok(Err(why));
    }
    let f = open_direct(ns)?;
    let dmabuf = gpu
        .export_dmabuf(vram_off, len as u64)
        .map_err(|e| format!("{} EXPORT_DMABUF: {e}", gpu.dev))?;
    let ring = if polled {
        sparse_ring_with(Ring::new_polled(32)?)?
    } else {
        sparse_ring(32)?
    };
    update(&ring, 0, &dmabuf_desc(dmabuf.as_raw_fd(), f.as_raw_fd()))
        .map_err(|e| format!("registering the dma-buf for {ns}: {e}"))?;
    let reqs = chunks(false, ns_off, 0, len, MIB);
    all_ok(
        &run(&ring, f.as_raw_fd(), 0, &reqs, 8, 0)?,
        &reqs,
        "warm-up",
    )?;
    let mut out = vec![];
    for _ in 0..samples {
        out.push(super::bench::timed(len, || {
            all_ok(&run(&ring, f.as_raw_fd(), 0, &reqs, 8, 0)?, &reqs, "bench")
        })?);
    }
    Ok(Ok(out))
}
