//! `io-uring-p2p`: io_uring READ and WRITE (non-fixed buffers, O_DIRECT) between the
//! client namespace and the GPU provider's p2pmem, data checked by the device's
//! checksum engine. A minimal ring over the raw syscalls (io_uring_setup, mmap,
//! io_uring_enter); no liburing.

use super::gpu::{hex, pattern_digest, Gpu};
use super::Ctx;
use crate::devices::Role;
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

const LEN: usize = 64 * MIB;
const CHUNK: usize = MIB;
pub(super) const DEPTH: u32 = 8;
/// Namespace offsets: A is staged from RAM and read P2P; B is written P2P.
const NS_A: u64 = 256 * MIB as u64;
const NS_B: u64 = 384 * MIB as u64;
const SEED: u64 = 0x7572_696e;

const OP_READ: u8 = 22;
const OP_WRITE: u8 = 23;
const ENTER_GETEVENTS: u32 = 1;
/// `IORING_SETUP_IOPOLL`: completions are polled from the device's queue (O_DIRECT files
/// on a block queue with poll queues), no interrupts.
const SETUP_IOPOLL: u32 = 1;
const OFF_SQ_RING: i64 = 0;
const OFF_CQ_RING: i64 = 0x800_0000;
const OFF_SQES: i64 = 0x1000_0000;

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}
const _: () = assert!(size_of::<Params>() == 120);

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(super) struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub ioprio: u16,
    pub fd: i32,
    pub off: u64,
    pub addr: u64,
    pub len: u32,
    pub rw_flags: u32,
    pub user_data: u64,
    pub buf_index: u16,
    pub personality: u16,
    pub splice_fd_in: i32,
    pub addr3: u64,
    pub pad: u64,
}
const _: () = assert!(size_of::<Sqe>() == 64);

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

/// A shared mapping of the ring fd, unmapped on drop.
struct Map {
    p: *mut u8,
    len: usize,
}

impl Map {
    fn new(fd: i32, len: usize, off: i64) -> Result<Map, String> {
        // SAFETY: a new shared mapping of an io_uring fd at one of its defined offsets.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap io_uring offset {off:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Map { p: p.cast(), len })
    }
    fn at<T>(&self, off: u32) -> *mut T {
        debug_assert!(off as usize + size_of::<T>() <= self.len);
        // SAFETY: offsets come from the kernel's io_uring_params and lie inside the map.
        unsafe { self.p.add(off as usize).cast() }
    }
}

// SAFETY: the mapping is shared memory of the process, valid until the owner unmaps it
// on drop; moving the owner to another thread (a case's I/O thread) moves that duty.
unsafe impl Send for Map {}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: p/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.p.cast(), self.len) };
    }
}

pub(super) struct Ring {
    // Field order: the maps go before the fd closes.
    sq: Map,
    cq: Map,
    sqes: Map,
    fd: OwnedFd,
    p: Params,
}

impl Ring {
    pub(super) fn new(entries: u32) -> Result<Ring, String> {
        Self::with_flags(entries, 0)
    }

    /// A ring whose completions are polled (`IORING_SETUP_IOPOLL`): `enter` with a wait
    /// polls the device's completion queue instead of sleeping for an interrupt.
    pub(super) fn new_polled(entries: u32) -> Result<Ring, String> {
        Self::with_flags(entries, SETUP_IOPOLL)
    }

    fn with_flags(entries: u32, flags: u32) -> Result<Ring, String> {
        let mut p = Params {
            flags,
            ..Default::default()
        };
        // SAFETY: io_uring_setup reads and fills `p`, a live io_uring_params.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_io_uring_setup,
                entries,
                std::ptr::from_mut(&mut p),
            )
        };
        if fd < 0 {
            return Err(format!(
                "io_uring_setup({entries}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new fd returned by the kernel, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let raw = fd.as_raw_fd();
        let sq = Map::new(
            raw,
            p.sq_off.array as usize + p.sq_entries as usize * 4,
            OFF_SQ_RING,
        )?;
        let cq = Map::new(
            raw,
            p.cq_off.cqes as usize + p.cq_entries as usize * size_of::<Cqe>(),
            OFF_CQ_RING,
        )?;
        let sqes = Map::new(raw, p.sq_entries as usize * size_of::<Sqe>(), OFF_SQES)?;
        Ok(Ring {
            sq,
            cq,
            sqes,
            fd,
            p,
        })
    }

    fn atomic(&self, m: &Map, off: u32) -> &AtomicU32 {
        // SAFETY: the kernel's ring head/tail words are 4-byte aligned u32s shared with
        // the kernel, accessed only atomically here; they live as long as the map.
        unsafe { &*m.at::<AtomicU32>(off) }
    }

    /// Queue one SQE (the caller keeps at most sq_entries in flight).
    pub(super) fn push(&self, sqe: Sqe) {
        let tail = self
            .atomic(&self.sq, self.p.sq_off.tail)
            .load(Ordering::Relaxed);
        // SAFETY: ring_mask is a kernel-written u32 inside the SQ ring map.
        let mask = unsafe { *self.sq.at::<u32>(self.p.sq_off.ring_mask) };
        let idx = tail & mask;
        // SAFETY: idx <= mask < sq_entries: inside the SQE array and the index array.
        unsafe {
            self.sqes.at::<Sqe>(0).add(idx as usize).write(sqe);
            self.sq
                .at::<u32>(self.p.sq_off.array)
                .add(idx as usize)
                .write(idx);
        }
        self.atomic(&self.sq, self.p.sq_off.tail)
            .store(tail.wrapping_add(1), Ordering::Release);
    }

    pub(super) fn enter(&self, submit: u32, wait: u32) -> Result<(), std::io::Error> {
        loop {
            // SAFETY: io_uring_enter on our ring fd without a signal mask.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd.as_raw_fd(),
                    submit,
                    wait,
                    ENTER_GETEVENTS,
                    std::ptr::null::<u8>(),
                    0usize,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Pop every available CQE.
    pub(super) fn reap(&self, out: &mut Vec<Cqe>) {
        let head_a = self.atomic(&self.cq, self.p.cq_off.head);
        let tail = self
            .atomic(&self.cq, self.p.cq_off.tail)
            .load(Ordering::Acquire);
        // SAFETY: ring_mask is a kernel-written u32 inside the CQ ring map.
        let mask = unsafe { *self.cq.at::<u32>(self.p.cq_off.ring_mask) };
        let mut head = head_a.load(Ordering::Relaxed);
        while head != tail {
            // SAFETY: (head & mask) < cq_entries: inside the CQE array.
            out.push(unsafe {
                self.cq
                    .at::<Cqe>(self.p.cq_off.cqes)
                    .add((head & mask) as usize)
                    .read()
            });
            head = head.wrapping_add(1);
        }
        head_a.store(head, Ordering::Release);
    }

    /// `io_uring_register(fd, opcode, arg, nr_args)`: its non-negative result.
    pub(super) fn register<T>(
        &self,
        opcode: u32,
        arg: &mut T,
        nr_args: u32,
    ) -> Result<i32, std::io::Error> {
        // SAFETY: `arg` is the exclusively borrowed structure this opcode reads (and for
        // some, writes); nr_args is what the opcode expects for it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.fd.as_raw_fd(),
                opcode,
                std::ptr::from_mut(arg),
                nr_args,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as i32)
        }
    }

    pub(super) fn sq_entries(&self) -> u32 {
        self.p.sq_entries
    }

    /// Move `m` to/from `f` at `off` in CHUNK-sized READ/WRITE SQEs, DEPTH in flight.
    pub(super) fn transfer(
        &self,
        f: &File,
        m: &Mapping,
        off: u64,
        write: bool,
    ) -> Result<(), String> {
        self.transfer_at(f, m.ptr() as usize, m.len(), off, write)
    }

    /// [`Ring::transfer`] for `len` bytes at address `addr` of a live mapping.
    pub(super) fn transfer_at(
        &self,
        f: &File,
        addr: usize,
        len: usize,
        off: u64,
        write: bool,
    ) -> Result<(), String> {
        let chunks = len.div_ceil(CHUNK);
        let (mut next, mut inflight, mut done) = (0usize, 0u32, 0usize);
        let mut cqes = Vec::new();
        while done < chunks {
            let mut queued = 0;
            while inflight < DEPTH.min(self.p.sq_entries) && next < chunks {
                let pos = next * CHUNK;
                let n = CHUNK.min(len - pos);
                self.push(Sqe {
                    opcode: if write { OP_WRITE } else { OP_READ },
                    fd: f.as_raw_fd(),
                    off: off + pos as u64,
                    addr: (addr + pos) as u64,
                    len: n as u32,
                    user_data: next as u64,
                    ..Default::default()
                });
                next += 1;
                inflight += 1;
                queued += 1;
            }
            self.enter(queued, 1)
                .map_err(|e| format!("io_uring_enter: {e}"))?;
            cqes.clear();
            self.reap(&mut cqes);
            for c in &cqes {
                let want = CHUNK.min(len - c.user_data as usize * CHUNK);
                if c.res < 0 {
                    return Err(format!(
                        "io_uring {} of chunk {} failed: {}",
                        if write { "WRITE" } else { "READ" },
                        c.user_data,
                        std::io::Error::from_raw_os_error(-c.res)
                    ));
                }
                if c.res as usize != want {
                    return Err(format!(
                        "io_uring chunk {}: short transfer {} of {want}",
                        c.user_data, c.res
                    ));
                }
                inflight -= 1;
                done += 1;
            }
        }
        Ok(())
    }
}

fn mibs(len: usize, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!(
        "{:.2} s, {:.1} MiB/s",
        s,
        len as f64 / MIB as f64 / s.max(1e-9)
    )
}

/// Stage the pattern at A from RAM; io_uring READ A -> p2pmem X (checksum); io_uring
/// WRITE X -> B; io_uring READ B -> p2pmem Y (checksum).
pub fn io_uring_p2p(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let ns = client
        .ns
        .clone()
        .ok_or_else(|| format!("client {} has no namespace block device", client.info.name))?;
    let gpu = Gpu::open(provider)?;
    let bdf = provider.bdf.as_deref().unwrap_or_default();
    let x = Mapping::p2pmem(bdf, LEN)?;
    let y = Mapping::p2pmem(bdf, LEN)?;
    let (xo, yo) = (gpu.vram_offset(&x)?, gpu.vram_offset(&y)?);
    let want = pattern_digest(SEED, LEN);
    for (o, what) in [(xo, "X"), (yo, "Y")] {
        if gpu.checksum(o, LEN as u64)? == want {
            return Err(format!(
                "p2pmem {what} (VRAM {o:#x}) already holds the pattern"
            ));
        }
    }
    let f = open_direct(&ns)?;
    let ram = Mapping::ram(LEN)?;
    ram.fill(SEED);
    direct_io(&f, &ram, NS_A, CHUNK, true)
        .map_err(|e| format!("staging pwrite RAM -> {ns}: {e}"))?;
    drop(ram);

    let ring = Ring::new(DEPTH * 2)?;
    ctx.diag(&format!(
        "io_uring: {} SQ / {} CQ entries, features {:#x}; depth {DEPTH} x {} KiB",
        ring.p.sq_entries,
        ring.p.cq_entries,
        ring.p.features,
        CHUNK / 1024
    ));

    let t = Instant::now();
    ring.transfer(&f, &x, NS_A, false)
        .map_err(|e| format!("{ns} -> p2pmem X: {e}"))?;
    ctx.diag(&format!(
        "io_uring READ {ns}@{NS_A:#x} -> {} p2pmem X (VRAM {xo:#x}): {}",
        provider.info.name,
        mibs(LEN, t)
    ));
    gpu.expect_digest(xo, LEN, &want, "p2pmem X after io_uring READ")?;

    let t = Instant::now();
    ring.transfer(&f, &x, NS_B, true)
        .map_err(|e| format!("p2pmem X -> {ns}: {e}"))?;
    ctx.diag(&format!(
        "io_uring WRITE p2pmem X -> {ns}@{NS_B:#x}: {}",
        mibs(LEN, t)
    ));

    let t = Instant::now();
    ring.transfer(&f, &y, NS_B, false)
        .map_err(|e| format!("{ns} -> p2pmem Y: {e}"))?;
    ctx.diag(&format!(
        "io_uring READ {ns}@{NS_B:#x} -> p2pmem Y (VRAM {yo:#x}): {}",
        mibs(LEN, t)
    ));
    gpu.expect_digest(yo, LEN, &want, "p2pmem Y after io_uring WRITE + READ")?;
    ctx.diag(&format!(
        "device SHA-256 {} matches in X and Y",
        &hex(&want)[..16]
    ));
    Ok(())
}
