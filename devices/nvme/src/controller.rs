//! The controller: the register path (vfio-user thread) and the worker loop (host
//! worker thread) around the admin and I/O command workers.
//!
//! Imports run one way: this module uses the workers ([`crate::admin`], [`crate::io`]),
//! which use the queues, PRP/SGL walkers, namespaces and the shared state
//! ([`crate::state`], [`crate::features`], [`crate::command`]); nothing below reaches
//! back up (a unit test checks it).
//!
//! Locking: `regs` (register file) and the doorbell atomics are touched by `bar_*`; they
//! are never held across DMA. `state` (queues, features, async events) belongs to
//! [`NvmeController`]'s `process` and is held across DMA and file I/O, so nothing a vCPU
//! waits for (a register access) ever takes it: CC.EN transitions are recorded and
//! carried out by the worker.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use nvme_spec::log::LogPageId;
use nvme_spec::regs::{Cap, CAP_CSS_NVM, CSTS_SHST_COMPLETE, DBS};
use nvme_spec::{AsyncEventCompletion, AsyncEventErrorInfo, AsyncEventType, Completion, Status};
use p2plab_memory::{BusAddr, DmaSpace, InterruptSink};
use p2plab_pci::{ConfigSpace, PciFunction, UNCLAIMED_READ};

use crate::admin;
use crate::cmb::Cmb;
use crate::command::{status_field, Outcome};
use crate::error::ConfigError;
use crate::features::Features;
use crate::io;
use crate::namespace::{Deallocate, Namespace, NamespaceConfig};
use crate::pci::{self, CMB_BAR, MAX_IO_QUEUES, MSIX_BAR, REG_BAR, REG_BAR_SIZE};
use crate::queue::{
    cq_db_index, sq_db_index, CompletionQueue, Doorbells, SubmissionQueue, DB_ERR_INVALID_REGISTER,
    DB_ERR_INVALID_VALUE,
};
use crate::regs::RegFile;
use crate::state::{
    lock, AsyncEvents, ErrorStats, Fatal, HeldIrq, Shared, State, Stats, VendorLogSource,
};

/// Commands taken from the admin SQ per `process` pass.
pub const ADMIN_BATCH: usize = 16;
/// Commands taken from each I/O SQ per pass (bounds latency for the other queues).
pub const IO_BATCH: usize = 32;

/// Controller configuration.
pub struct NvmeConfig {
    /// SN: 1..=20 ASCII characters; also seeds the namespace identifiers and SUBNQN.
    pub serial: String,
    /// MN: 1..=40 ASCII characters.
    pub model: String,
    /// FR: 1..=8 ASCII characters.
    pub firmware: String,
    /// CMB size in bytes: 0 (no CMB) or a power of two >= 2 MiB (Linux needs 2 MiB
    /// alignment of the CMB BAR). Default 128 MiB.
    pub cmb_size: u64,
    /// CAP.MQES: maximum entries per queue, 0's based (1..=4095). Default 1023.
    pub mqes: u16,
    /// I/O queue pairs (1..=[`MAX_IO_QUEUES`]); MSI-X vectors = this + 1. Default 8.
    pub max_io_queues: u16,
    /// MDTS, 2^n 4 KiB pages (1..=12). Default 9 (2 MiB).
    pub mdts: u8,
    /// Namespaces, NSID 1.. in order.
    pub namespaces: Vec<NamespaceConfig>,
    /// Hole punching for deallocation, if the host offers it.
    pub deallocate: Option<Arc<dyn Deallocate>>,
}

impl NvmeConfig {
    /// Defaults for everything but the identity and the namespaces.
    pub fn new(serial: impl Into<String>, namespaces: Vec<NamespaceConfig>) -> Self {
        Self {
            serial: serial.into(),
            model: "p2plab NVMe".into(),
            firmware: "0.1".into(),
            cmb_size: 128 << 20,
            mqes: 1023,
            max_io_queues: 8,
            mdts: 9,
            namespaces,
            deallocate: None,
        }
    }
}

/// An emulated NVMe 1.4 controller with a Controller Memory Buffer.
///
/// The host drives it through [`PciFunction`] (register accesses, config events, the
/// worker's `process`); the inherent methods are construction and identity.
pub struct NvmeController {
    sh: Shared,
    state: Mutex<State>,
    /// The power-on config space, built once from [`Self::pci_layout`].
    config_space: ConfigSpace,
}

fn ascii_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl NvmeController {
    /// BAR of the registers and doorbells (64-bit, 16 KiB, trapped).
    pub const REG_BAR: usize = REG_BAR;
    /// BAR of the Controller Memory Buffer (64-bit prefetchable, memory-backed).
    pub const CMB_BAR: usize = CMB_BAR;
    /// BAR of the MSI-X table and PBA (32-bit, trapped).
    pub const MSIX_BAR: usize = MSIX_BAR;

    /// Builds a controller (disabled, bus mastering off) from `cfg`.
    pub fn new(
        cfg: NvmeConfig,
        dma: Arc<dyn DmaSpace>,
        irq: Arc<dyn InterruptSink>,
    ) -> Result<Self, ConfigError> {
        if !ascii_ok(&cfg.serial, 20) {
            return Err(ConfigError::Serial);
        }
        if !ascii_ok(&cfg.model, 40) {
            return Err(ConfigError::Model);
        }
        if !ascii_ok(&cfg.firmware, 8) {
            return Err(ConfigError::Firmware);
        }
        if cfg.namespaces.is_empty() {
            return Err(ConfigError::NoNamespaces);
        }
        if cfg.cmb_size != 0 && (!cfg.cmb_size.is_power_of_two() || cfg.cmb_size < (2 << 20)) {
            return Err(ConfigError::CmbSize(cfg.cmb_size));
        }
        if cfg.mqes == 0 || cfg.mqes > 4095 {
            return Err(ConfigError::Mqes(cfg.mqes));
        }
        if cfg.max_io_queues == 0 || cfg.max_io_queues > MAX_IO_QUEUES {
            return Err(ConfigError::MaxIoQueues(cfg.max_io_queues));
        }
        if cfg.mdts == 0 || cfg.mdts > 12 {
            return Err(ConfigError::Mdts(cfg.mdts));
        }
        let mut namespaces = Vec::with_capacity(cfg.namespaces.len());
        for (i, ns) in cfg.namespaces.into_iter().enumerate() {
            let nsid = u32::try_from(i + 1).unwrap_or(u32::MAX);
            namespaces.push(Namespace::new(
                nsid,
                &cfg.serial,
                ns,
                cfg.deallocate.clone(),
            )?);
        }
        let cap = Cap::new()
            .with_mqes(cfg.mqes)
            .with_cqr(true)
            .with_to(20) // 10 s: the worker may be slow to wake under TCG.
            .with_dstrd(0)
            .with_css(CAP_CSS_NVM)
            .with_mpsmin(0)
            .with_mpsmax(0)
            .with_cmbs(cfg.cmb_size != 0);
        let queues = usize::from(cfg.max_io_queues) + 1;
        let msix_vectors = cfg.max_io_queues + 1;
        let sh = Shared {
            subnqn: format!("nqn.2024-01.io.p2plab:nvme:{}", cfg.serial),
            serial: cfg.serial,
            model: cfg.model,
            firmware: cfg.firmware,
            mqes: cfg.mqes,
            max_io_queues: cfg.max_io_queues,
            msix_vectors,
            mdts: cfg.mdts,
            dma,
            irq,
            regs: Mutex::new(RegFile::new(cap, Cmb::new(cfg.cmb_size))),
            doorbells: Doorbells::new(queues),
            work: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            bus_master: AtomicBool::new(false),
            reset_epoch: AtomicU64::new(0),
            msix: Mutex::new(vec![0; pci::MSIX_BAR_SIZE as usize]),
            vendor_log: RwLock::new(None),
            namespaces,
            stats: Stats::default(),
            errors: ErrorStats::default(),
        };
        let config_space = pci::layout(cfg.cmb_size, msix_vectors, &sh.serial).config_space()?;
        let features = Features::new(cfg.max_io_queues);
        Ok(Self {
            sh,
            state: Mutex::new(State::new(queues, features)),
            config_space,
        })
    }

    /// The PCI identity, BARs and MSI-X layout the config space advertises.
    pub fn pci_layout(&self) -> pci::PciLayout {
        let cmb_size = self.sh.regs().cmb.size;
        pci::layout(cmb_size, self.sh.msix_vectors, &self.sh.serial)
    }

    /// Number of MSI-X vectors (one per queue pair, vector 0 for the admin queue).
    pub fn msix_vectors(&self) -> u16 {
        self.sh.msix_vectors
    }

    /// CMB size in bytes (the size of BAR [`Self::CMB_BAR`]); 0 if there is none.
    pub fn cmb_size(&self) -> u64 {
        self.sh.regs().cmb.size
    }

    /// Installs the source of vendor log page 0xC0.
    pub fn set_vendor_log_source(&self, source: VendorLogSource) {
        *self
            .sh
            .vendor_log
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Records that the worker has something to do (`needs_processing`).
    fn kick(&self) {
        self.sh.work.store(true, Ordering::Release);
    }

    /// Size of BAR `bar` (0: not implemented).
    fn bar_size(&self, bar: usize) -> u64 {
        match bar {
            REG_BAR => REG_BAR_SIZE,
            CMB_BAR => self.sh.regs().cmb.size,
            MSIX_BAR => pci::MSIX_BAR_SIZE,
            _ => 0,
        }
    }

    /// The bus address of byte `offset` of the CMB BAR as the guest programmed it, for
    /// the trapped fallback (the host normally serves the CMB from its memfd; the DMA
    /// space routes the device's own BAR to that memory).
    fn cmb_bus_address(&self, offset: u64) -> Option<BusAddr> {
        let base = self.sh.regs().cmb.bar_addr?;
        base.checked_add(offset).map(BusAddr)
    }

    fn reg_write(&self, offset: u64, data: &[u8]) -> bool {
        // Registers are written with aligned 32- or 64-bit accesses (§3.1); others are
        // ignored.
        let dwords: Vec<(u64, u32)> = match (data.len(), offset % 4) {
            (4, 0) => vec![(
                offset,
                u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            )],
            (8, 0) => {
                let lo = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                let hi = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                // CMBMSC's enable bits are in the low dword: apply the high dword first,
                // as Linux's hi_lo_writeq does.
                match offset.checked_add(4) {
                    Some(h) => vec![(h, hi), (offset, lo)],
                    None => return false,
                }
            }
            _ => return false,
        };
        let mut kick = false;
        for (off, val) in dwords {
            if off >= DBS {
                if off >= REG_BAR_SIZE {
                    continue;
                }
                let index = ((off - DBS) / 4) as usize;
                // Accepted: a new tail/head to service. Rejected: an error event for the
                // worker to raise. Either way the worker has something to do.
                self.sh.doorbells.write(index, val);
                kick = true;
                continue;
            }
            let fx = self.sh.regs().write_dword(off, val);
            if fx.controller_reset {
                self.sh.doorbells.close_all();
                self.sh.reset_epoch.fetch_add(1, Ordering::AcqRel);
                self.sh
                    .errors
                    .controller_resets
                    .fetch_add(1, Ordering::Relaxed);
            }
            if fx.cmb_address_invalid {
                log::debug!(
                    "nvme {}: CMBMSC.CBA is not the CMB BAR's address (CMBSTS.CBAI)",
                    self.sh.serial
                );
                self.sh
                    .errors
                    .cmb_address_invalid
                    .fetch_add(1, Ordering::Relaxed);
            }
            for v in 0..32u16 {
                if fx.unmasked_pending & (1 << v) != 0 {
                    self.sh.irq.signal(v);
                }
            }
            kick |= fx.kick;
        }
        if kick {
            self.kick();
        }
        kick
    }

    /// Reconciles the worker state with CC and resets (§7.6.1, §7.6.2).
    fn sync_enable(&self, st: &mut State) -> bool {
        let mut did = false;
        let epoch = self.sh.reset_epoch.load(Ordering::Acquire);
        if st.epoch != epoch {
            self.teardown(st);
            st.epoch = epoch;
            did = true;
        }
        let (cc, aqa, asq, acq, admin_queues_fit_cmb) = {
            let r = self.sh.regs();
            // Admin queues and the CMB (CMBSZ.SQS = 1, CQS = 0): the ASQ may lie in the
            // CMB but not straddle its edge (its entries past the edge would be fetched
            // from whatever lies beyond); the ACQ may not touch it.
            let sq_bytes = (u64::from(r.aqa.asqs()) + 1) * nvme_spec::SQE_SIZE as u64;
            let cq_bytes = (u64::from(r.aqa.acqs()) + 1) * nvme_spec::CQE_SIZE as u64;
            let fit = (!r.cmb.overlaps(r.asq, sq_bytes) || r.cmb.contains(r.asq, sq_bytes))
                && !r.cmb.overlaps(r.acq, cq_bytes);
            (r.cc, r.aqa, r.asq, r.acq, fit)
        };
        if cc.en() && !st.enabled && !st.failed {
            did = true;
            let valid = aqa.asqs() >= 1
                && aqa.acqs() >= 1
                && u32::from(aqa.asqs()) <= u32::from(self.sh.mqes)
                && u32::from(aqa.acqs()) <= u32::from(self.sh.mqes)
                && cc.mps() == 0
                && cc.css() == 0
                && cc.ams() == 0
                && asq != 0
                && acq != 0
                && admin_queues_fit_cmb;
            if !valid {
                log::warn!(
                    "nvme {}: invalid enable (CC {cc:?}, AQA {aqa:?}, ASQ {asq:#x}, ACQ {acq:#x}): CSTS.CFS",
                    self.sh.serial
                );
                self.fatal(st, Fatal::Enable);
            } else {
                let sq_entries = u32::from(aqa.asqs()) + 1;
                let cq_entries = u32::from(aqa.acqs()) + 1;
                let mut acq_q = CompletionQueue::new(0, acq, cq_entries, 0, true);
                acq_q.sq_count = 1;
                st.cqs[0] = Some(acq_q);
                st.sqs[0] = Some(SubmissionQueue::new(0, asq, sq_entries, 0));
                self.sh.doorbells.set_limit(sq_db_index(0), sq_entries);
                self.sh.doorbells.set_limit(cq_db_index(0), cq_entries);
                st.enabled = true;
                st.shutdown_done = false;
                let mut r = self.sh.regs();
                r.csts.set_rdy(true);
                r.csts.set_shst(0);
            }
        }
        if cc.shn() != 0 && !st.shutdown_done {
            did = true;
            for ns in &self.sh.namespaces {
                if let Err(e) = ns.sync() {
                    log::warn!("nvme {}: flush at shutdown: {e}", self.sh.serial);
                }
            }
            st.shutdown_done = true;
            self.sh.regs().csts.set_shst(CSTS_SHST_COMPLETE);
        }
        did
    }

    /// Controller Reset: delete all queues, drop outstanding AERs, reset features.
    fn teardown(&self, st: &mut State) {
        for q in st.sqs.iter_mut() {
            *q = None;
        }
        for q in st.cqs.iter_mut() {
            *q = None;
        }
        self.sh.doorbells.close_all();
        st.enabled = false;
        st.failed = false;
        st.shutdown_done = false;
        st.events = AsyncEvents::default();
        st.dbbuf = None;
        st.irq_cqs.clear();
        st.held_irqs.clear();
        st.features = Features::new(self.sh.max_io_queues);
        let mut r = self.sh.regs();
        r.csts.set_rdy(false);
        r.csts.set_cfs(false);
        if !r.cc.en() || r.cc.shn() == 0 {
            r.csts.set_shst(0);
        }
        // Shutdown was (re)requested in CC before this reset was processed.
        if r.cc.shn() != 0 {
            r.csts.set_shst(nvme_spec::regs::CSTS_SHST_OCCURRING);
        }
    }

    /// CSTS.CFS: the controller cannot go on (e.g. its admin queue is unreachable).
    fn fatal(&self, st: &mut State, why: Fatal) {
        st.failed = true;
        self.sh.errors.fatal(why);
        self.sh.regs().csts.set_cfs(true);
    }

    fn doorbell_errors(&self, st: &mut State) -> bool {
        let bits = self.sh.doorbells.take_errors();
        for (bit, info) in [
            (
                DB_ERR_INVALID_REGISTER,
                AsyncEventErrorInfo::WRITE_TO_INVALID_DOORBELL_REGISTER,
            ),
            (
                DB_ERR_INVALID_VALUE,
                AsyncEventErrorInfo::INVALID_DOORBELL_WRITE_VALUE,
            ),
        ] {
            if bits & bit != 0 {
                st.events.raise(
                    AsyncEventCompletion::new()
                        .with_aet(AsyncEventType::ERROR_STATUS.0)
                        .with_aei(info.0)
                        .with_lid(LogPageId::ERROR_INFORMATION.0),
                );
            }
        }
        bits != 0
    }

    /// Latest tail of SQ `qid`: the shadow doorbell for I/O queues when configured, else
    /// the MMIO doorbell. Out-of-range values raise Invalid Doorbell Write Value, once
    /// per value.
    fn refresh_sq_tail(&self, st: &mut State, qid: u16) {
        let Some(sq) = st.sqs[usize::from(qid)].as_mut() else {
            return;
        };
        let v = match sq.shadow {
            Some(s) => match s.read_db(&*self.sh.dma) {
                Ok(v) => v,
                Err(_) => return,
            },
            None => self.sh.doorbells.value(sq_db_index(qid)),
        };
        if v < sq.entries {
            sq.tail = v;
            sq.rejected_shadow = None;
        } else if sq.rejected_shadow != Some(v) {
            // Once per bad value: a bad value left in the shadow buffer must not make
            // every pass report it again (the worker would never go idle).
            sq.rejected_shadow = Some(v);
            self.sh.doorbells.note_error(DB_ERR_INVALID_VALUE);
        }
    }

    /// Latest head of CQ `qid`; a head that passes entries not yet posted is rejected
    /// (reported once per value, like a bad SQ tail).
    fn refresh_cq_head(&self, st: &mut State, qid: u16) {
        let Some(cq) = st.cqs[usize::from(qid)].as_mut() else {
            return;
        };
        let v = match cq.shadow {
            Some(s) => match s.read_db(&*self.sh.dma) {
                Ok(v) => v,
                Err(_) => return,
            },
            None => self.sh.doorbells.value(cq_db_index(qid)),
        };
        let n = cq.entries;
        let posted = (cq.tail + n - cq.head) % n;
        if v < n && (v + n - cq.head) % n <= posted {
            cq.head = v;
            cq.rejected_shadow = None;
        } else if cq.rejected_shadow != Some(v) {
            cq.rejected_shadow = Some(v);
            self.sh.doorbells.note_error(DB_ERR_INVALID_VALUE);
        }
    }

    /// Whether SQ `qid` has a command; with shadow doorbells this publishes EventIdx and
    /// re-checks, so a tail the driver writes meanwhile is never missed.
    fn sq_has_work(&self, st: &mut State, qid: u16) -> bool {
        let q = usize::from(qid);
        if st.sqs[q].as_ref().is_some_and(|s| !s.is_empty()) {
            return true;
        }
        self.refresh_sq_tail(st, qid);
        let Some(sq) = st.sqs[q].as_ref() else {
            return false;
        };
        if !sq.is_empty() {
            return true;
        }
        let Some(shadow) = sq.shadow else {
            return false;
        };
        let (tail, entries) = (sq.tail, sq.entries);
        if !st.armed {
            // The worker polls: EventIdx one behind the tail, which the driver's next
            // tail never passes, so it submits through the shadow doorbell alone and the
            // next poll picks the command up (no trapped write, no vfio-user message).
            let _ = shadow.write_ei(&*self.sh.dma, (tail + entries - 1) % entries);
            return false;
        }
        // Armed (the worker is going to sleep): EventIdx = the tail we have consumed up
        // to; the driver rings the MMIO doorbell when it moves its tail past this.
        if shadow.write_ei(&*self.sh.dma, tail).is_err() {
            return false;
        }
        // The EventIdx store must be visible before we re-read the shadow tail: the
        // driver does the mirror image (store shadow tail, mb(), load EventIdx), so
        // one of us is guaranteed to see the other's update.
        fence(Ordering::SeqCst);
        self.refresh_sq_tail(st, qid);
        st.sqs[q].as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Whether CQ `cqid` has room for an entry. With a shadow doorbell, refreshing the
    /// head publishes it as the CQ's EventIdx; after a fence the head is read once more,
    /// so a head the driver moved meanwhile is either seen here or makes the driver ring
    /// the MMIO doorbell (it rings when its new head passes EventIdx,
    /// `nvme_dbbuf_need_event`). Without that re-read a full CQ could wait forever for a
    /// doorbell the driver saw no reason to ring.
    fn cq_has_room(&self, st: &mut State, cqid: u16) -> bool {
        let q = usize::from(cqid);
        let has_room = |st: &State| st.cqs[q].as_ref().is_some_and(|c| !c.is_full());
        if has_room(st) {
            return true;
        }
        self.refresh_cq_head(st, cqid);
        if has_room(st) {
            // No CQ head doorbell wanted while the queue has room: EventIdx one behind
            // the head is never passed by the driver's next head (nvme_dbbuf_need_event).
            if let Some((shadow, head, n)) = st.cqs[q]
                .as_ref()
                .and_then(|c| c.shadow.map(|s| (s, c.head, c.entries)))
            {
                let _ = shadow.write_ei(&*self.sh.dma, (head + n - 1) % n);
            }
            return true;
        }
        let Some((shadow, head)) = st.cqs[q]
            .as_ref()
            .and_then(|c| c.shadow.map(|s| (s, c.head)))
        else {
            return false;
        };
        // Full: ask for a head doorbell (EventIdx = the head we have seen), so a driver
        // that frees entries while the worker sleeps rings the MMIO doorbell. The store
        // must be visible before the re-read; the driver does the mirror image (store
        // shadow head, mb(), load EventIdx).
        if shadow.write_ei(&*self.sh.dma, head).is_err() {
            return false;
        }
        fence(Ordering::SeqCst);
        self.refresh_cq_head(st, cqid);
        has_room(st)
    }

    fn service_sq(&self, st: &mut State, qid: u16, budget: usize) -> bool {
        let q = usize::from(qid);
        let mut did = false;
        for _ in 0..budget {
            if self.sh.reset_epoch.load(Ordering::Acquire) != st.epoch || st.failed {
                break;
            }
            if !self.sq_has_work(st, qid) {
                break;
            }
            let Some(cqid) = st.sqs[q].as_ref().map(|s| s.cqid) else {
                break;
            };
            if !self.cq_has_room(st, cqid) {
                break;
            }
            let Some(sq) = st.sqs[q].as_mut() else { break };
            let cmd = match sq.pop(&*self.sh.dma) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!(
                        "nvme {}: fetching from SQ {qid} failed: {e}",
                        self.sh.serial
                    );
                    self.fatal(st, Fatal::SqFetch);
                    break;
                }
            };
            let sqhd = sq.head;
            did = true;
            let result = if qid == 0 {
                admin::handle(&self.sh, st, &cmd)
            } else {
                io::handle(&self.sh, &cmd, st.features.volatile_write_cache)
            };
            let (dw0, status) = match result {
                Ok(Outcome::Complete(dw0)) => (dw0, Status::SUCCESS),
                Ok(Outcome::Deferred) => continue,
                Err(e) => {
                    self.sh.errors.failed(e.status);
                    if let Some(src) = &e.source {
                        log::debug!(
                            "nvme {}: SQ {qid} opcode {:#x} cid {}: {:?}: {src}",
                            self.sh.serial,
                            cmd.cdw0.opc(),
                            cmd.cdw0.cid(),
                            e.status
                        );
                    }
                    (0, e.status)
                }
            };
            let cqe = Completion {
                dw0,
                dw1: 0,
                sqhd: sqhd as u16,
                sqid: qid,
                cid: cmd.cdw0.cid(),
                status: status_field(status),
            };
            self.post(st, cqid, cqe);
        }
        did
    }

    /// Posts `cqe` to CQ `cqid` (room was checked by the caller); a CQ the device
    /// cannot write is fatal (CSTS.CFS).
    fn post(&self, st: &mut State, cqid: u16, cqe: Completion) {
        if self.sh.reset_epoch.load(Ordering::Acquire) != st.epoch {
            return; // reset meanwhile: the queue is gone
        }
        let Some(cq) = st.cqs[usize::from(cqid)].as_mut() else {
            return;
        };
        match cq.push(&*self.sh.dma, cqe) {
            Ok(()) => {
                self.sh.completed.fetch_add(1, Ordering::Relaxed);
                match st.irq_cqs.iter_mut().find(|(c, _)| *c == cqid) {
                    Some((_, n)) => *n += 1,
                    None => st.irq_cqs.push((cqid, 1)),
                }
            }
            Err(e) => {
                log::warn!("nvme {}: posting to CQ {cqid} failed: {e}", self.sh.serial);
                self.fatal(st, Fatal::CqPost);
            }
        }
    }

    fn deliver_async_events(&self, st: &mut State) -> bool {
        let mut did = false;
        while !st.events.outstanding.is_empty() && !st.events.pending.is_empty() {
            if !self.cq_has_room(st, 0) {
                break;
            }
            let (Some(cid), Some(ev)) =
                (st.events.outstanding.pop(), st.events.pending.pop_front())
            else {
                break;
            };
            st.events.masked |= 1u8 << (ev.aet() & 7);
            let sqhd = st.sqs[0].as_ref().map_or(0, |s| s.head as u16);
            let cqe = Completion {
                dw0: ev.into_bits(),
                dw1: 0,
                sqhd,
                sqid: 0,
                cid,
                status: status_field(Status::SUCCESS),
            };
            self.post(st, 0, cqe);
            did = true;
        }
        did
    }

    /// Signals the vectors of the CQs that got entries in this pass. Interrupt
    /// Coalescing (§5.21.1.8), when the host turned it on, holds an I/O CQ's vector back
    /// until THR + 1 entries or TIME have accumulated on it; the admin CQ and vectors with
    /// CD set (§5.21.1.9) are never held. The worker keeps polling while a vector is held
    /// (`arm_notifications`), so its time limit is kept to within a poll.
    fn raise_interrupts(&self, st: &mut State) {
        let now = Instant::now();
        let coalescing = st.features.coalescing();
        for (cqid, entries) in std::mem::take(&mut st.irq_cqs) {
            let Some(cq) = st.cqs[usize::from(cqid)].as_ref() else {
                continue;
            };
            if !cq.ien {
                continue;
            }
            let v = cq.iv;
            if cqid == 0 || coalescing.is_none() || st.features.coalescing_disabled.contains(&v) {
                self.signal(v);
                continue;
            }
            match st.held_irqs.iter_mut().find(|h| h.vector == v) {
                Some(h) => h.entries += entries,
                None => st.held_irqs.push(HeldIrq {
                    vector: v,
                    entries,
                    since: now,
                }),
            }
        }
        let State {
            held_irqs,
            features,
            ..
        } = st;
        held_irqs.retain(|h| {
            let due = match coalescing {
                Some((threshold, time)) => {
                    h.entries >= threshold
                        || now.duration_since(h.since) >= time
                        || features.coalescing_disabled.contains(&h.vector)
                }
                None => true,
            };
            if due {
                self.signal(h.vector);
            }
            !due
        });
    }

    /// Signals vector `v`, or records it pending while INTMS masks it (pin-based and
    /// MSI interrupts only, §3.1.3).
    fn signal(&self, v: u16) {
        let masked = !self.sh.irq.msix_enabled() && {
            let mut r = self.sh.regs();
            let bit = 1u32.checked_shl(u32::from(v)).unwrap_or(0);
            if r.intms & bit != 0 {
                r.irq_pending |= bit;
                true
            } else {
                false
            }
        };
        if !masked {
            self.sh.irq.signal(v);
        }
    }
}

impl PciFunction for NvmeController {
    /// IDs, BARs, MSI-X, PM, PCIe (with FLR), DSN; see [`pci`].
    fn config_space(&self) -> ConfigSpace {
        self.config_space.clone()
    }

    /// Registers read as the spec says (reserved and write-only doorbells: 0), the
    /// MSI-X BAR as last written, the CMB through the DMA space; everything unclaimed
    /// (other BARs, accesses past a BAR's end, an unreachable CMB) as all-ones.
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]) {
        buf.fill(UNCLAIMED_READ);
        if !p2plab_pci::access_in_bar(offset, buf.len(), self.bar_size(bar)) {
            return;
        }
        match bar {
            REG_BAR => {
                buf.fill(0);
                let regs = self.sh.regs();
                for (i, b) in buf.iter_mut().enumerate() {
                    // offset + i lies inside the BAR (checked above): no overflow.
                    let o = offset + i as u64;
                    if o >= DBS {
                        break; // doorbells are write-only; reads return 0
                    }
                    let dword = regs.read_dword(o & !3);
                    *b = (dword >> ((o & 3) * 8)) as u8;
                }
            }
            MSIX_BAR => {
                let msix = lock(&self.sh.msix);
                copy_out(&msix, offset, buf);
            }
            CMB_BAR => {
                let read = self
                    .cmb_bus_address(offset)
                    .map(|addr| self.sh.dma.read(addr, buf));
                if !matches!(read, Some(Ok(()))) {
                    buf.fill(UNCLAIMED_READ);
                }
            }
            _ => {}
        }
    }

    /// Records a register or doorbell write; returns whether the worker must run
    /// (a doorbell, a CC change). MSI-X and trapped CMB writes never need it.
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if !p2plab_pci::access_in_bar(offset, data.len(), self.bar_size(bar)) {
            return false;
        }
        match bar {
            REG_BAR => self.reg_write(offset, data),
            MSIX_BAR => {
                let mut msix = lock(&self.sh.msix);
                copy_in(&mut msix, offset, data);
                false
            }
            CMB_BAR => {
                if let Some(addr) = self.cmb_bus_address(offset) {
                    let _ = self.sh.dma.write(addr, data);
                }
                false
            }
            _ => false,
        }
    }

    /// The CMB BAR's address: CMBSTS.CBAI is re-evaluated against it (CMBMSC.CBA must
    /// equal it).
    fn bar_moved(&self, bar: usize, address: Option<u64>) {
        if bar == CMB_BAR {
            self.sh.regs().cmb.set_bar_address(address);
        }
    }

    fn set_bus_master(&self, enabled: bool) {
        self.sh.bus_master.store(enabled, Ordering::Release);
        if enabled {
            self.kick();
        }
    }

    /// A Controller Level Reset (FLR or conventional reset, NVMe 1.4 §7.3.2): registers
    /// to power-on values, bus mastering off, the MSI-X bytes cleared, all queues deleted
    /// by the worker on its next pass. CMBMSC is kept, as across a Controller Reset
    /// (DESIGN.md §4): Linux writes it once per probe, so a reset through the PCI core
    /// with the driver bound would otherwise lose the CMB. Never blocks on the worker.
    fn reset(&self) {
        self.sh
            .errors
            .function_resets
            .fetch_add(1, Ordering::Relaxed);
        self.sh.bus_master.store(false, Ordering::Release);
        let mut regs = self.sh.regs();
        regs.reset();
        self.sh.doorbells.close_all();
        self.sh.reset_epoch.fetch_add(1, Ordering::AcqRel);
        drop(regs);
        lock(&self.sh.msix).fill(0);
        self.kick();
    }

    /// Services the controller once: carries out enable/reset/shutdown, then runs the
    /// admin queue and every I/O SQ for a bounded batch, completes async events and
    /// raises interrupts. Returns whether any work was done.
    fn process(&self) -> bool {
        let mut st = lock(&self.state);
        self.sh.work.store(false, Ordering::SeqCst);
        st.armed = false;
        let mut did = self.sync_enable(&mut st);
        if !st.enabled || st.failed || !self.sh.bus_master.load(Ordering::Acquire) {
            return did;
        }
        did |= self.doorbell_errors(&mut st);
        did |= self.service_sq(&mut st, 0, ADMIN_BATCH);
        let n = st.sqs.len() - 1;
        let start = st.rr;
        for k in 0..n {
            let qid = 1 + (start + k) % n;
            if st.sqs[qid].is_some() {
                did |= self.service_sq(&mut st, qid as u16, IO_BATCH);
            }
            if st.failed {
                break;
            }
        }
        st.rr = (start + 1) % n.max(1);
        // Bad shadow doorbell values found while servicing: raised now, so their
        // events go out in this pass rather than whenever something else wakes us.
        did |= self.doorbell_errors(&mut st);
        did |= self.deliver_async_events(&mut st);
        self.raise_interrupts(&mut st);
        did
    }

    /// `doorbell_invalid_register` / `doorbell_invalid_value` (rejected doorbell
    /// values), `fatal_enable` / `fatal_sq_fetch` / `fatal_cq_post` (why CSTS.CFS was
    /// set), `controller_resets` (CC.EN 1→0), `function_resets`, `cmb_address_invalid`
    /// (CMBMSC writes that left CMBSTS.CBAI set), `commands_failed` and
    /// `status_<mnemonic>` per error status completed (`status_prp_offset_invalid`).
    fn error_counters(&self) -> Vec<(String, u64)> {
        let db = &self.sh.doorbells;
        let mut out = vec![
            (
                "doorbell_invalid_register".to_string(),
                db.invalid_register.load(Ordering::Relaxed),
            ),
            (
                "doorbell_invalid_value".to_string(),
                db.invalid_value.load(Ordering::Relaxed),
            ),
        ];
        out.extend(self.sh.errors.export());
        out
    }

    /// A doorbell, a CC change, a Bus Master Enable or a reset arrived since `process`
    /// last started.
    fn needs_processing(&self) -> bool {
        self.sh.work.load(Ordering::Acquire)
    }

    /// Every completion posted, admin and I/O.
    fn completed(&self) -> Option<u64> {
        Some(self.sh.completed.load(Ordering::Relaxed))
    }

    /// Publishes EventIdx = tail on every I/O SQ with a shadow doorbell (the driver's next
    /// submission then traps) and reports whether a command slipped in before that, or
    /// an interrupt is held by coalescing (the worker must come back for it).
    fn arm_notifications(&self) -> bool {
        let mut st = lock(&self.state);
        st.armed = true;
        if !st.enabled || st.failed || !self.sh.bus_master.load(Ordering::Acquire) {
            return false;
        }
        let mut work = false;
        for qid in 1..st.sqs.len() {
            let Ok(qid) = u16::try_from(qid) else { break };
            if st.sqs[usize::from(qid)].is_some() {
                work |= self.sq_has_work(&mut st, qid);
            }
        }
        // A bad shadow tail found just now is work too (its event), and so is an
        // interrupt held by coalescing: it must go out within its time limit.
        work | self.doorbell_errors(&mut st) | !st.held_irqs.is_empty()
    }
}

fn copy_out(src: &[u8], offset: u64, buf: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = buf.len().min(src.len() - start);
    buf[..n].copy_from_slice(&src[start..start + n]);
}

fn copy_in(dst: &mut [u8], offset: u64, data: &[u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= dst.len() {
        return;
    }
    let n = data.len().min(dst.len() - start);
    dst[start..start + n].copy_from_slice(&data[..n]);
}

#[cfg(test)]
impl NvmeController {
    /// `fdatasync`s of each namespace's file so far, NSID 1 first.
    pub(crate) fn namespace_syncs(&self) -> Vec<u64> {
        self.sh
            .namespaces
            .iter()
            .map(|ns| ns.syncs.load(Ordering::Relaxed))
            .collect()
    }
}

impl std::fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeController")
            .field("serial", &self.sh.serial)
            .finish_non_exhaustive()
    }
}

// Shared state is reached from the vfio-user thread and the worker.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NvmeController>();
};
