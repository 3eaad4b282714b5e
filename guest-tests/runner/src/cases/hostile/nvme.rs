//! The hostile NVMe cases: the runner, with `nvme` unbound from the client controller,
//! is its driver ([`RawNvme`]: admin and one I/O queue pair in locked guest RAM, BAR0
//! through sysfs `resource0`) and makes it answer what no real driver asks.
//! - `hostile-nvme-regs`: AQA=0 at enable; doorbells past a queue's size and of queues
//!   that do not exist; CMBMSC pointing at RAM; CC.EN cleared during I/O.
//! - `hostile-nvme-dma`: data pointers at unmapped and misaligned addresses, a PRP list
//!   and an SGL segment that loop, queues straddling the CMB, bad queue ids and fields,
//!   an unreachable CQ and ASQ.
//!
//! Expected answers (NVMe 1.4): §4.3 PRP Offset Invalid for PRP entries with a bad
//! offset; §4.6.1.2.1 Data Transfer Error when the controller cannot reach memory;
//! §5.4/§5.5 Invalid Queue Identifier, Completion Queue Invalid, Invalid Queue Size;
//! Invalid Use of Controller Memory Buffer for a queue the CMB cannot hold; §3.1.24 and
//! §5.2 Asynchronous Events "Invalid Doorbell Write Value" / "Write to Invalid Doorbell
//! Register" for rejected doorbell writes; §3.1.16 CMBSTS.CBAI for a CMBMSC.CBA that is
//! not the CMB BAR; CSTS.CFS when the controller cannot use its admin queue attributes
//! or reach a queue (it has no CQE to report it in). A Controller Reset (CC.EN 1→0)
//! clears CFS and RDY within CAP.TO.

use super::{hand_back, poll, take_over, Bar, Checks, DmaPages, PAGE, UNMAPPED, UNMAPPED2};
use crate::cases::pci::{boot_seed, identify_serial, read_sysfs, rediscover};
use crate::cases::Ctx;
use crate::devices::{DevInfo, Role};
use crate::mem::{direct_io, open_direct, pattern, Mapping, MIB};
use nvme_spec::regs::{self as r, Cc, Cmbmsc, Cmbsts, Csts};
use nvme_spec::sgl::{SglDescriptor, SglDescriptorType};
use nvme_spec::{
    AdminOpcode, AsyncEventCompletion, AsyncEventErrorInfo, AsyncEventType, Cdw0, Command,
    Completion, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11, DeleteQueueCdw10, GetLogPageCdw10,
    NvmOpcode, Status, StatusCodeType, PSDT_SGL_MPTR_CONTIG, SQE_SIZE,
};
use p2plab_guest_abi::DeviceKind;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

/// BAR0: registers and doorbells (`p2plab-nvme`'s `REG_BAR_SIZE`).
const BAR0_SIZE: usize = 16 << 10;
const CAP: usize = r::CAP as usize;
const INTMS: usize = r::INTMS as usize;
const CC: usize = r::CC as usize;
const CSTS: usize = r::CSTS as usize;
const AQA: usize = r::AQA as usize;
const ASQ: usize = r::ASQ as usize;
const ACQ: usize = r::ACQ as usize;
const CMBMSC: usize = r::CMBMSC as usize;
const CMBSTS: usize = r::CMBSTS as usize;

/// SQyTDBL / CQyHDBL (CAP.DSTRD = 0).
fn sq_doorbell(qid: u16) -> usize {
    r::sq_tail_doorbell(qid, 0) as usize
}
fn cq_doorbell(qid: u16) -> usize {
    r::cq_head_doorbell(qid, 0) as usize
}

fn csts_of(v: u32) -> Csts {
    Csts::from_bits(v)
}

fn cmd(opc: u8) -> Command {
    Command {
        cdw0: Cdw0::new().with_opc(opc),
        ..Default::default()
    }
}

fn admin_cmd(op: AdminOpcode) -> Command {
    cmd(op.0)
}

/// Read/Write of `bytes` (a multiple of 512) at byte `off` of namespace 1.
fn rw(op: NvmOpcode, off: u64, bytes: usize, prp1: u64, prp2: u64) -> Command {
    let slba = off / 512;
    let nlb = (bytes / 512).max(1) as u32 - 1;
    Command {
        nsid: 1,
        dptr: [prp1, prp2],
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: nlb,
        ..cmd(op.0)
    }
}

fn status(c: &Completion) -> Status {
    Status::from_parts(StatusCodeType(c.status.sct()), c.status.sc())
}

/// Queue memory: page 0 admin SQ, 1 admin CQ, 2 I/O SQ, 3 I/O CQ.
const ASQ_PAGE: usize = 0;
const ACQ_PAGE: usize = 1;
const IOSQ_PAGE: usize = 2;
const IOCQ_PAGE: usize = 3;
/// Entries of each queue (64 × 64 B SQ, 64 × 16 B CQ: one page each).
const ENTRIES: u32 = 64;

/// One queue pair's driver-side state.
#[derive(Clone, Copy)]
struct Pair {
    qid: u16,
    sq_page: usize,
    cq_page: usize,
    tail: u32,
    head: u32,
    phase: bool,
}

impl Pair {
    fn new(qid: u16, sq_page: usize, cq_page: usize) -> Pair {
        Pair {
            qid,
            sq_page,
            cq_page,
            tail: 0,
            head: 0,
            phase: true,
        }
    }
}

/// The runner as the controller's driver: admin queue pair and I/O queue pair 1 in
/// locked RAM, completions polled (interrupts masked).
struct RawNvme {
    bar: Bar,
    q: DmaPages,
    admin: Pair,
    io: Pair,
    cid: u16,
    /// Completions that arrived while another was awaited.
    stash: Vec<Completion>,
    /// CAP.TO: the longest the controller may take to change CSTS.RDY.
    ready_timeout: Duration,
}

impl RawNvme {
    fn new(bdf: &str) -> Result<RawNvme, String> {
        let bar = Bar::map(bdf, 0, 0, BAR0_SIZE)?;
        let cap = r::Cap::from_bits(bar.r64(CAP));
        Ok(RawNvme {
            bar,
            q: DmaPages::new(4)?,
            admin: Pair::new(0, ASQ_PAGE, ACQ_PAGE),
            io: Pair::new(1, IOSQ_PAGE, IOCQ_PAGE),
            cid: 0,
            stash: vec![],
            ready_timeout: Duration::from_millis(500 * u64::from(cap.to().max(1))),
        })
    }

    fn csts(&self) -> Csts {
        csts_of(self.bar.r32(CSTS))
    }

    fn w64_reg(&self, off: usize, v: u64) {
        self.bar.w32(off, v as u32);
        self.bar.w32(off + 4, (v >> 32) as u32);
    }

    /// Controller Reset: CC.EN cleared, CSTS.RDY awaited (CAP.TO); the CSTS after.
    fn reset(&mut self) -> Result<Csts, String> {
        self.bar.w32(CC, 0);
        let to = self.ready_timeout;
        poll(to, || (!self.csts().rdy()).then_some(()))
            .ok_or_else(|| format!("CSTS.RDY still set {} ms after CC.EN=0", to.as_millis()))?;
        self.stash.clear();
        Ok(self.csts())
    }

    /// Programs AQA (`entries` per admin queue, 0 = AQA 0), ASQ and ACQ, sets CC.EN and
    /// waits for RDY or CFS; the CSTS then.
    fn enable_with(&mut self, entries: u16, asq: u64, acq: u64) -> Result<Csts, String> {
        for w in 0..PAGE / 8 {
            self.q.w64(ACQ_PAGE, w, 0);
        }
        self.admin = Pair::new(0, ASQ_PAGE, ACQ_PAGE);
        let n = entries.saturating_sub(1);
        let aqa = r::Aqa::new().with_asqs(n).with_acqs(n);
        self.bar.w32(AQA, aqa.into_bits());
        self.w64_reg(ASQ, asq);
        self.w64_reg(ACQ, acq);
        let cc = Cc::new().with_en(true).with_iosqes(6).with_iocqes(4);
        self.bar.w32(CC, cc.into_bits());
        let to = self.ready_timeout;
        poll(to, || {
            let c = self.csts();
            (c.rdy() || c.cfs()).then_some(c)
        })
        .ok_or_else(|| format!("neither RDY nor CFS {} ms after CC.EN=1", to.as_millis()))
    }

    /// A normal enable (64-entry admin queues in RAM), interrupts masked (no driver
    /// handles them).
    fn enable(&mut self) -> Result<(), String> {
        let csts = self.enable_with(ENTRIES as u16, self.q.bus(ASQ_PAGE), self.q.bus(ACQ_PAGE))?;
        if csts != Csts::new().with_rdy(true) {
            return Err(format!("enable: {csts:?}, want RDY only"));
        }
        self.bar.w32(INTMS, u32::MAX);
        Ok(())
    }

    fn pair(&mut self, io: bool) -> &mut Pair {
        if io {
            &mut self.io
        } else {
            &mut self.admin
        }
    }

    /// Writes `c` at the tail of the admin (`io` false) or I/O SQ; its CID. The
    /// doorbell is rung by [`Self::ring`].
    fn post(&mut self, io: bool, mut c: Command) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        c.cdw0 = c.cdw0.with_cid(cid);
        let p = *self.pair(io);
        self.q
            .write_at(p.sq_page, p.tail as usize * SQE_SIZE, c.as_bytes());
        self.pair(io).tail = (p.tail + 1) % ENTRIES;
        cid
    }

    fn ring(&mut self, io: bool) {
        let p = *self.pair(io);
        self.bar.w32(sq_doorbell(p.qid), p.tail);
    }

    fn submit(&mut self, io: bool, c: Command) -> u16 {
        let cid = self.post(io, c);
        self.ring(io);
        cid
    }

    /// The next completion of the admin or I/O CQ, if posted (its head doorbell is
    /// written after each).
    fn reap(&mut self, io: bool) -> Option<Completion> {
        let p = *self.pair(io);
        let raw = self.q.read_at(p.cq_page, p.head as usize * 16, 16);
        let cqe = Completion::read_from_bytes(&raw).ok()?;
        if cqe.status.p() != p.phase {
            return None;
        }
        let pr = self.pair(io);
        pr.head += 1;
        if pr.head == ENTRIES {
            pr.head = 0;
            pr.phase = !pr.phase;
        }
        let (qid, head) = (pr.qid, pr.head);
        self.bar.w32(cq_doorbell(qid), head);
        Some(cqe)
    }

    /// The completion of `cid`, within `limit`.
    fn wait(&mut self, io: bool, cid: u16, limit: Duration) -> Result<Completion, String> {
        let t = Instant::now();
        loop {
            if let Some(i) = self.stash.iter().position(|c| c.cid == cid) {
                return Ok(self.stash.remove(i));
            }
            match self.reap(io) {
                Some(c) if c.cid == cid => return Ok(c),
                Some(c) => self.stash.push(c),
                None => {
                    if t.elapsed() > limit {
                        return Err(format!(
                            "no completion for CID {cid} on the {} queue in {} ms ({:?})",
                            if io { "I/O" } else { "admin" },
                            limit.as_millis(),
                            self.csts()
                        ));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }

    fn admin(&mut self, c: Command) -> Result<Completion, String> {
        let cid = self.submit(false, c);
        self.wait(false, cid, Duration::from_secs(10))
    }

    fn io(&mut self, c: Command) -> Result<Status, String> {
        let cid = self.submit(true, c);
        Ok(status(&self.wait(true, cid, Duration::from_secs(10))?))
    }

    fn create_cq(&mut self, qid: u16, base: u64, entries: u16) -> Result<Status, String> {
        let c = Command {
            dptr: [base, 0],
            cdw10: CreateQueueCdw10::new()
                .with_qid(qid)
                .with_qsize(entries.saturating_sub(1))
                .into_bits(),
            // Physically contiguous, polled (no interrupt).
            cdw11: CreateCqCdw11::new().with_pc(true).into_bits(),
            ..admin_cmd(AdminOpcode::CREATE_IO_CQ)
        };
        Ok(status(&self.admin(c)?))
    }

    fn create_sq(
        &mut self,
        qid: u16,
        base: u64,
        entries: u16,
        cqid: u16,
    ) -> Result<Status, String> {
        let c = Command {
            dptr: [base, 0],
            cdw10: CreateQueueCdw10::new()
                .with_qid(qid)
                .with_qsize(entries.saturating_sub(1))
                .into_bits(),
            cdw11: CreateSqCdw11::new()
                .with_pc(true)
                .with_cqid(cqid)
                .into_bits(),
            ..admin_cmd(AdminOpcode::CREATE_IO_SQ)
        };
        Ok(status(&self.admin(c)?))
    }

    /// I/O queue pair 1 in RAM.
    fn create_io(&mut self) -> Result<(), String> {
        for w in 0..PAGE / 8 {
            self.q.w64(IOCQ_PAGE, w, 0);
        }
        self.io = Pair::new(1, IOSQ_PAGE, IOCQ_PAGE);
        let (sq, cq) = (self.q.bus(IOSQ_PAGE), self.q.bus(IOCQ_PAGE));
        let n = ENTRIES as u16;
        match (self.create_cq(1, cq, n)?, self.create_sq(1, sq, n, 1)?) {
            (Status::SUCCESS, Status::SUCCESS) => Ok(()),
            (a, b) => Err(format!("creating I/O queue pair 1: {a:?} / {b:?}")),
        }
    }

    /// Identify Controller into the page at `prp`: its status.
    fn identify(&mut self, prp: u64) -> Result<Status, String> {
        let c = Command {
            dptr: [prp, 0],
            cdw10: u32::from(nvme_spec::identify::Cns::CONTROLLER.0),
            ..admin_cmd(AdminOpcode::IDENTIFY)
        };
        Ok(status(&self.admin(c)?))
    }

    /// Get Log Page Error Information (one 64-byte entry, RAE clear: re-arms the error
    /// events) into the page at `prp`.
    fn read_error_log(&mut self, prp: u64) -> Result<Status, String> {
        let c = Command {
            nsid: 0xffff_ffff,
            dptr: [prp, 0],
            cdw10: GetLogPageCdw10::new()
                .with_lid(nvme_spec::log::LogPageId::ERROR_INFORMATION.0)
                .with_numdl(64 / 4 - 1)
                .into_bits(),
            ..admin_cmd(AdminOpcode::GET_LOG_PAGE)
        };
        Ok(status(&self.admin(c)?))
    }

    /// Waits until CSTS.CFS is set; the CSTS then.
    fn wait_cfs(&self, limit: Duration) -> Option<Csts> {
        poll(limit, || {
            let c = self.csts();
            c.cfs().then_some(c)
        })
    }
}

impl Drop for RawNvme {
    /// A best-effort Controller Reset, so the controller stops using the queue pages
    /// before they are freed.
    fn drop(&mut self) {
        if self.csts().rdy() {
            let _ = self.reset();
        }
    }
}

/// Checks that a reset leaves CSTS at 0 (no RDY, no CFS) and reports how long it took.
fn reset_clean(ck: &mut Checks, nv: &mut RawNvme, after: &str) -> Result<(), String> {
    let t = Instant::now();
    let csts = nv.reset()?;
    ck.check(
        &format!("controller reset after {after}"),
        csts == Csts::new(),
        format!(
            "{csts:?} {:.0} ms after CC.EN=0 (want all clear)",
            t.elapsed().as_secs_f64() * 1e3
        ),
    );
    Ok(())
}

/// The namespace region the hostile cases use: after flr-reset (208M..212M), before
/// fio-verify (256M..); see the region map in cases/nvme.rs.
const HOSTILE_OFF: u64 = 224 << 20;
const HOSTILE_LEN: usize = MIB;

/// Unbinds nvme from the client, runs `attacks`, resets the controller and binds nvme
/// again; then the controller must be live under its boot names and answer Identify.
fn with_client(
    ctx: &mut Ctx,
    attacks: impl FnOnce(&mut Checks, &str, &DevInfo) -> Result<(), String>,
) -> Result<(), String> {
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
    take_over(ctx, &bdf, "nvme")?;
    let t = Instant::now();
    let mut ck = Checks::new(ctx);
    let ran = attacks(&mut ck, &bdf, &info);
    let verdict = ck.verdict();
    let attack_secs = t.elapsed().as_secs_f64();
    // Hand the controller back whatever happened, so the run's other cases find it.
    let t = Instant::now();
    hand_back(&bdf, "nvme")?;
    let d = rediscover(&info)?;
    let ctrl = d.ctrl.clone().unwrap_or_default();
    let state = read_sysfs(&format!("/sys/class/nvme/{ctrl}/state"))?;
    let (sn, _) = identify_serial(&ctrl)?;
    ctx.diag(&format!(
        "attacks {attack_secs:.2} s; rebound: {ctrl} {} state {state}, Identify sn '{sn}', {:.2} s",
        d.ns.as_deref().unwrap_or("?"),
        t.elapsed().as_secs_f64()
    ));
    ran?;
    let passed = verdict?;
    if state != "live" || sn != info.serial.trim() {
        return Err(format!(
            "after the rebind {ctrl} is '{state}' with sn '{sn}', want live and '{}'",
            info.serial
        ));
    }
    if d.ctrl != ctrl0 || d.ns != ns0 {
        return Err(format!(
            "the client came back as {ctrl} {:?}, the run's other cases use {ctrl0:?} {ns0:?}",
            d.ns
        ));
    }
    ctx.diag(&format!("{passed} checks passed"));
    Ok(())
}

/// hostile-nvme-regs.
pub fn regs(ctx: &mut Ctx) -> Result<(), String> {
    with_client(ctx, regs_attacks)
}

fn regs_attacks(ck: &mut Checks, bdf: &str, info: &DevInfo) -> Result<(), String> {
    // Declared before the controller's driver, so they outlive its reset on drop.
    let data = DmaPages::new(2)?;
    let cmb_page = DmaPages::new(1)?;
    let io_buf = DmaPages::new(257)?;
    let mut nv = RawNvme::new(bdf)?;
    ck.diag(&format!(
        "{bdf} BAR0 at {:#x}: CAP {:#018x} CC {:#x} CSTS {:#x} CMBMSC {:#x}",
        nv.bar.bus,
        nv.bar.r64(CAP),
        nv.bar.r32(CC),
        nv.bar.r32(CSTS),
        nv.bar.r64(CMBMSC)
    ));
    reset_clean(ck, &mut nv, "the driver's shutdown")?;

    // AQA = 0: no usable admin queue; the controller cannot report it in a CQE.
    let csts = nv.enable_with(0, nv.q.bus(ASQ_PAGE), nv.q.bus(ACQ_PAGE))?;
    ck.check(
        "CC.EN=1 with AQA=0",
        csts.cfs() && !csts.rdy(),
        format!("{csts:?} (want CFS, not RDY)"),
    );
    reset_clean(ck, &mut nv, "AQA=0")?;

    // Doorbells: each rejected write completes an outstanding AER with an error event;
    // reading the Error Information log re-arms the next.
    nv.enable()?;
    let value = AsyncEventErrorInfo::INVALID_DOORBELL_WRITE_VALUE;
    let register = AsyncEventErrorInfo::WRITE_TO_INVALID_DOORBELL_REGISTER;
    let attacks = [
        ("SQ0 tail 1000 (64 entries)", sq_doorbell(0), 1000, value),
        ("SQ5 tail (no such queue)", sq_doorbell(5), 1, register),
        ("CQ0 head 999 (64 entries)", cq_doorbell(0), 999, value),
        (
            "CQ1535 head (the last dword of BAR0)",
            BAR0_SIZE - 4,
            7,
            register,
        ),
    ];
    for (what, off, v, want) in attacks {
        let aer = nv.submit(false, admin_cmd(AdminOpcode::ASYNC_EVENT_REQUEST));
        std::thread::sleep(Duration::from_millis(20));
        if let Some(c) = nv.reap(false) {
            return Err(format!("a completion before any error: {c:?}"));
        }
        nv.bar.w32(off, v);
        let c = nv.wait(false, aer, Duration::from_secs(5))?;
        let ev = AsyncEventCompletion::from_bits(c.dw0);
        let (aet, aei, lid) = (
            AsyncEventType(ev.aet()),
            AsyncEventErrorInfo(ev.aei()),
            nvme_spec::log::LogPageId(ev.lid()),
        );
        ck.check(
            &format!("doorbell write {v} to {what}"),
            status(&c) == Status::SUCCESS
                && aet == AsyncEventType::ERROR_STATUS
                && aei == want
                && lid == nvme_spec::log::LogPageId::ERROR_INFORMATION,
            format!("AER: {aet:?} {aei:?} {lid:?} (want {want:?})"),
        );
        let s = nv.read_error_log(data.bus(0))?;
        if s != Status::SUCCESS {
            return Err(format!("Get Log Page 01h: {s:?}"));
        }
    }
    data.fill(1, 7);
    let s = nv.identify(data.bus(1))?;
    let sn = serial_of(&data.read_at(1, 0, 24));
    ck.check(
        "the admin queue after the rejected doorbells",
        s == Status::SUCCESS && sn == info.serial.trim(),
        format!("Identify: {s:?}, sn '{sn}'"),
    );
    reset_clean(ck, &mut nv, "the doorbell attacks")?;

    let r = cmbmsc_at_ram(ck, &mut nv, bdf, info, &cmb_page);
    r.and_then(|()| cc_en_during_io(ck, &mut nv, &io_buf))
}

/// The SN field (bytes 4..24) of Identify Controller data, trimmed.
fn serial_of(id: &[u8]) -> String {
    String::from_utf8_lossy(id.get(4..24).unwrap_or_default())
        .trim()
        .to_string()
}

/// CMBMSC.CBA = a page of guest RAM with CMSE: CMBSTS.CBAI, and that page stays RAM —
/// Identify data sent there lands in it, not in the CMB.
fn cmbmsc_at_ram(
    ck: &mut Checks,
    nv: &mut RawNvme,
    bdf: &str,
    info: &DevInfo,
    page: &DmaPages,
) -> Result<(), String> {
    let cmb = Bar::map(bdf, 2, 0, PAGE)?;
    let canary: Vec<u8> = (0..PAGE).map(|i| (i * 7 + 3) as u8).collect();
    cmb.write(0, &canary);
    let saved = nv.bar.r64(CMBMSC);
    let ram = page.bus(0);
    let bad = Cmbmsc::new()
        .with_cre(true)
        .with_cmse(true)
        .with_cba(ram >> 12)
        .into_bits();
    // Linux's order: high dword first, then the low one with CMSE.
    nv.bar.w32(CMBMSC + 4, (bad >> 32) as u32);
    nv.bar.w32(CMBMSC, bad as u32);
    let sts = Cmbsts::from_bits(nv.bar.r32(CMBSTS));
    ck.check(
        &format!("CMBMSC.CBA = RAM page {ram:#x} with CMSE"),
        sts.cbai(),
        format!("{sts:?} (want CBAI)"),
    );
    nv.enable()?;
    let s = nv.identify(ram)?;
    let sn = serial_of(&page.read_at(0, 0, 24));
    let cmb_intact = cmb.read(0, PAGE) == canary;
    ck.check(
        "Identify into the page CMBMSC.CBA names",
        s == Status::SUCCESS && sn == info.serial.trim() && cmb_intact,
        format!(
            "{s:?}, sn '{sn}' in RAM, CMB page 0 {}",
            if cmb_intact { "untouched" } else { "CHANGED" }
        ),
    );
    reset_clean(ck, nv, "the CMBMSC attack")?;
    nv.bar.w32(CMBMSC + 4, (saved >> 32) as u32);
    nv.bar.w32(CMBMSC, saved as u32);
    let sts = Cmbsts::from_bits(nv.bar.r32(CMBSTS));
    ck.check(
        "CMBMSC restored",
        !sts.cbai() || !Cmbmsc::from_bits(saved).cmse(),
        format!("CMBMSC {:#x}, {sts:?}", nv.bar.r64(CMBMSC)),
    );
    Ok(())
}

/// 48 reads of 1 MiB queued, the doorbell rung and CC.EN cleared at once: RDY clears
/// within CAP.TO, no CFS, and no completion is posted after RDY cleared.
fn cc_en_during_io(ck: &mut Checks, nv: &mut RawNvme, buf: &DmaPages) -> Result<(), String> {
    const READS: usize = 48;
    for i in 1..256 {
        buf.w64(256, i - 1, buf.bus(i));
    }
    nv.enable()?;
    nv.create_io()?;
    for _ in 0..READS {
        let c = rw(NvmOpcode::READ, HOSTILE_OFF, MIB, buf.bus(0), buf.bus(256));
        nv.post(true, c);
    }
    nv.ring(true);
    nv.bar.w32(CC, 0);
    let t = Instant::now();
    let to = nv.ready_timeout;
    poll(to, || (!nv.csts().rdy()).then_some(()))
        .ok_or_else(|| format!("CSTS.RDY still set {} ms after CC.EN=0", to.as_millis()))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let cq_at_reset = nv.q.read_at(IOCQ_PAGE, 0, PAGE);
    let done = cq_at_reset
        .chunks_exact(16)
        .filter_map(|e| Completion::read_from_bytes(e).ok())
        .filter(|c| c.status.p())
        .count();
    std::thread::sleep(Duration::from_millis(100));
    let csts = nv.csts();
    let quiet = nv.q.read_at(IOCQ_PAGE, 0, PAGE) == cq_at_reset;
    ck.check(
        &format!("CC.EN cleared with {READS} reads of 1 MiB queued"),
        csts == Csts::new() && quiet,
        format!(
            "RDY clear after {ms:.1} ms with {done} of {READS} completed; {csts:?}; {}",
            if quiet {
                "nothing posted after"
            } else {
                "COMPLETIONS POSTED AFTER THE RESET"
            }
        ),
    );
    nv.stash.clear();
    nv.enable()?;
    let s = nv.identify(buf.bus(0))?;
    ck.check(
        "re-enabled after the reset",
        s == Status::SUCCESS,
        format!("Identify: {s:?}"),
    );
    reset_clean(ck, nv, "the reset during I/O")
}

/// hostile-nvme-dma: the namespace region is staged through the kernel first and read
/// back through it after the rebind.
pub fn dma(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role(Role::Client)?;
    let ns = c.ns.clone().ok_or("client has no namespace")?;
    let seed = boot_seed(0x686f_7374);
    let f = open_direct(&ns)?;
    let m = Mapping::ram(HOSTILE_LEN)?;
    m.fill(seed);
    direct_io(&f, &m, HOSTILE_OFF, MIB, true).map_err(|e| format!("pwrite {ns}: {e}"))?;
    drop(f);
    with_client(ctx, |ck, bdf, _| dma_attacks(ck, bdf, seed))?;
    let f = open_direct(&ns)?;
    let back = Mapping::ram(HOSTILE_LEN)?;
    direct_io(&f, &back, HOSTILE_OFF, MIB, false).map_err(|e| format!("pread {ns}: {e}"))?;
    back.verify(seed)
        .map_err(|e| format!("{ns} at {}M after the attacks: {e}", HOSTILE_OFF >> 20))?;
    ctx.diag(&format!(
        "{ns}: the {} MiB region at {}M reads back intact through the rebound driver",
        HOSTILE_LEN / MIB,
        HOSTILE_OFF >> 20
    ));
    Ok(())
}

/// Data pages of the dma attacks: 0..16 targets, 16..24 guards, then the pages below.
const DPAGES: usize = 32;
const LOOP_DATA: usize = 24;
const LOOP_LIST: usize = 25;
const LIST: usize = 26;
const SGL_PAGE: usize = 27;
const SQ2_PAGE: usize = 28;
const CANARY: u64 = 0x6361_6e61;

/// The Segment descriptor naming the 16-byte segment at `at`.
fn segment(at: u64) -> SglDescriptor {
    SglDescriptor::new(SglDescriptorType::SEGMENT, at, 16)
}

fn dma_attacks(ck: &mut Checks, bdf: &str, seed: u64) -> Result<(), String> {
    let (cmb_bus, cmb_size) = crate::cases::gpu::bar_resource(bdf, 2)?;
    let cmb_end = cmb_bus + cmb_size;
    // Declared before the controller's driver, so they outlive its reset on drop.
    let d = DmaPages::new(DPAGES)?;
    let back = DmaPages::new(65)?;
    let mut nv = RawNvme::new(bdf)?;
    let word = |i: usize| pattern(seed, i as u64);
    nv.reset()?;
    nv.enable()?;
    nv.create_io()?;

    // Baseline: 64 KiB of the staged region into pages 0..16 (PRP1 + a list).
    for i in 0..DPAGES {
        d.fill(i, CANARY);
    }
    for i in 1..16 {
        d.w64(LIST, i - 1, d.bus(i));
    }
    let s = nv.io(rw(
        NvmOpcode::READ,
        HOSTILE_OFF,
        16 * PAGE,
        d.bus(0),
        d.bus(LIST),
    ))?;
    let good = (0..16).all(|p| (0..PAGE / 8).all(|w| d.r64(p, w) == word(p * 512 + w)));
    ck.check(
        "baseline: a 64 KiB read with a PRP list",
        s == Status::SUCCESS && good,
        format!("{s:?}, data {}", if good { "as staged" } else { "WRONG" }),
    );
    if !good {
        return Err(
            "the raw driver cannot read the staged data: the attacks would prove nothing".into(),
        );
    }

    // Data pointer attacks: each must fail with its status and write no page.
    for i in 0..DPAGES {
        d.fill(i, CANARY);
    }
    // What each attack sets up first: a good list naming pages 1..16 again and again
    // (a 1 MiB transfer needs 255 entries), unless the attack is about the list.
    type Prep = fn(&DmaPages);
    let list_ok: Prep = |d| {
        for e in 0..255 {
            d.w64(LIST, e, d.bus(1 + e % 15));
        }
    };
    let misaligned_entry: Prep = |d| {
        for e in 0..255 {
            d.w64(LIST, e, d.bus(1 + e % 15));
        }
        d.w64(LIST, 3, d.bus(4) + 0x100);
    };
    let sgl_loop: Prep = |d| {
        // A Segment whose only descriptor is a Segment pointing back at itself.
        d.write_at(SGL_PAGE, 0, segment(d.bus(SGL_PAGE)).as_bytes());
    };
    let off = HOSTILE_OFF;
    let (read, write) = (NvmOpcode::READ, NvmOpcode::WRITE);
    let mut sgl = rw(read, off, PAGE, 0, 0);
    sgl.cdw0 = sgl.cdw0.with_psdt(PSDT_SGL_MPTR_CONTIG);
    sgl.dptr = segment(d.bus(SGL_PAGE)).to_dptr();
    let cases: Vec<(&str, Command, Status, Prep)> = vec![
        (
            "read 1 MiB, PRP1 unmapped",
            rw(read, off, MIB, UNMAPPED, d.bus(LIST)),
            Status::DATA_TRANSFER_ERROR,
            list_ok,
        ),
        (
            "read 1 MiB, PRP1 not dword aligned",
            rw(read, off, MIB, d.bus(0) + 2, d.bus(LIST)),
            Status::PRP_OFFSET_INVALID,
            list_ok,
        ),
        (
            "read 8 KiB, PRP2 with a page offset",
            rw(read, off, 2 * PAGE, d.bus(0), d.bus(1) + 0x200),
            Status::PRP_OFFSET_INVALID,
            list_ok,
        ),
        (
            "read 1 MiB, list entry 3 with a page offset",
            rw(read, off, MIB, d.bus(0), d.bus(LIST)),
            Status::PRP_OFFSET_INVALID,
            misaligned_entry,
        ),
        (
            "read 1 MiB, PRP list pointer unmapped",
            rw(read, off, MIB, d.bus(0), UNMAPPED2),
            Status::DATA_TRANSFER_ERROR,
            list_ok,
        ),
        (
            "write 1 MiB, PRP1 unmapped",
            rw(write, off, MIB, UNMAPPED, d.bus(LIST)),
            Status::DATA_TRANSFER_ERROR,
            list_ok,
        ),
        (
            "write 1 MiB, PRP1 not dword aligned",
            rw(write, off, MIB, d.bus(0) + 1, d.bus(LIST)),
            Status::PRP_OFFSET_INVALID,
            list_ok,
        ),
        (
            "read 4 KiB through an SGL segment that points at itself",
            sgl,
            Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS,
            sgl_loop,
        ),
        (
            "read past the namespace's last LBA",
            rw(read, 0xffff_ffff << 9, PAGE, d.bus(0), 0),
            Status::LBA_OUT_OF_RANGE,
            list_ok,
        ),
        (
            "read 32 MiB (beyond MDTS)",
            rw(read, off, 32 * MIB, d.bus(0), d.bus(LIST)),
            Status::INVALID_FIELD_IN_COMMAND,
            list_ok,
        ),
        (
            "read from namespace 99",
            Command {
                nsid: 99,
                ..rw(read, off, PAGE, d.bus(0), 0)
            },
            Status::INVALID_NAMESPACE_OR_FORMAT,
            list_ok,
        ),
    ];
    for (what, c, want, prep) in cases {
        prep(&d);
        let s = nv.io(c)?;
        let touched: Vec<usize> = d
            .changed(0..DPAGES, CANARY)
            .into_iter()
            .filter(|p| ![LIST, SGL_PAGE].contains(p))
            .collect();
        ck.check(
            what,
            s == want && touched.is_empty(),
            format!("{s:?} (want {want:?}), pages written: {touched:?}"),
        );
        for p in touched {
            d.fill(p, CANARY);
        }
    }
    list_ok(&d);

    // A PRP list whose last entry points back at its own page: bounded by the
    // transfer length, the read completes and writes only the page it names.
    for e in 0..511 {
        d.w64(LOOP_LIST, e, d.bus(LOOP_DATA));
    }
    d.w64(LOOP_LIST, 511, d.bus(LOOP_LIST));
    let list_before = d.read_at(LOOP_LIST, 0, PAGE);
    let s = nv.io(rw(
        read,
        HOSTILE_OFF,
        16 * PAGE,
        d.bus(LOOP_DATA),
        d.bus(LOOP_LIST) + 4080,
    ))?;
    let last = (0..PAGE / 8).all(|w| d.r64(LOOP_DATA, w) == word(15 * 512 + w));
    let others: Vec<usize> = d
        .changed(0..DPAGES, CANARY)
        .into_iter()
        .filter(|p| ![LIST, SGL_PAGE, LOOP_DATA, LOOP_LIST].contains(p))
        .collect();
    let list_kept = d.read_at(LOOP_LIST, 0, PAGE) == list_before;
    ck.check(
        "read 64 KiB through a PRP list that chains back to its own page",
        s == Status::SUCCESS && last && others.is_empty() && list_kept,
        format!(
            "{s:?}; the named page holds the transfer's last 4 KiB: {last}; other pages written: {others:?}; list untouched: {list_kept}"
        ),
    );

    // Queue attacks.
    let sq2 = d.bus(SQ2_PAGE);
    let q = [
        (
            "create I/O SQ 2 on the CMB's last page, 128 entries (8 KiB: past its end)",
            nv.create_sq(2, cmb_end - PAGE as u64, 128, 1)?,
            Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER,
        ),
        (
            "create I/O CQ 2 in the CMB (CMBSZ.CQS = 0)",
            nv.create_cq(2, cmb_bus + MIB as u64, 16)?,
            Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER,
        ),
        (
            "create I/O SQ 0",
            nv.create_sq(0, sq2, 16, 1)?,
            Status::INVALID_QUEUE_IDENTIFIER,
        ),
        (
            "create I/O SQ 200",
            nv.create_sq(200, sq2, 16, 1)?,
            Status::INVALID_QUEUE_IDENTIFIER,
        ),
        (
            "create I/O SQ 3 on CQ 7 (none)",
            nv.create_sq(3, sq2, 16, 7)?,
            Status::COMPLETION_QUEUE_INVALID,
        ),
        (
            "create I/O CQ 3 with one entry",
            nv.create_cq(3, sq2, 1)?,
            Status::INVALID_QUEUE_SIZE,
        ),
        (
            "delete I/O SQ 5 (none)",
            status(&nv.admin(Command {
                cdw10: DeleteQueueCdw10::new().with_qid(5).into_bits(),
                ..admin_cmd(AdminOpcode::DELETE_IO_SQ)
            })?),
            Status::INVALID_QUEUE_IDENTIFIER,
        ),
        (
            "Identify CNS 55h",
            status(&nv.admin(Command {
                dptr: [d.bus(0), 0],
                cdw10: 0x55,
                ..admin_cmd(AdminOpcode::IDENTIFY)
            })?),
            Status::INVALID_FIELD_IN_COMMAND,
        ),
        (
            "admin opcode 7Fh",
            status(&nv.admin(cmd(0x7f))?),
            Status::INVALID_COMMAND_OPCODE,
        ),
    ];
    for (what, got, want) in q {
        ck.check(what, got == want, format!("{got:?} (want {want:?})"));
    }
    let touched = d.changed(0..LOOP_DATA, CANARY);
    ck.check(
        "no target page written by the rejected commands",
        touched.is_empty(),
        format!("pages changed: {touched:?}"),
    );

    // Fatal: a CQ the controller cannot reach. The flush itself runs; its completion
    // cannot be posted.
    let s = nv.create_cq(2, UNMAPPED, 16)?;
    let s2 = nv.create_sq(2, sq2, 16, 2)?;
    if (s, s2) != (Status::SUCCESS, Status::SUCCESS) {
        return Err(format!(
            "creating a queue pair on an unmapped CQ: {s:?} / {s2:?}"
        ));
    }
    let flush = Command {
        nsid: 1,
        ..cmd(NvmOpcode::FLUSH.0)
    };
    d.write_at(SQ2_PAGE, 0, flush.as_bytes());
    nv.bar.w32(sq_doorbell(2), 1);
    let csts = nv.wait_cfs(Duration::from_secs(5));
    ck.check(
        "a command on an SQ whose CQ is unmapped",
        csts.is_some(),
        format!("{:?} (want CFS)", csts.unwrap_or_else(|| nv.csts())),
    );
    reset_clean(ck, &mut nv, "the unmapped CQ")?;

    // Fatal at enable: an admin SQ from the CMB's last page, 128 entries: past its end.
    let csts = nv.enable_with(128, cmb_end - PAGE as u64, nv.q.bus(ACQ_PAGE))?;
    ck.check(
        "CC.EN=1 with the admin SQ running past the CMB's end",
        csts.cfs() && !csts.rdy(),
        format!("{csts:?} (want CFS, not RDY)"),
    );
    reset_clean(ck, &mut nv, "the admin SQ past the CMB")?;

    // Fatal at the first fetch: an admin SQ at an unmapped address.
    let csts = nv.enable_with(ENTRIES as u16, UNMAPPED, nv.q.bus(ACQ_PAGE))?;
    if csts != Csts::new().with_rdy(true) {
        return Err(format!("enable with an unmapped ASQ: {csts:?}, want RDY"));
    }
    nv.submit(false, admin_cmd(AdminOpcode::KEEP_ALIVE));
    let csts = nv.wait_cfs(Duration::from_secs(5));
    ck.check(
        "a doorbell on an admin SQ at an unmapped address",
        csts.is_some(),
        format!("{:?} (want CFS)", csts.unwrap_or_else(|| nv.csts())),
    );
    reset_clean(ck, &mut nv, "the unmapped admin SQ")?;

    // Data intact: the staged region reads back through the raw queues.
    for i in 1..64 {
        back.w64(64, i - 1, back.bus(i));
    }
    nv.enable()?;
    nv.create_io()?;
    let s = nv.io(rw(read, HOSTILE_OFF, 64 * PAGE, back.bus(0), back.bus(64)))?;
    let intact = (0..64).all(|p| (0..PAGE / 8).all(|w| back.r64(p, w) == word(p * 512 + w)));
    ck.check(
        "the staged region after the attacks (256 KiB through the raw queues)",
        s == Status::SUCCESS && intact,
        format!("{s:?}, {}", if intact { "intact" } else { "CHANGED" }),
    );
    reset_clean(ck, &mut nv, "the attacks")
}
