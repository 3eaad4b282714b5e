//! The controller state the register path, the worker loop and the command workers
//! share (openvmm `storage/nvme` keeps it apart from the loop the same way).
//!
//! - [`Shared`]: identity, limits, the register file and the doorbell atomics. Reached
//!   from the vfio-user thread (register accesses) and the worker; its locks are never
//!   held across DMA.
//! - [`State`]: what only the worker touches (queues, features, async events), behind
//!   one lock held across DMA and file I/O by the worker's `process` pass.
//!
//! Nothing here knows the controller or the workers: they import this module, never
//! the other way round.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use nvme_spec::log::LogPageId;
use nvme_spec::{AsyncEventCompletion, AsyncEventType, Status};
use p2plab_memory::{DmaSpace, InterruptSink};

use crate::features::Features;
use crate::namespace::Namespace;
use crate::queue::{CompletionQueue, Doorbells, SubmissionQueue};
use crate::regs::RegFile;

/// The vendor log page 0xC0 source: returns the bytes to report (p2plab counters JSON).
pub type VendorLogSource = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Counters behind the SMART / Health log.
#[derive(Default)]
pub(crate) struct Stats {
    pub read_512: AtomicU64,
    pub written_512: AtomicU64,
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub media_errors: AtomicU64,
}

/// Why the controller set CSTS.CFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fatal {
    /// CC.EN was set with admin queue attributes or addresses it cannot use.
    Enable,
    /// An entry could not be fetched from a submission queue.
    SqFetch,
    /// A completion could not be posted to a completion queue.
    CqPost,
}

/// Counters of guest errors the controller caught, for
/// `PciFunction::error_counters`. Never reset: they count over the controller's life.
#[derive(Default)]
pub(crate) struct ErrorStats {
    /// Completions posted with an error status, by status.
    pub statuses: Mutex<BTreeMap<Status, u64>>,
    pub fatal_enable: AtomicU64,
    pub fatal_sq_fetch: AtomicU64,
    pub fatal_cq_post: AtomicU64,
    /// CC.EN 1→0 (Controller Reset).
    pub controller_resets: AtomicU64,
    /// Function resets (FLR, conventional reset).
    pub function_resets: AtomicU64,
    /// CMBMSC writes that left CMBSTS.CBAI set (CBA is not the CMB BAR's address).
    pub cmb_address_invalid: AtomicU64,
}

impl ErrorStats {
    pub fn failed(&self, status: Status) {
        *lock(&self.statuses).entry(status).or_default() += 1;
    }

    pub fn fatal(&self, why: Fatal) {
        match why {
            Fatal::Enable => &self.fatal_enable,
            Fatal::SqFetch => &self.fatal_sq_fetch,
            Fatal::CqPost => &self.fatal_cq_post,
        }
        .fetch_add(1, Relaxed);
    }

    /// `(name, count)` pairs: the fixed counters, `commands_failed` and one
    /// `status_<mnemonic>` per status seen (`status_0x<sct><sc>` for one without a name).
    pub fn export(&self) -> Vec<(String, u64)> {
        let statuses = lock(&self.statuses).clone();
        let mut out: Vec<(String, u64)> = [
            ("fatal_enable", &self.fatal_enable),
            ("fatal_sq_fetch", &self.fatal_sq_fetch),
            ("fatal_cq_post", &self.fatal_cq_post),
            ("controller_resets", &self.controller_resets),
            ("function_resets", &self.function_resets),
            ("cmb_address_invalid", &self.cmb_address_invalid),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c.load(Relaxed)))
        .collect();
        out.push(("commands_failed".into(), statuses.values().sum()));
        for (status, n) in statuses {
            let name = match status.name() {
                Some(m) => format!("status_{}", m.to_ascii_lowercase()),
                None => format!("status_{:#05x}", status.0),
            };
            out.push((name, n));
        }
        out
    }
}

/// What the worker and register paths share.
pub(crate) struct Shared {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub subnqn: String,
    pub mqes: u16,
    pub max_io_queues: u16,
    pub msix_vectors: u16,
    pub mdts: u8,
    pub dma: Arc<dyn DmaSpace>,
    pub irq: Arc<dyn InterruptSink>,
    pub regs: Mutex<RegFile>,
    pub doorbells: Doorbells,
    /// The worker has something to do (`needs_processing`); cleared when `process`
    /// starts.
    pub work: AtomicBool,
    /// Commands completed (posted to a CQ), for `PciFunction::completed`.
    pub completed: AtomicU64,
    /// Bus Master Enable as the host reports it; no DMA while clear.
    pub bus_master: AtomicBool,
    /// Bumped by every reset; the worker tears its state down when it sees a new value.
    pub reset_epoch: AtomicU64,
    /// The bytes of BAR4 that reach the device (QEMU emulates the MSI-X table itself).
    pub msix: Mutex<Vec<u8>>,
    pub vendor_log: RwLock<Option<VendorLogSource>>,
    pub namespaces: Vec<Namespace>,
    pub stats: Stats,
    pub errors: ErrorStats,
}

impl Shared {
    /// The register file, locked (never across DMA).
    pub fn regs(&self) -> MutexGuard<'_, RegFile> {
        lock(&self.regs)
    }
    /// Largest data transfer in bytes (MDTS).
    pub fn max_transfer(&self) -> u64 {
        crate::prp::PAGE_SIZE << self.mdts
    }
    /// Namespace `nsid` (1-based), if it exists.
    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        let i = usize::try_from(nsid).ok()?.checked_sub(1)?;
        self.namespaces.get(i)
    }
}

/// Async event bookkeeping (§5.2).
#[derive(Default)]
pub(crate) struct AsyncEvents {
    /// CIDs of outstanding Asynchronous Event Request commands.
    pub outstanding: Vec<u16>,
    pub pending: VecDeque<AsyncEventCompletion>,
    /// Event types reported and not yet cleared by reading their log page.
    pub masked: u8,
}

impl AsyncEvents {
    /// Queues event `ev` unless its type is masked (reported, log not read yet) or it
    /// is already pending.
    pub fn raise(&mut self, ev: AsyncEventCompletion) {
        let bit = 1u8 << (ev.aet() & 7);
        let dup = self.pending.iter().any(|p| p.into_bits() == ev.into_bits());
        if self.masked & bit == 0 && !dup && self.pending.len() < 16 {
            self.pending.push_back(ev);
        }
    }
    /// A Get Log Page without RAE for `lid` unmasks its event type.
    pub fn log_read(&mut self, lid: LogPageId) {
        let ty = match lid {
            LogPageId::ERROR_INFORMATION => AsyncEventType::ERROR_STATUS,
            LogPageId::SMART_HEALTH => AsyncEventType::SMART_HEALTH_STATUS,
            LogPageId::CHANGED_NAMESPACE_LIST | LogPageId::FIRMWARE_SLOT => AsyncEventType::NOTICE,
            _ => return,
        };
        self.masked &= !(1u8 << (ty.0 & 7));
    }
}

/// An interrupt vector held back by Interrupt Coalescing: the completion entries posted
/// for it since its last interrupt, and when the first of them was.
#[derive(Debug)]
pub(crate) struct HeldIrq {
    pub vector: u16,
    pub entries: u32,
    pub since: Instant,
}

/// Worker-owned state.
pub(crate) struct State {
    pub epoch: u64,
    pub enabled: bool,
    /// CSTS.CFS was set; nothing is processed until a reset.
    pub failed: bool,
    pub shutdown_done: bool,
    /// Index = queue id; 0 is the admin queue.
    pub sqs: Vec<Option<SubmissionQueue>>,
    pub cqs: Vec<Option<CompletionQueue>>,
    pub features: Features,
    pub events: AsyncEvents,
    /// Doorbell Buffer Config: (shadow doorbell buffer, EventIdx buffer).
    pub dbbuf: Option<(u64, u64)>,
    /// CQs with new entries in this pass and how many (interrupts to raise).
    pub irq_cqs: Vec<(u16, u32)>,
    /// Interrupt vectors held back by Interrupt Coalescing.
    pub held_irqs: Vec<HeldIrq>,
    /// Next I/O SQ to start the round robin at.
    pub rr: usize,
    /// The worker is about to sleep (`arm_notifications`): empty shadow-doorbell SQs
    /// publish EventIdx = tail, so the driver's next submission rings the MMIO
    /// doorbell. While the worker polls (cleared by `process`), EventIdx trails the
    /// tail and the driver submits without trapping.
    pub armed: bool,
    /// Vendor log 0xC0 as taken by the last read at offset 0: reads at a non-zero offset
    /// (a host fetching the page in chunks) are served from it, so the chunks of one
    /// fetch come from one snapshot and concatenate to a consistent document.
    pub vendor_log_snapshot: Option<Vec<u8>>,
}

impl State {
    /// A disabled controller's state with `queues` queue slots (admin + I/O).
    pub fn new(queues: usize, features: Features) -> Self {
        Self {
            epoch: 0,
            enabled: false,
            failed: false,
            shutdown_done: false,
            armed: false,
            sqs: (0..queues).map(|_| None).collect(),
            cqs: (0..queues).map(|_| None).collect(),
            features,
            events: AsyncEvents::default(),
            dbbuf: None,
            irq_cqs: Vec::new(),
            held_irqs: Vec::new(),
            rr: 0,
            vendor_log_snapshot: None,
        }
    }
}

/// Locks `m`, ignoring poisoning (a panicked holder left plain data behind).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
