//! The controller as a state machine: driven through BAR0 like a driver, over a
//! [`TestDmaSpace`] and a [`RecordingInterrupts`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nvme_spec::feature::{FeatureId, InterruptVectorConfiguration, NumberOfQueues};
use nvme_spec::identify::{Cns, IdentifyController, IdentifyNamespace, Nidt};
use nvme_spec::log::{LogPageId, SmartHealthLog};
use nvme_spec::nvm::{DsmRange, RwCdw12};
use nvme_spec::regs::{
    self as r, Aqa, Cap, Cc, Cmbloc, Cmbmsc, Cmbsts, Cmbsz, Csts, CC_SHN_NORMAL, CSTS_SHST_COMPLETE,
};
use nvme_spec::sgl::{SglDescriptor, SglDescriptorType};
use nvme_spec::{
    AdminOpcode, AsyncEventCompletion, AsyncEventErrorInfo, AsyncEventType, Cdw0, Command,
    Completion, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11, NvmOpcode, Status,
    ABORT_NOT_ABORTED, PSDT_SGL_MPTR_CONTIG,
};
use p2plab_memory::{RecordingInterrupts, TestDmaSpace};
use p2plab_pci::{PciFunction, UNCLAIMED_READ};
use zerocopy::{FromBytes, IntoBytes};

use crate::{Deallocate, NamespaceConfig, NvmeConfig, NvmeController, CMB_BAR, REG_BAR};

// Guest memory map of the tests.
const MEM_BASE: u64 = 0x10_0000;
const MEM_SIZE: usize = 16 << 20;
const ASQ: u64 = 0x10_0000;
const ACQ: u64 = 0x10_1000;
const IO_SQ: u64 = 0x10_2000;
const IO_CQ: u64 = 0x10_3000;
const DBS_BUF: u64 = 0x10_4000;
const EIS_BUF: u64 = 0x10_5000;
const LISTS: u64 = 0x18_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x60_0000;
/// Where the tests program the CMB BAR (inside the test memory, so PRPs into the CMB
/// resolve like the fabric resolves the device's own BAR).
const CMB_ADDR: u64 = 0xa0_0000;
const CMB_SIZE: u64 = 2 << 20;

const ADMIN_ENTRIES: u32 = 32;
const IO_ENTRIES: u32 = 64;
const NS_SIZE: u64 = 8 << 20;

static FILE_SEQ: AtomicU32 = AtomicU32::new(0);

struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn new(size: u64) -> Self {
        let n = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("p2plab-nvme-test-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(size).unwrap();
        Self { path, file }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Default)]
struct RecordingDeallocate {
    calls: Mutex<Vec<(u64, u64)>>,
}

impl Deallocate for RecordingDeallocate {
    fn punch_hole(&self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        self.calls.lock().unwrap().push((offset, len));
        file.write_all_at(&vec![0; len as usize], offset)
    }
}

struct Harness {
    ctrl: NvmeController,
    mem: Arc<TestDmaSpace>,
    irq: Arc<RecordingInterrupts>,
    files: Vec<TempFile>,
    dealloc: Arc<RecordingDeallocate>,
    asq_tail: u32,
    acq_head: u32,
    acq_phase: bool,
    io_tail: u32,
    io_head: u32,
    io_phase: bool,
    cid: u16,
}

fn config_with(serial: &str, files: &[TempFile], lba: u32) -> NvmeConfig {
    let namespaces = files
        .iter()
        .map(|f| NamespaceConfig {
            file: f.file.try_clone().unwrap(),
            size: NS_SIZE,
            lba_size: lba,
        })
        .collect();
    let mut cfg = NvmeConfig::new(serial, namespaces);
    cfg.cmb_size = CMB_SIZE;
    cfg.max_io_queues = 4;
    cfg
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut NvmeConfig)) -> Self {
        let files = vec![TempFile::new(NS_SIZE), TempFile::new(NS_SIZE)];
        let mut cfg = config_with("P2PLAB-TEST-0001", &files, 512);
        let dealloc = Arc::new(RecordingDeallocate::default());
        cfg.deallocate = Some(dealloc.clone());
        tweak(&mut cfg);
        let mem = Arc::new(TestDmaSpace::new(MEM_BASE, MEM_SIZE));
        let irq = Arc::new(RecordingInterrupts::default());
        let ctrl = NvmeController::new(cfg, mem.clone(), irq.clone()).unwrap();
        ctrl.set_bus_master(true);
        Self {
            ctrl,
            mem,
            irq,
            files,
            dealloc,
            asq_tail: 0,
            acq_head: 0,
            acq_phase: true,
            io_tail: 0,
            io_head: 0,
            io_phase: true,
            cid: 0,
        }
    }

    fn w32(&self, off: u64, v: u32) -> bool {
        self.ctrl.bar_write(REG_BAR, off, &v.to_le_bytes())
    }
    fn w64(&self, off: u64, v: u64) -> bool {
        self.ctrl.bar_write(REG_BAR, off, &v.to_le_bytes())
    }
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.bar_read(REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.ctrl.bar_read(REG_BAR, off, &mut b);
        u64::from_le_bytes(b)
    }
    fn csts(&self) -> Csts {
        Csts::from_bits(self.r32(r::CSTS))
    }

    /// Runs the worker until it has nothing left to do.
    fn run(&self) {
        for _ in 0..64 {
            if !self.ctrl.process() && !self.ctrl.needs_processing() {
                return;
            }
        }
        panic!("process() never went idle");
    }

    fn cc_enabled() -> Cc {
        Cc::new().with_en(true).with_iosqes(6).with_iocqes(4)
    }

    #[track_caller]
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
        self.w32(r::CC, Self::cc_enabled().into_bits());
        self.run();
        assert!(self.csts().rdy(), "controller did not become ready");
        self.asq_tail = 0;
        self.acq_head = 0;
        self.acq_phase = true;
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    fn cmd(&mut self, opc: u8) -> Command {
        let cid = self.next_cid();
        Command {
            cdw0: Cdw0::new().with_opc(opc).with_cid(cid),
            ..Default::default()
        }
    }

    /// Submits to the admin SQ without waiting.
    fn submit_admin(&mut self, cmd: &Command) {
        self.mem
            .poke(ASQ + u64::from(self.asq_tail) * 64, cmd.as_bytes());
        self.asq_tail = (self.asq_tail + 1) % ADMIN_ENTRIES;
        assert!(self.w32(r::sq_tail_doorbell(0, 0), self.asq_tail));
    }

    /// Pops the next admin CQE, if one was posted.
    fn reap_admin(&mut self) -> Option<Completion> {
        let addr = ACQ + u64::from(self.acq_head) * 16;
        let cqe = Completion::read_from_bytes(&self.mem.peek(addr, 16)).unwrap();
        if cqe.status.p() != self.acq_phase {
            return None;
        }
        self.acq_head += 1;
        if self.acq_head == ADMIN_ENTRIES {
            self.acq_head = 0;
            self.acq_phase = !self.acq_phase;
        }
        self.w32(r::cq_head_doorbell(0, 0), self.acq_head);
        Some(cqe)
    }

    #[track_caller]
    fn admin(&mut self, cmd: Command) -> Completion {
        self.submit_admin(&cmd);
        self.run();
        let cqe = self.reap_admin().expect("no admin completion");
        assert_eq!(cqe.cid, cmd.cdw0.cid());
        assert_eq!(cqe.sqid, 0);
        cqe
    }

    #[track_caller]
    fn admin_ok(&mut self, cmd: Command) -> Completion {
        let c = self.admin(cmd);
        assert_eq!(status(&c), Status::SUCCESS);
        c
    }

    fn create_cq(
        &mut self,
        qid: u16,
        base: u64,
        entries: u32,
        iv: u16,
        ien: bool,
        pc: bool,
    ) -> Completion {
        let mut c = self.cmd(AdminOpcode::CREATE_IO_CQ.0);
        c.dptr[0] = base;
        c.cdw10 = CreateQueueCdw10::new()
            .with_qid(qid)
            .with_qsize((entries - 1) as u16)
            .into_bits();
        c.cdw11 = CreateCqCdw11::new()
            .with_pc(pc)
            .with_ien(ien)
            .with_iv(iv)
            .into_bits();
        self.admin(c)
    }

    fn create_sq(&mut self, qid: u16, base: u64, entries: u32, cqid: u16, pc: bool) -> Completion {
        let mut c = self.cmd(AdminOpcode::CREATE_IO_SQ.0);
        c.dptr[0] = base;
        c.cdw10 = CreateQueueCdw10::new()
            .with_qid(qid)
            .with_qsize((entries - 1) as u16)
            .into_bits();
        c.cdw11 = CreateSqCdw11::new().with_pc(pc).with_cqid(cqid).into_bits();
        self.admin(c)
    }

    /// Enables the controller and creates I/O queue pair 1 (vector 1).
    #[track_caller]
    fn ready(&mut self) {
        self.enable();
        assert_eq!(
            status(&self.create_cq(1, IO_CQ, IO_ENTRIES, 1, true, true)),
            Status::SUCCESS
        );
        assert_eq!(
            status(&self.create_sq(1, IO_SQ, IO_ENTRIES, 1, true)),
            Status::SUCCESS
        );
        self.irq.take();
    }

    fn submit_io(&mut self, cmd: &Command, ring: bool) {
        self.mem
            .poke(IO_SQ + u64::from(self.io_tail) * 64, cmd.as_bytes());
        self.io_tail = (self.io_tail + 1) % IO_ENTRIES;
        if ring {
            self.w32(r::sq_tail_doorbell(1, 0), self.io_tail);
        }
    }

    fn reap_io(&mut self) -> Option<Completion> {
        let addr = IO_CQ + u64::from(self.io_head) * 16;
        let cqe = Completion::read_from_bytes(&self.mem.peek(addr, 16)).unwrap();
        if cqe.status.p() != self.io_phase {
            return None;
        }
        self.io_head += 1;
        if self.io_head == IO_ENTRIES {
            self.io_head = 0;
            self.io_phase = !self.io_phase;
        }
        self.w32(r::cq_head_doorbell(1, 0), self.io_head);
        Some(cqe)
    }

    #[track_caller]
    fn io(&mut self, cmd: Command) -> Status {
        self.submit_io(&cmd, true);
        self.run();
        let cqe = self.reap_io().expect("no I/O completion");
        assert_eq!(cqe.cid, cmd.cdw0.cid());
        assert_eq!(cqe.sqid, 1);
        status(&cqe)
    }

    /// A Read/Write/Compare of `nlb` blocks at `slba` on namespace 1 with PRPs.
    fn rw(&mut self, op: NvmOpcode, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Command {
        let mut c = self.cmd(op.0);
        c.nsid = 1;
        c.dptr = [prp1, prp2];
        c.cdw10 = slba as u32;
        c.cdw11 = (slba >> 32) as u32;
        c.cdw12 = RwCdw12::new().with_nlb((nlb - 1) as u16).into_bits();
        c
    }

    fn file_bytes(&self, ns: usize, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.files[ns].file.read_exact_at(&mut v, off).unwrap();
        v
    }

    fn identify(&mut self, cns: Cns, nsid: u32) -> (Status, Vec<u8>) {
        let mut c = self.cmd(AdminOpcode::IDENTIFY.0);
        c.nsid = nsid;
        c.dptr[0] = DATA;
        c.cdw10 = u32::from(cns.0);
        self.mem.poke(DATA, &[0xee; 4096]);
        let s = status(&self.admin(c));
        (s, self.mem.peek(DATA, 4096))
    }

    fn get_log(&mut self, lid: LogPageId, len: u32, offset: u64) -> (Status, Vec<u8>) {
        let mut c = self.cmd(AdminOpcode::GET_LOG_PAGE.0);
        c.nsid = 0xffff_ffff;
        c.dptr = [DATA, DATA + 4096];
        let numd = len / 4 - 1;
        c.cdw10 = u32::from(lid.0) | ((numd & 0xffff) << 16);
        c.cdw11 = numd >> 16;
        c.cdw12 = offset as u32;
        c.cdw13 = (offset >> 32) as u32;
        self.mem.poke(DATA, &vec![0xee; len as usize]);
        let s = status(&self.admin(c));
        (s, self.mem.peek(DATA, len as usize))
    }
}

fn status(c: &Completion) -> Status {
    Status::from_parts(nvme_spec::StatusCodeType(c.status.sct()), c.status.sc())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---- registers and the enable state machine ----

#[test]
fn cap_and_vs_advertise_what_linux_needs() {
    let h = Harness::new();
    let cap = Cap::from_bits(h.r64(r::CAP));
    assert_eq!(cap.mqes(), 1023);
    assert!(cap.cqr());
    assert!(cap.to() > 0);
    assert_eq!(cap.dstrd(), 0);
    assert_eq!(cap.css(), r::CAP_CSS_NVM);
    assert_eq!(cap.mpsmin(), 0);
    assert!(cap.cmbs());
    assert_eq!(h.r32(r::VS), r::VS_1_4.into_bits());
    // 32-bit halves read the same as the 64-bit register.
    assert_eq!(
        u64::from(h.r32(r::CAP)) | (u64::from(h.r32(r::CAP + 4)) << 32),
        cap.into_bits()
    );
}

#[test]
fn enable_sets_ready_and_disable_clears_it() {
    let mut h = Harness::new();
    assert!(!h.csts().rdy());
    h.enable();
    h.w32(r::CC, 0);
    assert!(
        h.csts().rdy(),
        "RDY drops only when the worker has reset the queues"
    );
    h.run();
    assert_eq!(h.csts(), Csts::new());
}

/// A controller whose enable failed: AQA = 0 (no admin queue entries), CC.EN = 1, one
/// worker pass; it shows CFS and not RDY.
fn failed_enable() -> Harness {
    let h = Harness::new();
    h.w32(r::AQA, 0);
    h.w64(r::ASQ, ASQ);
    h.w64(r::ACQ, ACQ);
    h.w32(r::CC, Harness::cc_enabled().into_bits());
    h.run();
    assert!(h.csts().cfs() && !h.csts().rdy());
    h
}

#[test]
fn enable_with_zero_admin_queue_size_sets_cfs() {
    let h = failed_enable();
    h.w32(r::CC, 0);
    h.run();
    assert!(!h.csts().cfs(), "a controller reset clears CFS");
}

/// A failed enable leaves RDY = 0 and CFS = 1; CC.EN = 0 must clear CFS before the worker
/// runs, since the host's wait for RDY = 0 is already over — and a new enable right after
/// must not read the old CFS. (The hostile guest case raced on this under load.)
#[test]
fn reset_of_a_failed_enable_clears_cfs_at_once() {
    let h = failed_enable();
    h.w32(r::CC, 0);
    assert_eq!(h.csts(), Csts::new(), "no worker pass needed");
    // Enable properly before the worker saw the reset: it resets, then enables.
    h.w32(r::AQA, 0x001f_001f);
    h.w32(r::CC, Harness::cc_enabled().into_bits());
    assert!(!h.csts().cfs(), "the old CFS must not show through");
    h.run();
    assert!(h.csts().rdy() && !h.csts().cfs());
}

#[test]
fn shutdown_notification_completes() {
    let mut h = Harness::new();
    h.enable();
    h.w32(
        r::CC,
        Harness::cc_enabled().with_shn(CC_SHN_NORMAL).into_bits(),
    );
    h.run();
    assert_eq!(h.csts().shst(), CSTS_SHST_COMPLETE);
}

#[test]
fn controller_reset_deletes_io_queues() {
    let mut h = Harness::new();
    h.ready();
    h.w32(r::CC, 0);
    h.run();
    h.enable();
    // Queue 1 is gone: creating it again succeeds.
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, IO_ENTRIES, 1, true, true)),
        Status::SUCCESS
    );
}

#[test]
fn device_reset_clears_registers_and_queues() {
    let mut h = Harness::new();
    h.ready();
    h.ctrl.reset();
    h.ctrl.set_bus_master(true);
    h.run();
    assert_eq!(h.csts(), Csts::new());
    assert_eq!(h.r32(r::CC), 0);
    assert_eq!(h.r32(r::AQA), 0);
    h.enable();
    assert_eq!(
        status(&h.create_sq(1, IO_SQ, IO_ENTRIES, 1, true)),
        Status::COMPLETION_QUEUE_INVALID
    );
}

#[test]
fn doorbell_write_asks_for_processing() {
    let mut h = Harness::new();
    h.enable();
    assert!(!h.ctrl.needs_processing());
    let c = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.submit_admin(&c);
    assert!(h.ctrl.needs_processing());
    assert!(h.ctrl.process());
    assert!(h.reap_admin().is_some());
}

#[test]
fn nothing_happens_without_bus_master() {
    let mut h = Harness::new();
    h.enable();
    h.ctrl.set_bus_master(false);
    let c = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.submit_admin(&c);
    h.run();
    assert!(h.reap_admin().is_none());
    h.ctrl.set_bus_master(true);
    h.run();
    assert!(h.reap_admin().is_some());
}

#[test]
fn bus_master_enable_asks_for_processing() {
    let mut h = Harness::new();
    h.enable();
    h.ctrl.set_bus_master(false);
    let c = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.submit_admin(&c);
    h.run();
    assert!(!h.ctrl.needs_processing());
    h.ctrl.set_bus_master(true);
    assert!(
        h.ctrl.needs_processing(),
        "queued work may run now: the host must wake its worker"
    );
    assert!(h.ctrl.process());
    assert!(h.reap_admin().is_some());
}

#[test]
fn only_doorbells_and_cc_writes_ask_for_processing() {
    let mut h = Harness::new();
    h.enable();
    assert!(!h.w32(r::INTMS, 1), "INTMS is no work for the worker");
    assert!(!h.w32(r::AQA, 0));
    assert!(!h.ctrl.bar_write(crate::MSIX_BAR, 0, &[1, 2, 3, 4]));
    assert!(!h.ctrl.needs_processing());
    assert!(h.w32(r::cq_head_doorbell(0, 0), 0), "a doorbell is");
    h.run();
    assert!(h.w32(r::CC, 0), "a CC.EN change is");
}

#[test]
fn function_reset_stops_bus_mastering_until_the_host_enables_it() {
    let mut h = Harness::new();
    h.enable();
    h.ctrl.reset();
    assert!(h.ctrl.needs_processing(), "the worker must drop the queues");
    h.enable();
    let c = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.submit_admin(&c);
    h.run();
    assert!(h.reap_admin().is_none(), "no DMA before Bus Master Enable");
    h.ctrl.set_bus_master(true);
    h.run();
    assert!(h.reap_admin().is_some());
}

#[test]
fn unclaimed_bar_reads_are_all_ones() {
    let h = Harness::new();
    let read = |bar: usize, off: u64, len: usize| {
        let mut b = vec![0x5a; len];
        h.ctrl.bar_read(bar, off, &mut b);
        b
    };
    let ones = |len: usize| vec![UNCLAIMED_READ; len];
    for bar in [1, 3, 5, 6] {
        assert_eq!(read(bar, 0, 4), ones(4), "BAR{bar} is not implemented");
    }
    assert_eq!(
        read(REG_BAR, crate::REG_BAR_SIZE - 2, 4),
        ones(4),
        "an access past BAR0's end"
    );
    assert_eq!(read(REG_BAR, u64::MAX - 1, 4), ones(4));
    assert_eq!(
        read(CMB_BAR, 0, 8),
        ones(8),
        "the CMB BAR has no address yet: nothing to read"
    );
    // Inside BAR0, reserved registers and the write-only doorbells read 0 (NVMe §3.1).
    assert_eq!(read(REG_BAR, 0x40, 4), vec![0; 4]);
    assert_eq!(read(REG_BAR, r::sq_tail_doorbell(0, 0), 4), vec![0; 4]);
}

// ---- identify ----

#[test]
fn identify_controller_reports_identity_and_capabilities() {
    let mut h = Harness::new();
    h.enable();
    let (s, data) = h.identify(Cns::CONTROLLER, 0);
    assert_eq!(s, Status::SUCCESS);
    let id = IdentifyController::read_from_bytes(&data).unwrap();
    assert_eq!(&id.sn[..16], b"P2PLAB-TEST-0001");
    assert_eq!(id.sn[16], b' ');
    assert_eq!(id.mdts, 9);
    assert!(id.oacs.doorbell_buffer_config());
    assert!(id.oncs.compare() && id.oncs.write_zeroes() && id.oncs.dataset_management());
    assert_eq!(id.vwc & 1, 1);
    assert_eq!(id.sgls.supported(), 1);
    assert_eq!(id.nn, 2);
    assert_eq!(id.sqes, 0x66);
    assert_eq!(id.cqes, 0x44);
    assert_eq!(id.ver, r::VS_1_4.into_bits());
    assert!(id
        .subnqn
        .starts_with(b"nqn.2024-01.io.p2plab:nvme:P2PLAB-TEST-0001\0"));
}

#[test]
fn identify_namespace_reports_size_and_lba_format() {
    let mut h = Harness::new();
    h.enable();
    let (s, data) = h.identify(Cns::NAMESPACE, 1);
    assert_eq!(s, Status::SUCCESS);
    let id = IdentifyNamespace::read_from_bytes(&data).unwrap();
    assert_eq!(id.nsze, NS_SIZE / 512);
    assert_eq!(id.ncap, id.nsze);
    assert_eq!(id.lbaf[usize::from(id.flbas & 0xf)].lbads(), 9);
    assert_ne!(id.nguid, [0; 16]);
}

#[test]
fn namespace_identifiers_are_unique_per_namespace() {
    let mut h = Harness::new();
    h.enable();
    let a = IdentifyNamespace::read_from_bytes(&h.identify(Cns::NAMESPACE, 1).1).unwrap();
    let b = IdentifyNamespace::read_from_bytes(&h.identify(Cns::NAMESPACE, 2).1).unwrap();
    assert_ne!(a.nguid, b.nguid);
    assert_ne!(a.eui64, b.eui64);
}

#[test]
fn identify_ns_descriptors_lists_eui64_nguid_uuid() {
    let mut h = Harness::new();
    h.enable();
    let (s, d) = h.identify(Cns::NAMESPACE_ID_DESCRIPTORS, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!((Nidt(d[0]), d[1]), (Nidt::EUI64, 8));
    assert_eq!((Nidt(d[12]), d[13]), (Nidt::NGUID, 16));
    assert_eq!((Nidt(d[32]), d[33]), (Nidt::UUID, 16));
    assert_eq!(d[52], 0, "list ends with a zero NIDT");
}

#[test]
fn identify_active_namespace_list_starts_after_nsid() {
    let mut h = Harness::new();
    h.enable();
    let (_, d) = h.identify(Cns::ACTIVE_NAMESPACES, 0);
    assert_eq!(&d[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, d) = h.identify(Cns::ACTIVE_NAMESPACES, 1);
    assert_eq!(&d[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn identify_unknown_namespace_is_invalid_namespace() {
    let mut h = Harness::new();
    h.enable();
    assert_eq!(
        h.identify(Cns::NAMESPACE, 3).0,
        Status::INVALID_NAMESPACE_OR_FORMAT
    );
    assert_eq!(
        h.identify(Cns::NAMESPACE, 0).0,
        Status::INVALID_NAMESPACE_OR_FORMAT
    );
    assert_eq!(h.identify(Cns(0x77), 0).0, Status::INVALID_FIELD_IN_COMMAND);
}

#[test]
fn identify_with_4k_lba_namespace() {
    let files = vec![TempFile::new(NS_SIZE)];
    let cfg = config_with("P2PLAB-4K", &files, 4096);
    let mem = Arc::new(TestDmaSpace::new(MEM_BASE, MEM_SIZE));
    let irq = Arc::new(RecordingInterrupts::default());
    let ctrl = NvmeController::new(cfg, mem.clone(), irq.clone()).unwrap();
    let mut h = Harness::new();
    h.ctrl = ctrl;
    h.mem = mem;
    h.irq = irq;
    h.files = files;
    h.ctrl.set_bus_master(true);
    h.enable();
    let id = IdentifyNamespace::read_from_bytes(&h.identify(Cns::NAMESPACE, 1).1).unwrap();
    assert_eq!(id.nsze, NS_SIZE / 4096);
    assert_eq!(id.lbaf[0].lbads(), 12);
}

// ---- features ----

#[test]
fn number_of_queues_reports_the_maximum() {
    let mut h = Harness::new();
    h.enable();
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::NUMBER_OF_QUEUES.0);
    c.cdw11 = NumberOfQueues::new().with_nsq(63).with_ncq(63).into_bits();
    let cqe = h.admin_ok(c);
    let got = NumberOfQueues::from_bits(cqe.dw0);
    assert_eq!((got.nsq(), got.ncq()), (3, 3)); // 4 queue pairs, 0's based
}

#[test]
fn timestamp_round_trips() {
    let mut h = Harness::new();
    h.enable();
    h.mem.poke(DATA, &1_700_000_000_000u64.to_le_bytes());
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::TIMESTAMP.0);
    c.dptr[0] = DATA;
    h.admin_ok(c);
    let mut c = h.cmd(AdminOpcode::GET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::TIMESTAMP.0);
    c.dptr[0] = DATA2;
    h.admin_ok(c);
    let ts = u64::from_le_bytes(h.mem.peek(DATA2, 8).try_into().unwrap()) & 0xffff_ffff_ffff;
    assert!((1_700_000_000_000..1_700_000_010_000).contains(&ts));
}

#[test]
fn volatile_write_cache_and_arbitration_are_stored() {
    let mut h = Harness::new();
    h.enable();
    for (fid, v) in [
        (FeatureId::VOLATILE_WRITE_CACHE, 0),
        (FeatureId::ARBITRATION, 0x0302_0103),
    ] {
        let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
        c.cdw10 = u32::from(fid.0);
        c.cdw11 = v;
        h.admin_ok(c);
        let mut c = h.cmd(AdminOpcode::GET_FEATURES.0);
        c.cdw10 = u32::from(fid.0);
        assert_eq!(h.admin_ok(c).dw0, v);
    }
}

#[test]
fn saving_a_feature_is_refused() {
    let mut h = Harness::new();
    h.enable();
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::ARBITRATION.0) | (1 << 31);
    assert_eq!(status(&h.admin(c)), Status::FEATURE_IDENTIFIER_NOT_SAVEABLE);
}

// ---- queues ----

#[test]
fn create_queue_errors_use_the_spec_statuses() {
    let mut h = Harness::new();
    h.enable();
    assert_eq!(
        status(&h.create_cq(0, IO_CQ, 16, 1, true, true)),
        Status::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&h.create_cq(9, IO_CQ, 16, 1, true, true)),
        Status::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 1, 1, true, true)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 2000, 1, true, true)),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 16, 1, true, false)),
        Status::INVALID_FIELD_IN_COMMAND
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 16, 99, true, true)),
        Status::INVALID_INTERRUPT_VECTOR
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ + 8, 16, 1, true, true)),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        status(&h.create_sq(1, IO_SQ, 16, 1, true)),
        Status::COMPLETION_QUEUE_INVALID
    );
    assert_eq!(
        status(&h.create_sq(1, IO_SQ, 16, 0, true)),
        Status::COMPLETION_QUEUE_INVALID
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 16, 1, true, true)),
        Status::SUCCESS
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, 16, 1, true, true)),
        Status::INVALID_QUEUE_IDENTIFIER
    );
    assert_eq!(
        status(&h.create_sq(1, IO_SQ, 16, 1, false)),
        Status::INVALID_FIELD_IN_COMMAND
    );
    assert_eq!(status(&h.create_sq(1, IO_SQ, 16, 1, true)), Status::SUCCESS);
}

#[test]
fn cq_with_sq_cannot_be_deleted_before_the_sq() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.cmd(AdminOpcode::DELETE_IO_CQ.0);
    c.cdw10 = 1;
    assert_eq!(status(&h.admin(c)), Status::INVALID_QUEUE_DELETION);
    let mut c = h.cmd(AdminOpcode::DELETE_IO_SQ.0);
    c.cdw10 = 1;
    h.admin_ok(c);
    let mut c = h.cmd(AdminOpcode::DELETE_IO_CQ.0);
    c.cdw10 = 1;
    h.admin_ok(c);
    let mut c = h.cmd(AdminOpcode::DELETE_IO_SQ.0);
    c.cdw10 = 1;
    assert_eq!(status(&h.admin(c)), Status::INVALID_QUEUE_IDENTIFIER);
}

#[test]
fn completions_raise_the_cq_vector() {
    let mut h = Harness::new();
    h.ready();
    let ka = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.admin_ok(ka);
    assert_eq!(h.irq.take(), vec![0], "admin CQ uses vector 0");
    let c = h.cmd(NvmOpcode::FLUSH.0);
    let mut c = c;
    c.nsid = 1;
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.irq.take(), vec![1]);
}

/// Set Features (`fid`, CDW11 `v`) on the admin queue; the admin CQ's interrupt is
/// taken away so a test sees only the I/O CQ's.
fn set_feature(h: &mut Harness, fid: FeatureId, v: u32) {
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(fid.0);
    c.cdw11 = v;
    h.admin_ok(c);
    h.irq.take();
}

/// `n` Flushes submitted with one doorbell write and processed in one pass.
fn flushes(h: &mut Harness, n: usize) {
    for _ in 0..n {
        let mut c = h.cmd(NvmOpcode::FLUSH.0);
        c.nsid = 1;
        h.submit_io(&c, false);
    }
    h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    h.run();
    for _ in 0..n {
        assert_eq!(status(&h.reap_io().expect("a completion")), Status::SUCCESS);
    }
}

#[test]
fn interrupt_coalescing_holds_the_vector_until_threshold_entries() {
    let mut h = Harness::new();
    h.ready();
    // THR 3 (four entries per interrupt, 0's based), TIME 255 × 100 µs.
    set_feature(&mut h, FeatureId::INTERRUPT_COALESCING, 0xff03);
    flushes(&mut h, 3);
    assert!(h.irq.take().is_empty(), "3 of 4 entries: held");
    assert!(
        h.ctrl.arm_notifications(),
        "a held vector keeps the worker polling"
    );
    flushes(&mut h, 1);
    assert_eq!(
        h.irq.take(),
        vec![1],
        "the 4th entry releases one interrupt"
    );
    flushes(&mut h, 5);
    assert_eq!(h.irq.take(), vec![1], "5 in one pass: at least THR + 1");
    assert!(
        !h.ctrl.arm_notifications(),
        "nothing held: the worker may sleep"
    );
    // The admin CQ is never held.
    let ka = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.admin_ok(ka);
    assert_eq!(h.irq.take(), vec![0]);
}

#[test]
fn interrupt_coalescing_releases_a_held_vector_after_its_time() {
    let mut h = Harness::new();
    h.ready();
    // THR 255 entries, TIME 1 (100 µs).
    set_feature(&mut h, FeatureId::INTERRUPT_COALESCING, 0x01ff);
    flushes(&mut h, 1);
    assert!(h.irq.take().is_empty());
    std::thread::sleep(std::time::Duration::from_micros(150));
    h.ctrl.process();
    assert_eq!(h.irq.take(), vec![1], "released by a pass after TIME");
}

#[test]
fn interrupt_coalescing_is_off_with_thr_or_time_zero_and_when_turned_off() {
    for v in [0x0000, 0x0003, 0xff00] {
        let mut h = Harness::new();
        h.ready();
        set_feature(&mut h, FeatureId::INTERRUPT_COALESCING, v);
        flushes(&mut h, 1);
        assert_eq!(h.irq.take(), vec![1], "coalescing {v:#06x} is off");
    }
    // Held, then coalescing turned off: the next pass releases it.
    let mut h = Harness::new();
    h.ready();
    set_feature(&mut h, FeatureId::INTERRUPT_COALESCING, 0xff03);
    flushes(&mut h, 1);
    assert!(h.irq.take().is_empty());
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::INTERRUPT_COALESCING.0);
    h.admin_ok(c);
    assert_eq!(
        h.irq.take(),
        vec![0, 1],
        "released in the pass that turned it off"
    );
}

#[test]
fn coalescing_disable_exempts_a_vector_and_reads_back() {
    let mut h = Harness::new();
    h.ready();
    set_feature(&mut h, FeatureId::INTERRUPT_COALESCING, 0xff03);
    set_feature(
        &mut h,
        FeatureId::INTERRUPT_VECTOR_CONFIGURATION,
        InterruptVectorConfiguration::new()
            .with_iv(1)
            .with_cd(true)
            .into_bits(),
    );
    flushes(&mut h, 1);
    assert_eq!(h.irq.take(), vec![1], "CD: not held");
    let get = |h: &mut Harness, iv: u16| {
        let mut c = h.cmd(AdminOpcode::GET_FEATURES.0);
        c.cdw10 = u32::from(FeatureId::INTERRUPT_VECTOR_CONFIGURATION.0);
        c.cdw11 = u32::from(iv);
        InterruptVectorConfiguration::from_bits(h.admin_ok(c).dw0)
    };
    let v1 = get(&mut h, 1);
    assert_eq!((v1.iv(), v1.cd()), (1, true));
    assert!(!get(&mut h, 0).cd());
    // CD cleared again: held once more.
    set_feature(&mut h, FeatureId::INTERRUPT_VECTOR_CONFIGURATION, 1);
    flushes(&mut h, 1);
    assert!(h.irq.take().is_empty());
    // A vector the controller does not have is an invalid field, set or get.
    let mut c = h.cmd(AdminOpcode::GET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::INTERRUPT_VECTOR_CONFIGURATION.0);
    c.cdw11 = 0xffff;
    assert_eq!(status(&h.admin(c)), Status::INVALID_FIELD_IN_COMMAND);
    // A Controller Reset returns both features to their defaults.
    h.w32(r::CC, 0);
    h.run();
    h.enable();
    assert!(!get(&mut h, 1).cd());
    let mut c = h.cmd(AdminOpcode::GET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::INTERRUPT_COALESCING.0);
    assert_eq!(h.admin_ok(c).dw0, 0);
}

#[test]
fn cq_without_ien_raises_nothing() {
    let mut h = Harness::new();
    h.enable();
    h.create_cq(1, IO_CQ, IO_ENTRIES, 1, false, true);
    h.create_sq(1, IO_SQ, IO_ENTRIES, 1, true);
    h.irq.take();
    let mut c = h.cmd(NvmOpcode::FLUSH.0);
    c.nsid = 1;
    assert_eq!(h.io(c), Status::SUCCESS);
    assert!(h.irq.take().is_empty());
}

#[test]
fn intms_defers_vector_until_intmc() {
    let mut h = Harness::new();
    h.enable();
    h.irq.take();
    h.w32(r::INTMS, 1);
    assert_eq!(h.r32(r::INTMS), 1);
    let ka = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.admin_ok(ka);
    assert!(h.irq.take().is_empty());
    h.w32(r::INTMC, 1);
    assert_eq!(h.irq.take(), vec![0]);
}

#[test]
fn controller_reset_clears_intms() {
    // A driver that masked vectors and reset the controller must not leave the next
    // driver without interrupts (§7.3.2: every register but AQA/ASQ/ACQ is reset).
    let mut h = Harness::new();
    h.enable();
    h.w32(r::INTMS, u32::MAX);
    h.w32(r::CC, 0);
    h.run();
    assert_eq!(h.r32(r::INTMS), 0);
    h.enable();
    h.irq.take();
    let ka = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.admin_ok(ka);
    assert_eq!(h.irq.take(), vec![0]);
}

#[test]
fn intms_is_ignored_while_msix_is_in_use() {
    // §3.1.3: INTMS/INTMC mask pin-based and MSI interrupts; MSI-X has its own mask. A
    // guest that set INTMS with the controller disabled cannot wedge an MSI-X driver.
    let mut h = Harness::new();
    h.w32(r::INTMS, u32::MAX);
    h.irq.msix.store(true, Ordering::Relaxed);
    h.enable();
    h.irq.take();
    let ka = h.cmd(AdminOpcode::KEEP_ALIVE.0);
    h.admin_ok(ka);
    assert_eq!(h.irq.take(), vec![0]);
}

#[test]
fn full_cq_holds_back_commands_until_the_head_moves() {
    let mut h = Harness::new();
    h.enable();
    h.create_cq(1, IO_CQ, 2, 1, true, true); // room for one entry
    h.create_sq(1, IO_SQ, IO_ENTRIES, 1, true);
    for _ in 0..3 {
        let mut c = h.cmd(NvmOpcode::FLUSH.0);
        c.nsid = 1;
        h.submit_io(&c, true);
    }
    h.run();
    let cqe = Completion::read_from_bytes(&h.mem.peek(IO_CQ, 16)).unwrap();
    assert!(cqe.status.p());
    let second = Completion::read_from_bytes(&h.mem.peek(IO_CQ + 16, 16)).unwrap();
    assert!(
        !second.status.p(),
        "second slot stays free: the queue is full"
    );
    h.w32(r::cq_head_doorbell(1, 0), 1);
    h.run();
    let second = Completion::read_from_bytes(&h.mem.peek(IO_CQ + 16, 16)).unwrap();
    assert!(second.status.p());
}

// ---- I/O ----

#[test]
fn write_then_read_round_trips_through_the_file() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(8192, 7);
    h.mem.poke(DATA, &data);
    let c = h.rw(NvmOpcode::WRITE, 16, 16, DATA, DATA + 4096);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.file_bytes(0, 16 * 512, 8192), data);
    let c = h.rw(NvmOpcode::READ, 16, 16, DATA2, DATA2 + 4096);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA2, 8192), data);
}

#[test]
fn read_with_prp1_offset_spans_pages() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(4096, 3);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    // 4 KiB starting 512 bytes into a page: PRP1 covers 3.5 KiB, PRP2 the rest.
    let c = h.rw(NvmOpcode::READ, 0, 8, DATA + 512, DATA2);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA + 512, 3584), &data[..3584]);
    assert_eq!(h.mem.peek(DATA2, 512), &data[3584..]);
}

#[test]
fn read_with_prp_list() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(16384, 9);
    h.files[0].file.write_all_at(&data, 4096).unwrap();
    // Pages scattered backwards so nothing coalesces by accident.
    let pages = [DATA + 0x3000, DATA + 0x2000, DATA + 0x1000];
    let list: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    h.mem.poke(LISTS, &list);
    let c = h.rw(NvmOpcode::READ, 8, 32, DATA2, LISTS);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA2, 4096), &data[..4096]);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(h.mem.peek(*p, 4096), &data[4096 * (i + 1)..4096 * (i + 2)]);
    }
}

#[test]
fn prp_list_chains_at_the_last_entry_of_a_page() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(5 * 4096, 11);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    // The first list starts two entries before the end of its page: one data entry,
    // then the pointer to the next list page.
    let first = LISTS + 4096 - 16;
    let second = LISTS + 0x2000;
    h.mem.poke(first, &(DATA + 0x1000).to_le_bytes());
    h.mem.poke(first + 8, &second.to_le_bytes());
    let rest: Vec<u8> = [DATA + 0x2000, DATA + 0x3000, DATA + 0x4000]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    h.mem.poke(second, &rest);
    let c = h.rw(NvmOpcode::READ, 0, 40, DATA, first);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA, 5 * 4096), data);
}

#[test]
fn full_mdts_transfer_with_prp_list() {
    let mut h = Harness::new();
    h.ready();
    let len = 2usize << 20;
    let data = pattern(len, 5);
    h.mem.poke(DATA, &data);
    let list: Vec<u8> = (1..512u64)
        .flat_map(|i| (DATA + i * 4096).to_le_bytes())
        .collect();
    h.mem.poke(LISTS, &list);
    let c = h.rw(NvmOpcode::WRITE, 0, (len / 512) as u32, DATA, LISTS);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.file_bytes(0, 0, len), data);
}

#[test]
fn transfer_beyond_mdts_is_invalid_field() {
    let mut h = Harness::new();
    h.ready();
    let c = h.rw(NvmOpcode::READ, 0, 4097, DATA, LISTS);
    assert_eq!(h.io(c), Status::INVALID_FIELD_IN_COMMAND);
}

#[test]
fn prp_entry_with_offset_is_prp_offset_invalid() {
    let mut h = Harness::new();
    h.ready();
    let c = h.rw(NvmOpcode::READ, 0, 16, DATA, DATA2 + 8);
    assert_eq!(h.io(c), Status::PRP_OFFSET_INVALID);
    h.mem.poke(LISTS, &(DATA + 4096).to_le_bytes());
    h.mem.poke(LISTS + 8, &(DATA + 0x2000 + 4).to_le_bytes());
    let c = h.rw(NvmOpcode::READ, 0, 24, DATA, LISTS);
    assert_eq!(h.io(c), Status::PRP_OFFSET_INVALID);
    let c = h.rw(NvmOpcode::READ, 0, 1, DATA + 2, 0);
    assert_eq!(h.io(c), Status::PRP_OFFSET_INVALID);
}

#[test]
fn unmapped_prp_is_data_transfer_error() {
    let mut h = Harness::new();
    h.ready();
    let c = h.rw(NvmOpcode::READ, 0, 8, 0xdead_0000_0000, 0);
    assert_eq!(h.io(c), Status::DATA_TRANSFER_ERROR);
    let c = h.rw(NvmOpcode::WRITE, 0, 16, DATA, 0xffff_ffff_ffff_f000);
    assert_eq!(h.io(c), Status::DATA_TRANSFER_ERROR);
}

#[test]
fn lba_beyond_namespace_is_out_of_range() {
    let mut h = Harness::new();
    h.ready();
    let c = h.rw(NvmOpcode::READ, NS_SIZE / 512 - 1, 2, DATA, DATA2);
    assert_eq!(h.io(c), Status::LBA_OUT_OF_RANGE);
    let c = h.rw(NvmOpcode::READ, u64::MAX, 1, DATA, 0);
    assert_eq!(h.io(c), Status::LBA_OUT_OF_RANGE);
}

#[test]
fn unknown_namespace_and_opcode_are_rejected() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.rw(NvmOpcode::READ, 0, 1, DATA, 0);
    c.nsid = 9;
    assert_eq!(h.io(c), Status::INVALID_NAMESPACE_OR_FORMAT);
    let mut c = h.cmd(0x7f);
    c.nsid = 1;
    assert_eq!(h.io(c), Status::INVALID_COMMAND_OPCODE);
}

// ---- data safety: Flush, FUA, the volatile write cache ----

fn flush(h: &mut Harness, nsid: u32) -> Status {
    let mut c = h.cmd(NvmOpcode::FLUSH.0);
    c.nsid = nsid;
    h.io(c)
}

fn set_write_cache(h: &mut Harness, enabled: bool) {
    let mut c = h.cmd(AdminOpcode::SET_FEATURES.0);
    c.cdw10 = u32::from(FeatureId::VOLATILE_WRITE_CACHE.0);
    c.cdw11 = u32::from(enabled);
    h.admin_ok(c);
}

#[test]
fn flush_fdatasyncs_its_namespace_or_every_one() {
    let mut h = Harness::new();
    h.ready();
    assert_eq!(flush(&mut h, 1), Status::SUCCESS);
    assert_eq!(h.ctrl.namespace_syncs(), [1, 0]);
    assert_eq!(flush(&mut h, 0xffff_ffff), Status::SUCCESS);
    assert_eq!(
        h.ctrl.namespace_syncs(),
        [2, 1],
        "broadcast: every namespace"
    );
    assert_eq!(flush(&mut h, 3), Status::INVALID_NAMESPACE_OR_FORMAT);
    assert_eq!(h.ctrl.namespace_syncs(), [2, 1]);
}

#[test]
fn fua_writes_are_durable_before_they_complete_and_plain_ones_wait_for_flush() {
    let mut h = Harness::new();
    h.ready();
    h.mem.poke(DATA, &[0x5a; 512]);
    let c = h.rw(NvmOpcode::WRITE, 3, 1, DATA, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(
        h.ctrl.namespace_syncs(),
        [0, 0],
        "write-back cache: no sync"
    );
    let mut c = h.rw(NvmOpcode::WRITE, 4, 1, DATA, 0);
    c.cdw12 = RwCdw12::from_bits(c.cdw12).with_fua(true).into_bits();
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(
        h.ctrl.namespace_syncs(),
        [1, 0],
        "FUA: synced before completion"
    );
    assert_eq!(h.file_bytes(0, 4 * 512, 512), vec![0x5a; 512]);
    let mut c = h.rw(NvmOpcode::WRITE_ZEROES, 4, 1, 0, 0);
    c.cdw12 = RwCdw12::from_bits(c.cdw12).with_fua(true).into_bits();
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(
        h.ctrl.namespace_syncs(),
        [2, 0],
        "Write Zeroes with FUA too"
    );
}

#[test]
fn writes_are_write_through_while_the_host_disables_the_write_cache() {
    let mut h = Harness::new();
    h.ready();
    set_write_cache(&mut h, false);
    h.mem.poke(DATA, &[0xa5; 512]);
    let c = h.rw(NvmOpcode::WRITE, 0, 1, DATA, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.ctrl.namespace_syncs(), [1, 0]);
    let c = h.rw(NvmOpcode::WRITE_ZEROES, 0, 1, 0, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(h.ctrl.namespace_syncs(), [2, 0]);
    set_write_cache(&mut h, true);
    let c = h.rw(NvmOpcode::WRITE, 0, 1, DATA, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(
        h.ctrl.namespace_syncs(),
        [2, 0],
        "cache back on: write-back"
    );
}

#[test]
fn a_normal_shutdown_syncs_every_namespace() {
    let mut h = Harness::new();
    h.enable();
    h.w32(
        r::CC,
        Harness::cc_enabled().with_shn(CC_SHN_NORMAL).into_bits(),
    );
    h.run();
    assert_eq!(h.csts().shst(), CSTS_SHST_COMPLETE);
    assert_eq!(h.ctrl.namespace_syncs(), [1, 1]);
}

#[test]
fn a_failed_fdatasync_is_a_write_fault() {
    use std::os::unix::fs::OpenOptionsExt;
    // An O_PATH descriptor: fstat works (the namespace opens), fdatasync fails (EBADF).
    let path = TempFile::new(NS_SIZE);
    let mut h = Harness::with(|cfg| {
        cfg.namespaces[1].file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path.path)
            .unwrap();
    });
    h.ready();
    assert_eq!(flush(&mut h, 1), Status::SUCCESS);
    assert_eq!(flush(&mut h, 2), Status::WRITE_FAULT);
    assert_eq!(flush(&mut h, 0xffff_ffff), Status::WRITE_FAULT);
}

#[test]
fn compare_matches_and_mismatches() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(1024, 1);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    h.mem.poke(DATA, &data);
    let c = h.rw(NvmOpcode::COMPARE, 0, 2, DATA, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    h.mem.poke(DATA + 1000, &[0]);
    let c = h.rw(NvmOpcode::COMPARE, 0, 2, DATA, 0);
    assert_eq!(h.io(c), Status::COMPARE_FAILURE);
}

#[test]
fn write_zeroes_zeroes_the_range() {
    let mut h = Harness::new();
    h.ready();
    h.files[0].file.write_all_at(&[0xff; 4096], 0).unwrap();
    let c = h.rw(NvmOpcode::WRITE_ZEROES, 2, 4, 0, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    let got = h.file_bytes(0, 0, 4096);
    assert_eq!(&got[..1024], &[0xff; 1024]);
    assert_eq!(&got[1024..3072], &[0; 2048]);
    assert_eq!(&got[3072..], &[0xff; 1024]);
    assert!(h.dealloc.calls.lock().unwrap().is_empty());
}

#[test]
fn write_zeroes_with_deac_punches_a_hole() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.rw(NvmOpcode::WRITE_ZEROES, 8, 8, 0, 0);
    c.cdw12 = RwCdw12::from_bits(c.cdw12).with_deac(true).into_bits();
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(*h.dealloc.calls.lock().unwrap(), vec![(4096, 4096)]);
}

#[test]
fn dsm_deallocate_punches_each_range() {
    let mut h = Harness::new();
    h.ready();
    let ranges = [
        DsmRange {
            context_attributes: 0,
            nlb: 8,
            slba: 0,
        },
        DsmRange {
            context_attributes: 0,
            nlb: 16,
            slba: 100,
        },
    ];
    h.mem.poke(DATA, ranges.as_bytes());
    let mut c = h.cmd(NvmOpcode::DATASET_MANAGEMENT.0);
    c.nsid = 1;
    c.dptr[0] = DATA;
    c.cdw10 = 1; // two ranges
    c.cdw11 = 1 << 2; // AD
    assert_eq!(h.io(c), Status::SUCCESS);
    assert_eq!(
        *h.dealloc.calls.lock().unwrap(),
        vec![(0, 4096), (51200, 8192)]
    );
}

#[test]
fn dsm_range_beyond_namespace_is_out_of_range() {
    let mut h = Harness::new();
    h.ready();
    let r = DsmRange {
        context_attributes: 0,
        nlb: 8,
        slba: NS_SIZE / 512,
    };
    h.mem.poke(DATA, r.as_bytes());
    let mut c = h.cmd(NvmOpcode::DATASET_MANAGEMENT.0);
    c.nsid = 1;
    c.dptr[0] = DATA;
    c.cdw11 = 1 << 2;
    assert_eq!(h.io(c), Status::LBA_OUT_OF_RANGE);
}

#[test]
fn smart_log_counts_data_units() {
    let mut h = Harness::new();
    h.ready();
    // 2000 sectors written = 2 data units; 1 sector read = 1 (rounded up).
    let list: Vec<u8> = (1..250u64)
        .flat_map(|i| (DATA + i * 4096).to_le_bytes())
        .collect();
    h.mem.poke(LISTS, &list);
    let c = h.rw(NvmOpcode::WRITE, 0, 2000, DATA, LISTS);
    assert_eq!(h.io(c), Status::SUCCESS);
    let c = h.rw(NvmOpcode::READ, 0, 1, DATA, 0);
    assert_eq!(h.io(c), Status::SUCCESS);
    let (s, d) = h.get_log(LogPageId::SMART_HEALTH, 512, 0);
    assert_eq!(s, Status::SUCCESS);
    let log = SmartHealthLog::read_from_bytes(&d).unwrap();
    assert_eq!(u128::from_le_bytes(log.data_units_written), 2);
    assert_eq!(u128::from_le_bytes(log.data_units_read), 1);
    assert_eq!(u128::from_le_bytes(log.host_write_commands), 1);
    assert_eq!(u128::from_le_bytes(log.host_read_commands), 1);
}

// ---- SGL ----

fn sgl_read(h: &mut Harness, sgl: SglDescriptor, nlb: u32) -> Status {
    let mut c = h.rw(NvmOpcode::READ, 0, nlb, 0, 0);
    c.cdw0 = c.cdw0.with_psdt(PSDT_SGL_MPTR_CONTIG);
    c.dptr = sgl.to_dptr();
    h.io(c)
}

#[test]
fn sgl_single_data_block() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(1024, 21);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::DATA_BLOCK, DATA + 3, 1024),
        2,
    );
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA + 3, 1024), data);
}

#[test]
fn sgl_segments_chain_to_last_segment_with_bit_bucket() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(2048, 23);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    let seg2 = LISTS + 0x1000;
    let first = [
        SglDescriptor::new(SglDescriptorType::DATA_BLOCK, DATA, 512),
        SglDescriptor::new(SglDescriptorType::LAST_SEGMENT, seg2, 32),
    ];
    let last = [
        SglDescriptor::new(SglDescriptorType::BIT_BUCKET, 0, 512),
        SglDescriptor::new(SglDescriptorType::DATA_BLOCK, DATA2, 1024),
    ];
    h.mem.poke(LISTS, first.as_bytes());
    h.mem.poke(seg2, last.as_bytes());
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::SEGMENT, LISTS, 32),
        4,
    );
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(h.mem.peek(DATA, 512), &data[..512]);
    assert_eq!(h.mem.peek(DATA2, 1024), &data[1024..]);
}

#[test]
fn sgl_bit_bucket_on_write_is_rejected() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.rw(NvmOpcode::WRITE, 0, 1, 0, 0);
    c.cdw0 = c.cdw0.with_psdt(PSDT_SGL_MPTR_CONTIG);
    c.dptr = SglDescriptor::new(SglDescriptorType::BIT_BUCKET, 0, 512).to_dptr();
    assert_eq!(h.io(c), Status::SGL_DESCRIPTOR_TYPE_INVALID);
}

#[test]
fn sgl_keyed_descriptor_is_rejected() {
    let mut h = Harness::new();
    h.ready();
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::KEYED_DATA_BLOCK, DATA, 512),
        1,
    );
    assert_eq!(s, Status::SGL_DESCRIPTOR_TYPE_INVALID);
}

#[test]
fn sgl_length_mismatch_is_data_sgl_length_invalid() {
    let mut h = Harness::new();
    h.ready();
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::DATA_BLOCK, DATA, 100),
        1,
    );
    assert_eq!(s, Status::DATA_SGL_LENGTH_INVALID);
}

#[test]
fn sgl_segment_inside_last_segment_is_invalid() {
    let mut h = Harness::new();
    h.ready();
    let list = [SglDescriptor::new(SglDescriptorType::SEGMENT, LISTS, 16)];
    h.mem.poke(LISTS, list.as_bytes());
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::LAST_SEGMENT, LISTS, 16),
        1,
    );
    assert_eq!(s, Status::INVALID_SGL_SEGMENT_DESCRIPTOR);
}

#[test]
fn sgl_self_referencing_segment_terminates() {
    let mut h = Harness::new();
    h.ready();
    // A Segment whose only descriptor points back at itself: bounded by the descriptor
    // limit, never an endless loop.
    let list = [SglDescriptor::new(SglDescriptorType::SEGMENT, LISTS, 16)];
    h.mem.poke(LISTS, list.as_bytes());
    let s = sgl_read(
        &mut h,
        SglDescriptor::new(SglDescriptorType::SEGMENT, LISTS, 16),
        1,
    );
    assert_eq!(s, Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
}

// ---- CMB ----

fn cmb_regs(h: &Harness) -> (Cmbloc, Cmbsz, Cmbmsc, Cmbsts) {
    (
        Cmbloc::from_bits(h.r32(r::CMBLOC)),
        Cmbsz::from_bits(h.r32(r::CMBSZ)),
        Cmbmsc::from_bits(h.r64(r::CMBMSC)),
        Cmbsts::from_bits(h.r32(r::CMBSTS)),
    )
}

/// What Linux's nvme_map_cmb does: CRE, read CMBLOC/CMBSZ, then CBA|CMSE|CRE with the
/// high dword written first.
fn linux_map_cmb(h: &Harness, cba: u64) {
    h.w32(r::CMBMSC, 1);
    let v = cba | 0b11;
    h.w32(r::CMBMSC + 4, (v >> 32) as u32);
    h.w32(r::CMBMSC, v as u32);
}

#[test]
fn cmb_registers_read_zero_until_cre() {
    let h = Harness::new();
    let (loc, sz, _, _) = cmb_regs(&h);
    assert_eq!((loc.into_bits(), sz.into_bits()), (0, 0));
    h.w32(r::CMBMSC, 1);
    let (loc, sz, _, _) = cmb_regs(&h);
    assert_eq!(loc.bir() as usize, CMB_BAR);
    assert_eq!(loc.ofst(), 0);
    assert!(sz.sqs() && sz.lists() && sz.rds() && sz.wds() && !sz.cqs());
    assert_eq!(sz.szu(), r::CMBSZ_SZU_1M);
    assert_eq!(u64::from(sz.sz()) * r::cmbsz_unit_bytes(sz.szu()), CMB_SIZE);
}

#[test]
fn cmb_cba_must_match_the_bar_address() {
    let h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR + 0x20_0000);
    let (_, _, msc, sts) = cmb_regs(&h);
    assert!(msc.cmse());
    assert!(sts.cbai());
    linux_map_cmb(&h, CMB_ADDR);
    let (_, _, msc, sts) = cmb_regs(&h);
    assert_eq!(msc.cba_addr(), CMB_ADDR);
    assert!(!sts.cbai());
    // The guest moves the BAR: the programmed CBA no longer matches.
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR + 0x40_0000));
    assert!(cmb_regs(&h).3.cbai());
}

#[test]
fn cmbmsc_survives_controller_reset() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    h.enable();
    h.w32(r::CC, 0);
    h.run();
    let (_, sz, msc, sts) = cmb_regs(&h);
    assert!(msc.cre() && msc.cmse() && !sts.cbai());
    assert_eq!(msc.cba_addr(), CMB_ADDR);
    assert_ne!(sz.into_bits(), 0);
    h.ctrl.reset();
    assert!(
        Cmbmsc::from_bits(h.r64(r::CMBMSC)).cmse(),
        "DEVICE_RESET keeps CMBMSC too"
    );
}

#[test]
fn function_level_reset_deletes_queues_clears_cc_csts_and_keeps_cmbmsc() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    h.ready();
    h.w32(r::INTMS, 1);
    h.ctrl.bar_write(crate::MSIX_BAR, 0, &[0xaa; 16]);
    // A command the driver queued before the FLR must never run after it.
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    h.submit_io(&f, true);
    h.ctrl.reset();
    h.ctrl.set_bus_master(true);
    h.run();
    assert!(h.reap_io().is_none(), "the queued command was dropped");
    assert_eq!(h.csts(), Csts::new());
    for reg in [r::CC, r::AQA, r::INTMS] {
        assert_eq!(h.r32(reg), 0, "register {reg:#x} after FLR");
    }
    let mut msix = [0xff; 16];
    h.ctrl.bar_read(crate::MSIX_BAR, 0, &mut msix);
    assert_eq!(msix, [0; 16], "MSI-X bytes back to power-on");
    // CMBMSC survives, as across a Controller Reset (Linux writes it once per probe).
    let (_, sz, msc, sts) = cmb_regs(&h);
    assert!(msc.cre() && msc.cmse() && !sts.cbai());
    assert_eq!(msc.cba_addr(), CMB_ADDR);
    assert_ne!(sz.into_bits(), 0);
    // The I/O queues are gone: the driver's re-init creates them afresh.
    h.enable();
    assert_eq!(
        status(&h.create_sq(1, IO_SQ, IO_ENTRIES, 1, true)),
        Status::COMPLETION_QUEUE_INVALID
    );
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, IO_ENTRIES, 1, true, true)),
        Status::SUCCESS
    );
}

#[test]
fn sq_and_data_in_the_cmb_work_through_the_dma_space() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    h.enable();
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, IO_ENTRIES, 1, true, true)),
        Status::SUCCESS
    );
    let sq_in_cmb = CMB_ADDR;
    assert_eq!(
        status(&h.create_sq(1, sq_in_cmb, IO_ENTRIES, 1, true)),
        Status::SUCCESS
    );
    let data = pattern(4096, 33);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    let c = h.rw(NvmOpcode::READ, 0, 8, CMB_ADDR + 0x10_0000, 0);
    h.mem.poke(sq_in_cmb, c.as_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), 1);
    h.run();
    let cqe = h.reap_io().expect("completion");
    assert_eq!(status(&cqe), Status::SUCCESS);
    assert_eq!(h.mem.peek(CMB_ADDR + 0x10_0000, 4096), data);
}

#[test]
fn cq_in_the_cmb_is_invalid_use_of_cmb() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    h.enable();
    assert_eq!(
        status(&h.create_cq(1, CMB_ADDR + 0x1000, 16, 1, true, true)),
        Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER
    );
}

#[test]
fn sq_straddling_an_edge_of_the_cmb_is_invalid_use_of_cmb() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    h.enable();
    assert_eq!(
        status(&h.create_cq(1, IO_CQ, IO_ENTRIES, 1, true, true)),
        Status::SUCCESS
    );
    // 128 entries (8 KiB) from the CMB's last page: the second half lies past its end,
    // where the controller would fetch whatever the bus has there.
    let end = CMB_ADDR + CMB_SIZE;
    assert_eq!(
        status(&h.create_sq(1, end - 0x1000, 128, 1, true)),
        Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER
    );
    // Starting below the CMB and running into it.
    assert_eq!(
        status(&h.create_sq(1, CMB_ADDR - 0x1000, 128, 1, true)),
        Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER
    );
    // Wholly inside (ending at the last byte) is fine.
    assert_eq!(
        status(&h.create_sq(1, end - 0x2000, 128, 1, true)),
        Status::SUCCESS
    );
}

/// Admin queue attributes and addresses, then CC.EN.
fn enable_admin_at(h: &Harness, asq: u64, acq: u64, entries: u16) {
    h.w32(
        r::AQA,
        Aqa::new()
            .with_asqs(entries - 1)
            .with_acqs(entries - 1)
            .into_bits(),
    );
    h.w64(r::ASQ, asq);
    h.w64(r::ACQ, acq);
    h.w32(r::CC, Harness::cc_enabled().into_bits());
    h.run();
}

#[test]
fn admin_sq_straddling_the_cmb_end_sets_cfs() {
    let h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    enable_admin_at(&h, CMB_ADDR + CMB_SIZE - 0x1000, ACQ, 128);
    assert!(h.csts().cfs() && !h.csts().rdy());
    h.w32(r::CC, 0);
    h.run();
    assert_eq!(h.csts(), Csts::new(), "a controller reset recovers");
    // The same queue wholly inside the CMB is fine (CMBSZ.SQS).
    enable_admin_at(&h, CMB_ADDR + CMB_SIZE - 0x2000, ACQ, 128);
    assert!(h.csts().rdy() && !h.csts().cfs());
}

#[test]
fn admin_cq_in_the_cmb_sets_cfs() {
    let h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    linux_map_cmb(&h, CMB_ADDR);
    // CMBSZ.CQS = 0: no completion queue may live in the CMB.
    enable_admin_at(&h, ASQ, CMB_ADDR + 0x1000, 32);
    assert!(h.csts().cfs() && !h.csts().rdy());
}

#[test]
fn cmbmsc_pointing_at_ram_leaves_the_cmb_off_and_ram_is_ram() {
    let mut h = Harness::new();
    h.ctrl.bar_moved(CMB_BAR, Some(CMB_ADDR));
    // CBA = a page of guest RAM: CBAI, and that page is not the CMB.
    linux_map_cmb(&h, DATA);
    assert!(cmb_regs(&h).3.cbai());
    h.enable();
    assert_eq!(
        status(&h.create_cq(1, DATA, 16, 1, true, true)),
        Status::SUCCESS,
        "a CQ at the CBA is in RAM, not in a CMB"
    );
    h.mem.poke(CMB_ADDR, &[0x5a; 4096]);
    let (s, id) = h.identify(Cns::CONTROLLER, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(&id[4..20], b"P2PLAB-TEST-0001");
    assert_eq!(h.mem.peek(CMB_ADDR, 4096), vec![0x5a; 4096]);
    let n = counter(&h, "cmb_address_invalid");
    assert_eq!(n, 1);
    linux_map_cmb(&h, CMB_ADDR);
    assert!(!cmb_regs(&h).3.cbai());
    assert_eq!(counter(&h, "cmb_address_invalid"), 1);
}

// ---- shadow doorbells ----

#[test]
fn arming_reports_a_submission_that_slipped_in() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.cmd(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
    c.dptr = [DBS_BUF, EIS_BUF];
    h.admin_ok(c);
    h.run();
    // The driver posts through the shadow doorbell while the worker polls (no MMIO).
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    h.submit_io(&f, false);
    h.mem.poke(DBS_BUF + 8, &h.io_tail.to_le_bytes());
    // The worker arms before sleeping: it must notice the command instead of sleeping.
    assert!(h.ctrl.arm_notifications());
    h.run();
    assert!(h.reap_io().is_some());
}

#[test]
fn shadow_doorbells_use_the_buffer_and_publish_event_idx() {
    let mut h = Harness::new();
    h.ready();
    let mut c = h.cmd(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
    c.dptr = [DBS_BUF, EIS_BUF];
    h.admin_ok(c);
    let sq_shadow = DBS_BUF + 8; // SQ1 tail: index 2, 4 bytes each
    let sq_ei = EIS_BUF + 8;
    // Two commands published only through the shadow buffer, then one MMIO kick.
    for _ in 0..2 {
        let mut f = h.cmd(NvmOpcode::FLUSH.0);
        f.nsid = 1;
        h.submit_io(&f, false);
    }
    h.mem.poke(sq_shadow, &h.io_tail.to_le_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    h.run();
    assert!(h.reap_io().is_some());
    assert!(h.reap_io().is_some());
    // While the worker polls, EventIdx trails the consumed tail (2): the driver's next
    // submission (tail 2 -> 3) does not ring the MMIO doorbell.
    let ei = u32::from_le_bytes(h.mem.peek(sq_ei, 4).try_into().unwrap());
    assert_eq!(ei, 1, "polling: EventIdx one behind the consumed tail");
    assert!(!need_event(ei as u16, 3, 2));
    // Before the worker sleeps it arms: EventIdx = the consumed tail, so the next
    // submission rings.
    assert!(!h.ctrl.arm_notifications(), "no work slipped in");
    let ei = u32::from_le_bytes(h.mem.peek(sq_ei, 4).try_into().unwrap());
    assert_eq!(
        ei, 2,
        "armed: EventIdx = the tail the controller has consumed"
    );
    assert!(need_event(ei as u16, 3, 2));
    // A later tail seen only in the shadow buffer is picked up on the next pass.
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    h.submit_io(&f, false);
    h.mem.poke(sq_shadow, &h.io_tail.to_le_bytes());
    h.ctrl.process();
    assert!(h.reap_io().is_some());
}

/// Linux's `nvme_dbbuf_need_event`: ring the MMIO doorbell when moving from `old` to
/// `new` passes `event_idx`.
fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

#[test]
fn full_cq_with_shadow_doorbells_publishes_its_event_idx() {
    let mut h = Harness::new();
    h.enable();
    let mut c = h.cmd(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
    c.dptr = [DBS_BUF, EIS_BUF];
    h.admin_ok(c);
    h.create_cq(1, IO_CQ, 2, 1, true, true); // room for one entry
    h.create_sq(1, IO_SQ, IO_ENTRIES, 1, true);
    let sq_shadow = DBS_BUF + 8; // SQ1 tail: index 2
    let cq_shadow = DBS_BUF + 12; // CQ1 head: index 3
    let cq_ei = EIS_BUF + 12;
    for _ in 0..2 {
        let mut f = h.cmd(NvmOpcode::FLUSH.0);
        f.nsid = 1;
        h.submit_io(&f, false);
    }
    h.mem.poke(sq_shadow, &h.io_tail.to_le_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    h.run();
    let first = Completion::read_from_bytes(&h.mem.peek(IO_CQ, 16)).unwrap();
    assert!(first.status.p(), "the first command completed");
    // One entry posted, the CQ is full and the worker is idle: it must have published
    // the head it saw, so the driver's next head update rings the doorbell.
    let ei = u32::from_le_bytes(h.mem.peek(cq_ei, 4).try_into().unwrap());
    assert_eq!(ei, 0);
    assert!(
        need_event(ei as u16, 1, 0),
        "the driver rings on its next head move"
    );
    h.mem.poke(cq_shadow, &1u32.to_le_bytes());
    assert!(h.w32(r::cq_head_doorbell(1, 0), 1));
    h.run();
    let second = Completion::read_from_bytes(&h.mem.peek(IO_CQ + 16, 16)).unwrap();
    assert!(second.status.p(), "the held-back command completed");
}

#[test]
fn doorbell_buffer_config_requires_aligned_buffers() {
    let mut h = Harness::new();
    h.enable();
    let mut c = h.cmd(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
    c.dptr = [DBS_BUF + 4, EIS_BUF];
    assert_eq!(status(&h.admin(c)), Status::INVALID_FIELD_IN_COMMAND);
}

// ---- logs, async events, misc admin ----

#[test]
fn vendor_log_is_padded_and_truncated() {
    let mut h = Harness::new();
    h.ctrl
        .set_vendor_log_source(Box::new(|| b"{\"devices\":[]}".to_vec()));
    h.enable();
    let (s, d) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 32, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(&d[..14], b"{\"devices\":[]}");
    assert_eq!(&d[14..], &[0; 18]);
    let (_, d) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 8, 0);
    assert_eq!(&d, b"{\"device");
    let (_, d) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 4, 4);
    assert_eq!(&d, b"vice");
}

#[test]
fn vendor_log_chunks_come_from_one_snapshot() {
    // A host fetching the page in chunks (nvme-cli: 4 KiB per command, increasing LPO)
    // must get one consistent document even though the counters move in between.
    let mut h = Harness::new();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n2 = n.clone();
    h.ctrl.set_vendor_log_source(Box::new(move || {
        let v = n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("{{\"gen\":{v:04}}}").into_bytes()
    }));
    h.enable();
    let (s, a) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 8, 0);
    assert_eq!(s, Status::SUCCESS);
    let (_, b) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 8, 8);
    assert_eq!([a, b].concat(), b"{\"gen\":0000}\0\0\0\0");
    // A new fetch (offset 0) takes a new snapshot.
    let (_, a) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 8, 0);
    let (_, b) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 8, 8);
    assert_eq!([a, b].concat(), b"{\"gen\":0001}\0\0\0\0");
    assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn vendor_log_has_a_fixed_size_for_chunked_fetches() {
    // nvme-cli fetches 4 KiB at a time at increasing offsets; a short JSON must not make
    // the offsets past its end invalid (that failed `nvme get-log --log-len=65536`).
    let mut h = Harness::new();
    h.ctrl
        .set_vendor_log_source(Box::new(|| b"{\"devices\":[]}".to_vec()));
    h.enable();
    let (s, _) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 4096, 0);
    assert_eq!(s, Status::SUCCESS);
    let (s, d) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 4096, 60 * 1024);
    assert_eq!(s, Status::SUCCESS);
    assert!(d.iter().all(|&b| b == 0));
    // Past the page's end: Invalid Field (NVMe 1.4, Log Page Offset).
    let (s, _) = h.get_log(LogPageId::VENDOR_P2PLAB_COUNTERS, 4, 64 * 1024 + 4);
    assert_eq!(s, Status::INVALID_FIELD_IN_COMMAND);
}

#[test]
fn effects_firmware_and_unknown_logs() {
    let mut h = Harness::new();
    h.enable();
    let (s, d) = h.get_log(LogPageId::COMMANDS_SUPPORTED_AND_EFFECTS, 4096, 0);
    assert_eq!(s, Status::SUCCESS);
    let iocs_write = u32::from_le_bytes(d[1024 + 4..1024 + 8].try_into().unwrap());
    assert_eq!(
        iocs_write & 0b11,
        0b11,
        "Write: supported, changes LBA content"
    );
    let (s, d) = h.get_log(LogPageId::FIRMWARE_SLOT, 512, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(d[0], 1);
    assert_eq!(&d[8..11], b"0.1");
    assert_eq!(
        h.get_log(LogPageId(0x55), 512, 0).0,
        Status::INVALID_LOG_PAGE
    );
    assert_eq!(
        h.get_log(LogPageId::SMART_HEALTH, 512, 2).0,
        Status::INVALID_FIELD_IN_COMMAND
    );
}

#[test]
fn invalid_doorbell_value_completes_an_aer() {
    let mut h = Harness::new();
    h.ready();
    let aer = h.cmd(AdminOpcode::ASYNC_EVENT_REQUEST.0);
    h.submit_admin(&aer);
    h.run();
    assert!(h.reap_admin().is_none(), "AER stays outstanding");
    h.w32(r::sq_tail_doorbell(1, 0), IO_ENTRIES + 5);
    h.run();
    let cqe = h.reap_admin().expect("AER completion");
    assert_eq!(cqe.cid, aer.cdw0.cid());
    let ev = AsyncEventCompletion::from_bits(cqe.dw0);
    assert_eq!(AsyncEventType(ev.aet()), AsyncEventType::ERROR_STATUS);
    assert_eq!(
        AsyncEventErrorInfo(ev.aei()),
        AsyncEventErrorInfo::INVALID_DOORBELL_WRITE_VALUE
    );
    assert_eq!(LogPageId(ev.lid()), LogPageId::ERROR_INFORMATION);
}

/// Shadow doorbells configured and one AER outstanding.
fn shadowed_with_aer(h: &mut Harness) -> Command {
    h.ready();
    let aer = h.cmd(AdminOpcode::ASYNC_EVENT_REQUEST.0);
    h.submit_admin(&aer);
    h.run();
    let mut c = h.cmd(AdminOpcode::DOORBELL_BUFFER_CONFIG.0);
    c.dptr = [DBS_BUF, EIS_BUF];
    h.admin_ok(c);
    aer
}

#[track_caller]
fn assert_invalid_doorbell_value_event(h: &mut Harness, aer: &Command) {
    let cqe = h.reap_admin().expect("AER completion");
    assert_eq!(cqe.cid, aer.cdw0.cid());
    let ev = AsyncEventCompletion::from_bits(cqe.dw0);
    assert_eq!(
        AsyncEventErrorInfo(ev.aei()),
        AsyncEventErrorInfo::INVALID_DOORBELL_WRITE_VALUE
    );
}

// Found by the nvme_commands fuzz target: a bad value left in the shadow buffer was
// reported again on every pass, so `process` never went idle (a worker spinning for as
// long as the guest liked).
#[test]
fn bad_shadow_sq_tail_is_reported_once_and_the_worker_goes_idle() {
    let mut h = Harness::new();
    let aer = shadowed_with_aer(&mut h);
    h.mem.poke(DBS_BUF + 8, &(IO_ENTRIES + 5).to_le_bytes()); // SQ1 tail: index 2
    h.run();
    assert_invalid_doorbell_value_event(&mut h, &aer);
    assert!(!h.ctrl.process(), "idle while the bad value stays");
    assert!(!h.ctrl.needs_processing());
    // A good tail afterwards is taken.
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    h.submit_io(&f, false);
    h.mem.poke(DBS_BUF + 8, &h.io_tail.to_le_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    h.run();
    assert_eq!(
        status(&h.reap_io().expect("flush completion")),
        Status::SUCCESS
    );
}

#[test]
fn bad_shadow_cq_head_is_reported_once_and_the_worker_goes_idle() {
    let mut h = Harness::new();
    let aer = shadowed_with_aer(&mut h);
    let (sq_shadow, cq_shadow) = (DBS_BUF + 8, DBS_BUF + 12); // SQ1 tail, CQ1 head
    let flush = |h: &mut Harness| {
        let mut f = h.cmd(NvmOpcode::FLUSH.0);
        f.nsid = 1;
        h.submit_io(&f, false);
        h.mem.poke(sq_shadow, &h.io_tail.to_le_bytes());
        h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    };
    // Fill the CQ (IO_ENTRIES - 1 completions, none consumed).
    for _ in 0..IO_ENTRIES - 1 {
        flush(&mut h);
    }
    h.run();
    // One more command must wait for room, and the head the controller reads is no
    // index at all.
    h.mem.poke(cq_shadow, &(IO_ENTRIES + 7).to_le_bytes());
    flush(&mut h);
    h.run();
    assert_invalid_doorbell_value_event(&mut h, &aer);
    assert!(!h.ctrl.process(), "idle while the bad value stays");
    // A valid head lets the waiting command complete.
    h.mem.poke(cq_shadow, &(IO_ENTRIES - 1).to_le_bytes());
    h.w32(r::cq_head_doorbell(1, 0), IO_ENTRIES - 1);
    h.run();
    let last = Completion::read_from_bytes(&h.mem.peek(IO_CQ + 16 * u64::from(IO_ENTRIES - 1), 16))
        .unwrap();
    assert!(last.status.p(), "the waiting flush completed");
}

#[test]
fn doorbell_of_missing_queue_reports_invalid_register() {
    let mut h = Harness::new();
    h.ready();
    let aer = h.cmd(AdminOpcode::ASYNC_EVENT_REQUEST.0);
    h.submit_admin(&aer);
    h.w32(r::sq_tail_doorbell(3, 0), 1);
    h.run();
    let ev = AsyncEventCompletion::from_bits(h.reap_admin().expect("AER").dw0);
    assert_eq!(
        AsyncEventErrorInfo(ev.aei()),
        AsyncEventErrorInfo::WRITE_TO_INVALID_DOORBELL_REGISTER
    );
}

#[test]
fn too_many_aers_exceed_the_limit() {
    let mut h = Harness::new();
    h.enable();
    for _ in 0..4 {
        let a = h.cmd(AdminOpcode::ASYNC_EVENT_REQUEST.0);
        h.submit_admin(&a);
    }
    h.run();
    assert!(h.reap_admin().is_none());
    let a = h.cmd(AdminOpcode::ASYNC_EVENT_REQUEST.0);
    assert_eq!(
        status(&h.admin(a)),
        Status::ASYNCHRONOUS_EVENT_REQUEST_LIMIT_EXCEEDED
    );
}

#[test]
fn abort_reports_not_aborted() {
    let mut h = Harness::new();
    h.enable();
    let a = h.cmd(AdminOpcode::ABORT.0);
    assert_eq!(h.admin_ok(a).dw0 & 1, ABORT_NOT_ABORTED);
}

#[test]
fn unknown_admin_opcode_and_sgl_admin_are_rejected() {
    let mut h = Harness::new();
    h.enable();
    let c = h.cmd(0xf0);
    assert_eq!(status(&h.admin(c)), Status::INVALID_COMMAND_OPCODE);
    let mut c = h.cmd(AdminOpcode::IDENTIFY.0);
    c.cdw0 = c.cdw0.with_psdt(PSDT_SGL_MPTR_CONTIG);
    assert_eq!(status(&h.admin(c)), Status::INVALID_FIELD_IN_COMMAND);
}

#[test]
fn error_completions_set_dnr_except_transfer_errors() {
    let mut h = Harness::new();
    h.enable();
    let c = h.cmd(0xf0);
    assert!(h.admin(c).status.dnr());
}

// ---- garbage ----

#[test]
fn random_register_writes_never_panic() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let h = Harness::new();
    for _ in 0..20_000 {
        let off = rng.next() % (crate::REG_BAR_SIZE + 64);
        let len = [1usize, 2, 4, 8, 3][(rng.next() % 5) as usize];
        let v = rng.next().to_le_bytes();
        h.ctrl.bar_write(REG_BAR, off, &v[..len]);
        let mut b = [0u8; 8];
        h.ctrl.bar_read(REG_BAR, rng.next() % 0x5000, &mut b[..len]);
        if rng.next() & 63 == 0 {
            h.ctrl.process();
        }
    }
    for bar in [1usize, 2, 3, 4, 5, 6, 99] {
        h.ctrl.bar_write(bar, u64::MAX - 2, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        h.ctrl.bar_read(bar, u64::MAX - 1, &mut b);
    }
}

/// Every command of a random stream completes exactly once with its own CID, except
/// Asynchronous Event Requests, which may wait for an event.
#[test]
fn random_admin_commands_complete_and_never_panic() {
    let mut rng = XorShift(0xfeed_beef_0bad_cafe);
    let mut h = Harness::new();
    h.enable();
    const COMMANDS: usize = 400;
    let (mut completions, mut deferred) = (0, 0);
    for _ in 0..COMMANDS {
        let mut raw = [0u8; 64];
        for chunk in raw.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let mut c = Command::read_from_bytes(&raw).unwrap();
        // Keep opcodes mostly real and pointers mostly inside guest memory; CIDs unique
        // so each completion names its command.
        let opc = [
            0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x7c, 0x18,
        ][(rng.next() % 12) as usize];
        let cid = h.next_cid();
        c.cdw0 = c.cdw0.with_opc(opc).with_cid(cid);
        if rng.next() & 1 == 0 {
            c.dptr = [
                DATA + (rng.next() % 0x10_0000),
                LISTS + (rng.next() % 0x1000),
            ];
        }
        // Delete/Create of queue 0 and Doorbell Buffer Config with wild pointers are
        // fine; only keep the admin queue itself intact.
        h.submit_admin(&c);
        h.run();
        let cqes: Vec<Completion> = std::iter::from_fn(|| h.reap_admin()).collect();
        completions += cqes.len();
        let own = cqes.iter().filter(|q| q.cid == cid).count();
        if opc == AdminOpcode::ASYNC_EVENT_REQUEST.0 && own == 0 {
            deferred += 1;
        } else {
            assert_eq!(
                own, 1,
                "admin opcode {opc:#04x} cid {cid}: {own} completions"
            );
        }
        assert!(
            !h.csts().cfs(),
            "opcode {opc:#04x} cid {cid} made the controller fatal"
        );
    }
    assert!(
        completions >= COMMANDS - deferred,
        "{completions} completions for {COMMANDS} commands ({deferred} AERs waiting)"
    );
}

/// Every command of a random I/O stream completes exactly once with its own CID.
#[test]
fn random_io_commands_complete_and_never_panic() {
    let mut rng = XorShift(0x0dd_ba11_5eed_1e55);
    let mut h = Harness::new();
    h.ready();
    const COMMANDS: usize = 400;
    let (mut completions, mut succeeded) = (0, 0);
    for i in 0..COMMANDS {
        let mut raw = [0u8; 64];
        for chunk in raw.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let mut c = Command::read_from_bytes(&raw).unwrap();
        let opc = [0x00, 0x01, 0x02, 0x05, 0x08, 0x09, 0x33][(rng.next() % 7) as usize];
        let cid = h.next_cid();
        c.cdw0 = c.cdw0.with_opc(opc).with_cid(cid);
        if i % 2 == 0 {
            c.nsid = 1 + (rng.next() % 2) as u32;
            c.cdw10 = (rng.next() % 20000) as u32;
            c.cdw11 = 0;
            c.cdw12 &= 0xffff_00ff; // keep NLB small-ish sometimes
            c.dptr = [
                DATA + (rng.next() % 0x10_0000),
                LISTS + (rng.next() % 0x2000),
            ];
        }
        h.submit_io(&c, true);
        h.run();
        let cqes: Vec<Completion> = std::iter::from_fn(|| h.reap_io()).collect();
        assert_eq!(
            cqes.iter().map(|q| q.cid).collect::<Vec<_>>(),
            vec![cid],
            "I/O opcode {opc:#04x}: exactly one completion, with its CID"
        );
        completions += cqes.len();
        succeeded += cqes.iter().filter(|q| status(q).is_success()).count();
    }
    assert_eq!(completions, COMMANDS);
    assert!(
        succeeded > 0,
        "no random command succeeded: the stream never exercised a data path"
    );
    // Still serving after all that.
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    assert_eq!(h.io(f), Status::SUCCESS);
}

#[test]
fn wild_admin_queue_address_sets_cfs() {
    let h = Harness::new();
    h.w32(r::AQA, Aqa::new().with_asqs(3).with_acqs(3).into_bits());
    h.w64(r::ASQ, 0xdead_0000_0000);
    h.w64(r::ACQ, ACQ);
    h.w32(r::CC, Harness::cc_enabled().into_bits());
    h.run();
    h.w32(r::sq_tail_doorbell(0, 0), 1);
    h.run();
    assert!(h.csts().cfs());
}

fn counter(h: &Harness, name: &str) -> u64 {
    h.ctrl
        .error_counters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

#[test]
fn error_counters_name_what_the_guest_got_wrong() {
    let mut h = Harness::new();
    h.ready();
    h.w32(r::sq_tail_doorbell(1, 0), IO_ENTRIES + 5);
    h.w32(r::sq_tail_doorbell(3, 0), 1);
    h.w32(r::sq_tail_doorbell(3, 0), 1);
    let c = h.rw(NvmOpcode::READ, 0, 8, DATA + 1, 0);
    assert_eq!(h.io(c), Status::PRP_OFFSET_INVALID);
    let c = h.rw(NvmOpcode::READ, 0, 8, 0xdead_0000_0000, 0);
    assert_eq!(h.io(c), Status::DATA_TRANSFER_ERROR);
    let c = h.rw(NvmOpcode::READ, 0, 8, 0xdead_0000_0000, 0);
    assert_eq!(h.io(c), Status::DATA_TRANSFER_ERROR);
    h.w32(r::CC, 0);
    h.run();
    h.w32(r::AQA, 0);
    h.w32(r::CC, Harness::cc_enabled().into_bits());
    h.run();
    h.ctrl.reset();
    let got: std::collections::BTreeMap<String, u64> =
        h.ctrl.error_counters().into_iter().collect();
    let want = [
        ("doorbell_invalid_value", 1),
        ("doorbell_invalid_register", 2),
        ("status_prp_offset_invalid", 1),
        ("status_data_transfer_error", 2),
        ("commands_failed", 3),
        ("controller_resets", 1),
        ("function_resets", 1),
        ("fatal_enable", 1),
        ("fatal_sq_fetch", 0),
        ("fatal_cq_post", 0),
    ];
    for (name, n) in want {
        assert_eq!(got.get(name), Some(&n), "{name} in {got:?}");
    }
    // Counters outlive resets.
    h.enable();
    assert_eq!(counter(&h, "commands_failed"), 3);
}

#[test]
fn unreachable_io_cq_sets_cfs_and_is_counted() {
    let mut h = Harness::new();
    h.enable();
    assert_eq!(
        status(&h.create_cq(1, 0xdead_0000_0000, 16, 1, true, true)),
        Status::SUCCESS
    );
    assert_eq!(status(&h.create_sq(1, IO_SQ, 16, 1, true)), Status::SUCCESS);
    let mut f = h.cmd(NvmOpcode::FLUSH.0);
    f.nsid = 1;
    h.mem.poke(IO_SQ, f.as_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), 1);
    h.run();
    assert!(h.csts().cfs());
    assert_eq!(counter(&h, "fatal_cq_post"), 1);
}

#[test]
fn prp_list_pointing_back_at_its_own_page_stays_inside_the_named_pages() {
    let mut h = Harness::new();
    h.ready();
    let data = pattern(2 << 20, 9);
    h.files[0].file.write_all_at(&data, 0).unwrap();
    // PRP2 points at the last two entries of the list page: one data page, then a chain
    // pointer back to the start of the same page, whose entries all name that data page.
    let mut list = vec![DATA; 512];
    list[511] = LISTS;
    h.mem.poke(LISTS, list.as_bytes());
    h.mem.poke(DATA - 0x1000, &[0xc1; 0x1000]);
    h.mem.poke(DATA + 0x1000, &[0xc2; 0x1000]);
    let c = h.rw(NvmOpcode::READ, 0, 4096, DATA, LISTS + 4080);
    assert_eq!(
        h.io(c),
        Status::SUCCESS,
        "bounded by the length: it completes"
    );
    // Every page of the transfer went to DATA: the last one is what it holds.
    assert_eq!(h.mem.peek(DATA, 4096), data[(2 << 20) - 4096..]);
    assert_eq!(h.mem.peek(DATA - 0x1000, 0x1000), vec![0xc1; 0x1000]);
    assert_eq!(h.mem.peek(DATA + 0x1000, 0x1000), vec![0xc2; 0x1000]);
    assert_eq!(
        h.mem.peek(LISTS, 4096),
        list.as_bytes(),
        "the list is only read"
    );
}

#[test]
fn clearing_cc_en_with_commands_queued_posts_nothing_after_ready_clears() {
    let mut h = Harness::new();
    h.ready();
    let queued = crate::IO_BATCH + 8;
    for _ in 0..queued {
        let c = h.rw(NvmOpcode::READ, 0, 256, DATA, LISTS);
        h.submit_io(&c, false);
    }
    let list: Vec<u64> = (1..64).map(|i| DATA + i * 4096).collect();
    h.mem.poke(LISTS, list.as_bytes());
    h.w32(r::sq_tail_doorbell(1, 0), h.io_tail);
    // One batch runs, then the driver clears CC.EN with the rest still queued.
    assert!(h.ctrl.process());
    let posted = h.mem.peek(IO_CQ, 16 * queued);
    let done = (0..queued)
        .filter(|i| {
            Completion::read_from_bytes(&posted[i * 16..i * 16 + 16])
                .unwrap()
                .status
                .p()
        })
        .count();
    assert_eq!(done, crate::IO_BATCH, "one batch completed");
    h.w32(r::CC, 0);
    h.run();
    assert!(!h.csts().rdy() && !h.csts().cfs());
    assert_eq!(
        h.mem.peek(IO_CQ, 16 * queued),
        posted,
        "no completion after the reset"
    );
    h.enable();
    let (s, _) = h.identify(Cns::CONTROLLER, 0);
    assert_eq!(s, Status::SUCCESS);
}

#[test]
fn config_rejects_bad_values() {
    let files = vec![TempFile::new(4096)];
    let mem: Arc<TestDmaSpace> = Arc::new(TestDmaSpace::new(0, 4096));
    let irq = Arc::new(RecordingInterrupts::default());
    let mut cfg = config_with("X", &files, 512);
    cfg.namespaces[0].size = NS_SIZE; // file is only 4 KiB
    assert!(NvmeController::new(cfg, mem.clone(), irq.clone()).is_err());
    let mut cfg = config_with("X", &files, 512);
    cfg.namespaces[0].size = 4096;
    cfg.cmb_size = 3 << 20;
    assert!(NvmeController::new(cfg, mem.clone(), irq.clone()).is_err());
    let mut cfg = config_with("X", &files, 777);
    cfg.namespaces[0].size = 4096;
    assert!(NvmeController::new(cfg, mem, irq).is_err());
}

#[test]
fn config_space_advertises_nvme_class_and_bars() {
    let h = Harness::new();
    let layout = h.ctrl.pci_layout();
    assert_eq!(layout.class, 0x010802);
    assert_eq!(layout.msix_vectors, 5);
    let cfg = h.ctrl.config_space();
    assert_eq!(cfg.bar_size(crate::REG_BAR), crate::REG_BAR_SIZE);
    assert_eq!(cfg.bar_size(crate::CMB_BAR), CMB_SIZE);
    let mut b = [0u8; 4];
    cfg.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x0002_2b2b);
}

// ---- structure ----

/// The modules `crate::` paths in `src` name (comment lines skipped).
fn crate_uses(src: &str) -> Vec<String> {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(ident));
        } else {
            out.push(ident(rest));
        }
    }
    out
}

#[test]
fn module_imports_run_one_way() {
    // (module, rank, source): a module may use only modules of a lower rank, so the
    // controller uses the workers, the workers use the state and the spec leaves, and
    // nothing below reaches back up (openvmm `storage/nvme`).
    const MODULES: &[(&str, u8, &str)] = &[
        ("pci", 0, include_str!("pci.rs")),
        ("error", 1, include_str!("error.rs")),
        ("cmb", 1, include_str!("cmb.rs")),
        ("prp", 2, include_str!("prp.rs")),
        ("namespace", 2, include_str!("namespace.rs")),
        ("regs", 2, include_str!("regs.rs")),
        ("queue", 2, include_str!("queue.rs")),
        ("sgl", 3, include_str!("sgl.rs")),
        ("features", 3, include_str!("features.rs")),
        ("command", 3, include_str!("command.rs")),
        ("state", 4, include_str!("state.rs")),
        ("admin", 5, include_str!("admin.rs")),
        ("io", 5, include_str!("io.rs")),
        ("controller", 6, include_str!("controller.rs")),
    ];
    for line in include_str!("lib.rs").lines() {
        let Some(m) = line
            .trim_start_matches("pub ")
            .strip_prefix("mod ")
            .and_then(|m| m.strip_suffix(';'))
        else {
            continue;
        };
        assert!(
            m == "tests" || MODULES.iter().any(|x| x.0 == m),
            "module {m} has no rank in this test"
        );
    }
    for (name, rank, src) in MODULES {
        for used in crate_uses(src) {
            if let Some((_, r, _)) = MODULES.iter().find(|m| m.0 == used) {
                assert!(
                    r < rank,
                    "{name} (rank {rank}) uses {used} (rank {r}): imports must run one way"
                );
            }
        }
    }
}
