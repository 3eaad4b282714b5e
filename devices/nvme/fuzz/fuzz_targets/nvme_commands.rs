//! Fuzz the NVMe controller model as a hostile driver would drive it: BAR0 register and
//! doorbell writes, submission queue entries with fuzzed opcodes, PRP entries and lists,
//! SGL descriptors and segments, CMB programming, resets and Bus Master flips — over an
//! in-memory DMA space (flat guest RAM, reused from input to input, with the CMB window
//! inside it, as the unit tests map it) and two namespaces on memfds.
//!
//! Checks, besides "no panic":
//! - no DMA while Bus Master is off (the `PciFunction` contract), checked by the DMA space;
//! - the worker goes idle: `process` returns false within a bound once the driver stops,
//!   unless the controller's own DMA wrote a shadow doorbell it then read (a layout that
//!   makes the device feed itself, see `Guest::self_fed`);
//! - namespace files keep their size (no write past the namespace);
//! - unclaimed BAR reads return all-ones (`UNCLAIMED_READ`).
//!
//! Input: an `arbitrary`-decoded [`Input`]: how far the controller is brought up first
//! (cold, enabled with admin queues, or with I/O queue pairs, optionally an SQ in the CMB),
//! then a list of [`Op`]s. Addresses are mostly chosen inside guest memory or the CMB
//! ([`Addr`]) so commands get past the first bounds check.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nvme_spec::regs::{self as r, Aqa, Cc};
use nvme_spec::sgl::SglDescriptor;
use nvme_spec::{AdminOpcode, Cdw0, Command, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11};
use p2plab_memory::{BusAddr, DmaError, DmaSpace, RecordingInterrupts};
use p2plab_nvme::{NamespaceConfig, NvmeConfig, NvmeController, CMB_BAR, REG_BAR};
use p2plab_pci::{PciFunction, UNCLAIMED_READ};
use zerocopy::IntoBytes;

const PAGE: u64 = 4096;
/// Guest memory: 4 MiB at 1 MiB; the CMB BAR is programmed at its upper half.
const MEM_BASE: u64 = 0x10_0000;
const MEM_SIZE: u64 = 4 << 20;
const CMB_ADDR: u64 = MEM_BASE + (2 << 20);
const CMB_SIZE: u64 = 2 << 20;
const ASQ: u64 = MEM_BASE;
const ACQ: u64 = MEM_BASE + 0x1000;
/// I/O queue pair q (1-based): SQ at IO_BASE + (q-1)*0x2000, CQ one page after.
const IO_BASE: u64 = MEM_BASE + 0x4000;
const IO_QUEUES: u16 = 2;
const ADMIN_ENTRIES: u32 = 16;
const IO_ENTRIES: u32 = 16;
const NS_SIZE: [u64; 2] = [256 << 10, 256 << 10];
const LBA_SIZE: [u32; 2] = [512, 4096];
/// How many `process` calls a burst of work may take before the worker must be idle:
/// each call takes up to ADMIN_BATCH + IO_BATCH per queue commands, and the queues hold
/// at most 16 entries each; a generous bound.
const IDLE_BOUND: usize = 256;

/// The DMA space the controller sees: guest memory, flagging any access while Bus Master
/// is off — except to the controller's own CMB BAR (where the host put it), which the
/// fabric routes to the device's own memory without bus mastering (trapped CMB accesses,
/// queues in the CMB).
struct Guest {
    mem: Mutex<FlatMem>,
    bus_master: AtomicBool,
    /// CMB BAR address (`NO_BAR` while unassigned).
    cmb_bar: AtomicU64,
    /// The controller read a shadow doorbell (a 4-byte read) in a page its own DMA had
    /// written — a driver that put a shadow doorbell buffer beside a CQ, the EventIdx
    /// buffer or a data buffer makes the controller ring its own doorbells, and such a
    /// device may stay busy for as long as the guest's layout feeds it (as real hardware
    /// would); the idle check does not apply then.
    self_fed: AtomicBool,
}

const NO_BAR: u64 = u64::MAX;

/// Guest memory `[MEM_BASE, MEM_BASE + MEM_SIZE)`: one flat buffer reused from input to
/// input (zeroing or faulting in megabytes per input would dominate the run time), with
/// the pages written since it was last clean zeroed when it is taken again.
struct FlatMem {
    bytes: Vec<u8>,
    /// Pages written (by anyone) since the buffer was last clean.
    dirty: Vec<bool>,
    /// Pages written by the controller's DMA in this input (see `Guest::self_fed`).
    device_written: Vec<bool>,
}

/// The buffer between inputs.
static POOL: Mutex<Option<FlatMem>> = Mutex::new(None);

impl FlatMem {
    /// A zero-filled buffer: the pooled one, cleaned, or a new one.
    fn take() -> Self {
        let pages = (MEM_SIZE / PAGE) as usize;
        let Some(mut m) = POOL.lock().unwrap().take() else {
            return Self {
                bytes: vec![0; MEM_SIZE as usize],
                dirty: vec![false; pages],
                device_written: vec![false; pages],
            };
        };
        for (p, d) in m.dirty.iter_mut().enumerate() {
            if std::mem::take(d) {
                let at = p * PAGE as usize;
                m.bytes[at..at + PAGE as usize].fill(0);
            }
        }
        m.device_written.fill(false);
        m
    }

    /// The byte range of `[addr, addr + len)`, if inside the memory.
    fn range(addr: BusAddr, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let bad = DmaError::Unmapped {
            addr: addr.0,
            len: len as u64,
        };
        let end = addr.0.checked_add(len as u64).ok_or(bad.clone())?;
        if addr.0 < MEM_BASE || end > MEM_BASE + MEM_SIZE {
            return Err(bad);
        }
        Ok((addr.0 - MEM_BASE) as usize..(end - MEM_BASE) as usize)
    }

    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = Self::range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    /// Writes `data`; `device`: by the controller's DMA.
    fn write(&mut self, addr: BusAddr, data: &[u8], device: bool) -> Result<(), DmaError> {
        let r = Self::range(addr, data.len())?;
        if r.is_empty() {
            return Ok(());
        }
        let pages = r.start / PAGE as usize..=(r.end - 1) / PAGE as usize;
        self.dirty[pages.clone()].fill(true);
        if device {
            self.device_written[pages].fill(true);
        }
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn device_wrote(&self, addr: BusAddr) -> bool {
        Self::range(addr, 1).is_ok_and(|r| self.device_written[r.start / PAGE as usize])
    }
}

impl Guest {
    fn own(&self, addr: BusAddr, len: usize) -> bool {
        let bar = self.cmb_bar.load(Ordering::Relaxed);
        bar != NO_BAR
            && addr.0 >= bar
            && addr
                .0
                .checked_add(len as u64)
                .is_some_and(|end| end <= bar.saturating_add(CMB_SIZE))
    }

    #[track_caller]
    fn check_bme(&self, what: &str, addr: BusAddr, len: usize) {
        assert!(
            self.bus_master.load(Ordering::Relaxed) || self.own(addr, len),
            "DMA {what} of {len} bytes at {:#x} while Bus Master is off",
            addr.0
        );
    }
}

impl DmaSpace for Guest {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check_bme("read", addr, buf.len());
        let mem = self.mem.lock().unwrap();
        if buf.len() == 4 && mem.device_wrote(addr) {
            self.self_fed.store(true, Ordering::Relaxed);
        }
        mem.read(addr, buf)
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        self.check_bme("write", addr, data.len());
        self.mem.lock().unwrap().write(addr, data, true)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let mem = std::mem::replace(
            &mut *self.mem.lock().unwrap(),
            FlatMem {
                bytes: Vec::new(),
                dirty: Vec::new(),
                device_written: Vec::new(),
            },
        );
        *POOL.lock().unwrap() = Some(mem);
    }
}

/// An address the fuzzer names: mostly useful ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// A page of guest memory (page aligned).
    Page(u16),
    /// Any dword in guest memory.
    Mem(u32),
    /// Inside the CMB window.
    Cmb(u32),
    /// Anything at all (unmapped, misaligned, wrapping).
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Page(p) => MEM_BASE + (u64::from(p) % (MEM_SIZE / PAGE)) * PAGE,
            Addr::Mem(o) => MEM_BASE + (u64::from(o) % MEM_SIZE),
            Addr::Cmb(o) => CMB_ADDR + (u64::from(o) % CMB_SIZE),
            Addr::Raw(a) => a,
        }
    }
}

/// An SGL descriptor with a useful address.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Sgl {
    /// Descriptor type (high nibble) and sub type (low nibble).
    id: u8,
    addr: Addr,
    len: u32,
}

impl Sgl {
    fn descriptor(self) -> SglDescriptor {
        let mut d = SglDescriptor::from_dptr([self.addr.get(), 0]);
        d.len = self.len;
        d.id = self.id;
        d
    }
}

/// Data pointer of a command.
#[derive(Arbitrary, Debug, Clone)]
enum Dptr {
    Prp(Addr, Addr),
    Sgl(Sgl),
    Raw(u64, u64),
}

/// The namespace a command names.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Nsid {
    One,
    Two,
    Broadcast,
    Raw(u32),
}

/// A submission queue entry, built so that the interesting fields are reachable.
#[derive(Arbitrary, Debug, Clone)]
struct Sqe {
    opc: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6) of CDW0 byte 1.
    flags: u8,
    cid: u16,
    nsid: Nsid,
    mptr: u64,
    dptr: Dptr,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
}

impl Sqe {
    fn command(&self) -> Command {
        let mut c = Command::default();
        let psdt = match self.dptr {
            // SGL data pointers need PSDT 01b or 10b; PRPs 00b; Raw keeps the fuzzer's.
            Dptr::Prp(..) => 0,
            Dptr::Sgl(_) => 1 + (self.flags >> 7),
            Dptr::Raw(..) => self.flags >> 6,
        };
        c.cdw0 = Cdw0::new()
            .with_opc(self.opc)
            .with_fuse(self.flags & 3)
            .with_psdt(psdt)
            .with_cid(self.cid);
        c.nsid = match self.nsid {
            Nsid::One => 1,
            Nsid::Two => 2,
            Nsid::Broadcast => 0xffff_ffff,
            Nsid::Raw(n) => n,
        };
        c.mptr = self.mptr;
        c.dptr = match &self.dptr {
            Dptr::Prp(a, b) => [a.get(), b.get()],
            Dptr::Sgl(s) => s.descriptor().to_dptr(),
            Dptr::Raw(a, b) => [*a, *b],
        };
        c.cdw10 = self.cdw10;
        c.cdw11 = self.cdw11;
        c.cdw12 = self.cdw12;
        c.cdw13 = self.cdw13;
        c.cdw14 = self.cdw14;
        c.cdw15 = self.cdw15;
        c
    }
}

/// A BAR0 register the fuzzer writes: mostly the defined ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reg {
    Intms,
    Intmc,
    Cc,
    Nssr,
    Aqa,
    Asq,
    Acq,
    Cmbmsc,
    CmbmscHi,
    SqTail(u8),
    CqHead(u8),
    Raw(u16),
}

impl Reg {
    fn offset(self) -> u64 {
        match self {
            Reg::Intms => r::INTMS,
            Reg::Intmc => r::INTMC,
            Reg::Cc => r::CC,
            Reg::Nssr => r::NSSR,
            Reg::Aqa => r::AQA,
            Reg::Asq => r::ASQ,
            Reg::Acq => r::ACQ,
            Reg::Cmbmsc => r::CMBMSC,
            Reg::CmbmscHi => r::CMBMSC + 4,
            // Queue ids past the ones that exist (up to 0xff) on purpose.
            Reg::SqTail(q) => r::sq_tail_doorbell(u16::from(q), 0),
            Reg::CqHead(q) => r::cq_head_doorbell(u16::from(q), 0),
            Reg::Raw(o) => u64::from(o),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// A 32-bit register write.
    Write32(Reg, u32),
    /// A 64-bit register write (ASQ, ACQ, CMBMSC, or anything).
    Write64(Reg, u64),
    /// A write of any size anywhere in a BAR (0..=5).
    WriteBar {
        bar: u8,
        offset: u64,
        data: Vec<u8>,
    },
    /// A read of any size anywhere in a BAR.
    ReadBar {
        bar: u8,
        offset: u64,
        len: u8,
    },
    /// Guest memory contents: PRP lists, SGL segments, data, shadow doorbells.
    Poke {
        at: Addr,
        data: Vec<u8>,
    },
    /// A PRP list at a page: its entries.
    PrpList {
        page: u16,
        entries: Vec<Addr>,
    },
    /// An SGL segment at an address: its descriptors.
    SglSegment {
        at: Addr,
        descriptors: Vec<Sgl>,
    },
    /// Put a command at the admin SQ's tail and ring its doorbell.
    Admin(Sqe),
    /// Put a command at I/O SQ `q`'s tail and ring (or, shadowed, not ring) its doorbell.
    Io {
        q: u8,
        sqe: Sqe,
        ring: bool,
    },
    /// Consume completions: write a CQ head doorbell one past the entries the driver saw.
    Reap {
        q: u8,
    },
    /// Run the worker up to n times.
    Process(u8),
    /// The host: Bus Master on/off, a function reset, the CMB BAR moved.
    BusMaster(bool),
    Reset,
    CmbMoved(CmbPlace),
    ArmNotifications,
}

/// Where the host says the CMB BAR is.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum CmbPlace {
    InMemory,
    Unassigned,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Setup {
    Cold,
    Enabled,
    IoQueues { sq_in_cmb: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is checked before use.
    let fd = unsafe { libc::memfd_create(c"nvme-fuzz-ns".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: fd is a fresh descriptor this function owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).expect("sizing the namespace memfd");
    f
}

struct Harness {
    ctrl: NvmeController,
    guest: Arc<Guest>,
    files: Vec<File>,
    /// SQ tails the driver wrote (0 = admin).
    tails: [u32; 1 + IO_QUEUES as usize],
    /// CQ heads the driver wrote.
    heads: [u32; 1 + IO_QUEUES as usize],
    /// SQ base addresses the driver set up.
    sqs: [u64; 1 + IO_QUEUES as usize],
    /// Size of each BAR (0: unimplemented).
    bar_sizes: [u64; 6],
}

impl Harness {
    fn new() -> Self {
        let files: Vec<File> = NS_SIZE.iter().map(|&s| memfd(s)).collect();
        let namespaces = files
            .iter()
            .zip(NS_SIZE.iter().zip(LBA_SIZE))
            .map(|(f, (&size, lba_size))| NamespaceConfig {
                file: f.try_clone().expect("dup"),
                size,
                lba_size,
            })
            .collect();
        let mut cfg = NvmeConfig::new("P2PLAB-FUZZ-0001", namespaces);
        cfg.cmb_size = CMB_SIZE;
        cfg.max_io_queues = IO_QUEUES;
        cfg.mqes = 63;
        let guest = Arc::new(Guest {
            mem: Mutex::new(FlatMem::take()),
            bus_master: AtomicBool::new(false),
            cmb_bar: AtomicU64::new(NO_BAR),
            self_fed: AtomicBool::new(false),
        });
        let irq = Arc::new(RecordingInterrupts::default());
        let ctrl = NvmeController::new(cfg, guest.clone(), irq).expect("valid config");
        let mut bar_sizes = [0; 6];
        for b in ctrl.pci_layout().bars {
            bar_sizes[b.index] = b.size;
        }
        let h = Self {
            bar_sizes,
            ctrl,
            guest,
            files,
            tails: [0; 1 + IO_QUEUES as usize],
            heads: [0; 1 + IO_QUEUES as usize],
            sqs: [ASQ, IO_BASE, IO_BASE + 0x2000],
        };
        h.bus_master(true);
        h
    }

    fn bus_master(&self, on: bool) {
        // The order the host guarantees: the flag the DMA check reads goes off only after
        // the function was told (it may still finish nothing), on before it is told.
        if on {
            self.guest.bus_master.store(true, Ordering::Relaxed);
            self.ctrl.set_bus_master(true);
        } else {
            self.ctrl.set_bus_master(false);
            self.guest.bus_master.store(false, Ordering::Relaxed);
        }
    }

    /// The host moved the CMB BAR (BAR addresses are size aligned).
    fn cmb_moved(&self, addr: Option<u64>) {
        self.guest
            .cmb_bar
            .store(addr.unwrap_or(NO_BAR), Ordering::Relaxed);
        self.ctrl.bar_moved(CMB_BAR, addr);
    }

    fn w32(&self, off: u64, v: u32) {
        self.ctrl.bar_write(REG_BAR, off, &v.to_le_bytes());
    }

    fn w64(&self, off: u64, v: u64) {
        self.ctrl.bar_write(REG_BAR, off, &v.to_le_bytes());
    }

    fn poke(&self, addr: u64, data: &[u8]) {
        // Guest CPU stores: not DMA, so no Bus Master check; outside memory is dropped.
        let _ = self
            .guest
            .mem
            .lock()
            .unwrap()
            .write(BusAddr(addr), data, false);
    }

    #[track_caller]
    fn run(&self, max: usize) {
        for _ in 0..max {
            if !self.ctrl.process() && !self.ctrl.needs_processing() {
                return;
            }
        }
    }

    /// The worker must go idle once the driver stops (unless it rings its own
    /// doorbells, see [`Guest::self_fed`]).
    #[track_caller]
    fn run_to_idle(&self) {
        for _ in 0..IDLE_BOUND {
            if !self.ctrl.process() && !self.ctrl.needs_processing() {
                return;
            }
        }
        assert!(
            self.guest.self_fed.load(Ordering::Relaxed),
            "process() still busy after {IDLE_BOUND} calls with no new submissions"
        );
    }

    fn submit(&mut self, q: usize, cmd: &Command, ring: bool) {
        let entries = if q == 0 { ADMIN_ENTRIES } else { IO_ENTRIES };
        self.poke(self.sqs[q] + u64::from(self.tails[q]) * 64, cmd.as_bytes());
        self.tails[q] = (self.tails[q] + 1) % entries;
        if ring {
            self.w32(r::sq_tail_doorbell(q as u16, 0), self.tails[q]);
        }
    }

    fn enable(&mut self) {
        self.w32(
            r::AQA,
            Aqa::new()
                .with_asqs(ADMIN_ENTRIES as u16 - 1)
                .with_acqs(ADMIN_ENTRIES as u16 - 1)
                .into_bits(),
        );
        self.w64(r::ASQ, ASQ);
        self.w64(r::ACQ, ACQ);
        self.w32(
            r::CC,
            Cc::new()
                .with_en(true)
                .with_iosqes(6)
                .with_iocqes(4)
                .into_bits(),
        );
        self.run_to_idle();
    }

    fn admin_setup(&mut self, opc: AdminOpcode, base: u64, cdw10: u32, cdw11: u32) {
        let c = Command {
            cdw0: Cdw0::new()
                .with_opc(opc.0)
                .with_cid(0x8000 | self.tails[0] as u16),
            dptr: [base, 0],
            cdw10,
            cdw11,
            ..Default::default()
        };
        self.submit(0, &c, true);
        self.run_to_idle();
    }

    fn create_io_queues(&mut self, sq_in_cmb: bool) {
        if sq_in_cmb {
            // What Linux does: CMBMSC.CRE, then the controller base address with CMSE.
            self.cmb_moved(Some(CMB_ADDR));
            self.w32(r::CMBMSC, 1);
            let v = CMB_ADDR | 0b11;
            self.w32(r::CMBMSC + 4, (v >> 32) as u32);
            self.w32(r::CMBMSC, v as u32);
            self.sqs[1] = CMB_ADDR;
        }
        for q in 1..=IO_QUEUES {
            let sq = self.sqs[usize::from(q)];
            let cq = IO_BASE + u64::from(q - 1) * 0x2000 + 0x1000;
            let qsize = CreateQueueCdw10::new()
                .with_qid(q)
                .with_qsize(IO_ENTRIES as u16 - 1)
                .into_bits();
            let cdw11 = CreateCqCdw11::new()
                .with_pc(true)
                .with_ien(true)
                .with_iv(q)
                .into_bits();
            self.admin_setup(AdminOpcode::CREATE_IO_CQ, cq, qsize, cdw11);
            let cdw11 = CreateSqCdw11::new().with_pc(true).with_cqid(q).into_bits();
            self.admin_setup(AdminOpcode::CREATE_IO_SQ, sq, qsize, cdw11);
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write32(reg, v) => self.w32(reg.offset(), *v),
            Op::Write64(reg, v) => self.w64(reg.offset(), *v),
            Op::WriteBar { bar, offset, data } => {
                let data = &data[..data.len().min(16)];
                self.ctrl.bar_write(usize::from(*bar % 6), *offset, data);
            }
            Op::ReadBar { bar, offset, len } => {
                let bar = usize::from(*bar % 6);
                let mut buf = vec![0u8; usize::from(*len % 16)];
                self.ctrl.bar_read(bar, *offset, &mut buf);
                let size = self.bar_sizes[bar];
                if !p2plab_pci::access_in_bar(*offset, buf.len(), size) {
                    assert!(
                        buf.iter().all(|&b| b == UNCLAIMED_READ),
                        "unclaimed read of BAR{bar} at {offset:#x} returned {buf:x?}"
                    );
                }
            }
            Op::Poke { at, data } => self.poke(at.get(), &data[..data.len().min(512)]),
            Op::PrpList { page, entries } => {
                let at = Addr::Page(*page).get();
                let bytes: Vec<u8> = entries
                    .iter()
                    .take(512)
                    .flat_map(|a| a.get().to_le_bytes())
                    .collect();
                self.poke(at, &bytes);
            }
            Op::SglSegment { at, descriptors } => {
                let bytes: Vec<u8> = descriptors
                    .iter()
                    .take(64)
                    .flat_map(|d| d.descriptor().as_bytes().to_vec())
                    .collect();
                self.poke(at.get(), &bytes);
            }
            Op::Admin(sqe) => self.submit(0, &sqe.command(), true),
            Op::Io { q, sqe, ring } => {
                let q = 1 + usize::from(*q) % usize::from(IO_QUEUES);
                self.submit(q, &sqe.command(), *ring);
            }
            Op::Reap { q } => {
                let q = usize::from(*q) % (1 + usize::from(IO_QUEUES));
                let entries = if q == 0 { ADMIN_ENTRIES } else { IO_ENTRIES };
                self.heads[q] = (self.heads[q] + 1) % entries;
                self.w32(r::cq_head_doorbell(q as u16, 0), self.heads[q]);
            }
            Op::Process(n) => self.run(usize::from(*n)),
            Op::BusMaster(on) => self.bus_master(*on),
            Op::Reset => {
                // A reset leaves Bus Master off until the host says otherwise.
                self.ctrl.reset();
                self.guest.bus_master.store(false, Ordering::Relaxed);
                self.tails = [0; 1 + IO_QUEUES as usize];
                self.heads = [0; 1 + IO_QUEUES as usize];
            }
            Op::CmbMoved(p) => self.cmb_moved(match p {
                CmbPlace::InMemory => Some(CMB_ADDR),
                CmbPlace::Unassigned => None,
                CmbPlace::Raw(a) => Some(a & !(CMB_SIZE - 1)),
            }),
            Op::ArmNotifications => {
                self.ctrl.arm_notifications();
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new();
    match input.setup {
        Setup::Cold => {}
        Setup::Enabled => h.enable(),
        Setup::IoQueues { sq_in_cmb } => {
            h.enable();
            h.create_io_queues(sq_in_cmb);
        }
    }
    for op in input.ops.iter().take(64) {
        h.apply(op);
    }
    h.run_to_idle();
    for (f, &size) in h.files.iter().zip(NS_SIZE.iter()) {
        let len = f.metadata().expect("namespace metadata").len();
        assert_eq!(len, size, "a namespace file changed size");
    }
});
