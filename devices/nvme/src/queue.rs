//! Submission and completion queues (spec §4.1) and the doorbell registers.
//!
//! Doorbell writes arrive on the vfio-user thread and must never wait for the worker,
//! so the doorbell values live in atomics ([`Doorbells`]); the queues themselves
//! ([`SubmissionQueue`], [`CompletionQueue`]) belong to the worker's state.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use nvme_spec::{Command, Completion, CqeStatus, CQE_SIZE, SQE_SIZE};
use p2plab_memory::{BusAddr, DmaError, DmaSpace};
use zerocopy::{FromBytes, IntoBytes};

/// Error-status async events noticed by [`Doorbells::write`], as bits.
pub const DB_ERR_INVALID_REGISTER: u32 = 1 << 0;
/// See [`DB_ERR_INVALID_REGISTER`].
pub const DB_ERR_INVALID_VALUE: u32 = 1 << 1;

/// The doorbell registers (SQyTDBL / CQyHDBL, stride 4): index `2 * qid` is the SQ tail,
/// `2 * qid + 1` the CQ head.
pub struct Doorbells {
    values: Box<[AtomicU32]>,
    /// Entries of the queue behind each doorbell; 0 = no such queue.
    limits: Box<[AtomicU32]>,
    errors: AtomicU32,
    /// Rejected doorbell values, counted (never reset): writes to a doorbell with no
    /// queue behind it, and out-of-range values (MMIO or shadow).
    pub invalid_register: AtomicU64,
    pub invalid_value: AtomicU64,
}

impl Doorbells {
    pub fn new(queues: usize) -> Self {
        let n = queues * 2;
        Self {
            values: (0..n).map(|_| AtomicU32::new(0)).collect(),
            limits: (0..n).map(|_| AtomicU32::new(0)).collect(),
            errors: AtomicU32::new(0),
            invalid_register: AtomicU64::new(0),
            invalid_value: AtomicU64::new(0),
        }
    }

    /// A guest write of `value` to doorbell `index`. Returns whether it was accepted;
    /// a rejected write only records an error event (§3.1.24: the write is ignored).
    pub fn write(&self, index: usize, value: u32) -> bool {
        let limit = self
            .limits
            .get(index)
            .map_or(0, |l| l.load(Ordering::Acquire));
        if limit == 0 {
            self.note_error(DB_ERR_INVALID_REGISTER);
            return false;
        }
        if value >= limit {
            self.note_error(DB_ERR_INVALID_VALUE);
            return false;
        }
        self.values[index].store(value, Ordering::Release);
        true
    }

    pub fn value(&self, index: usize) -> u32 {
        self.values
            .get(index)
            .map_or(0, |v| v.load(Ordering::Acquire))
    }

    /// Opens (`entries > 0`) or closes doorbell `index`; its value restarts at 0.
    pub fn set_limit(&self, index: usize, entries: u32) {
        if let (Some(v), Some(l)) = (self.values.get(index), self.limits.get(index)) {
            v.store(0, Ordering::Release);
            l.store(entries, Ordering::Release);
        }
    }

    pub fn close_all(&self) {
        for i in 0..self.limits.len() {
            self.set_limit(i, 0);
        }
    }

    pub fn take_errors(&self) -> u32 {
        self.errors.swap(0, Ordering::AcqRel)
    }

    /// Records a rejected doorbell value: from a write, or found by the worker (a bad
    /// shadow doorbell value).
    pub fn note_error(&self, bits: u32) {
        if bits & DB_ERR_INVALID_REGISTER != 0 {
            self.invalid_register.fetch_add(1, Ordering::Relaxed);
        }
        if bits & DB_ERR_INVALID_VALUE != 0 {
            self.invalid_value.fetch_add(1, Ordering::Relaxed);
        }
        self.errors.fetch_or(bits, Ordering::AcqRel);
    }
}

/// Doorbell index of SQ `qid`'s tail.
pub fn sq_db_index(qid: u16) -> usize {
    2 * usize::from(qid)
}

/// Doorbell index of CQ `qid`'s head.
pub fn cq_db_index(qid: u16) -> usize {
    2 * usize::from(qid) + 1
}

/// Shadow doorbell and EventIdx slots of one doorbell (Doorbell Buffer Config, §5.8).
#[derive(Copy, Clone, Debug)]
pub struct Shadow {
    pub db: BusAddr,
    pub ei: BusAddr,
}

impl Shadow {
    /// The slots of doorbell `index` in buffers at `dbs` / `eis`.
    pub fn at(dbs: u64, eis: u64, index: usize) -> Option<Self> {
        let off = u64::try_from(index).ok()?.checked_mul(4)?;
        Some(Self {
            db: BusAddr(dbs.checked_add(off)?),
            ei: BusAddr(eis.checked_add(off)?),
        })
    }

    pub fn read_db(&self, dma: &dyn DmaSpace) -> Result<u32, DmaError> {
        let mut b = [0u8; 4];
        dma.read(self.db, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write_db(&self, dma: &dyn DmaSpace, v: u32) -> Result<(), DmaError> {
        dma.write(self.db, &v.to_le_bytes())
    }

    pub fn write_ei(&self, dma: &dyn DmaSpace, v: u32) -> Result<(), DmaError> {
        dma.write(self.ei, &v.to_le_bytes())
    }
}

/// A submission queue.
#[derive(Debug)]
pub struct SubmissionQueue {
    pub qid: u16,
    pub base: BusAddr,
    /// Number of entries (QSIZE + 1).
    pub entries: u32,
    pub head: u32,
    pub tail: u32,
    pub cqid: u16,
    pub shadow: Option<Shadow>,
    /// The last out-of-range value read from the shadow doorbell: reported once, not
    /// again on every pass while the driver leaves it there.
    pub rejected_shadow: Option<u32>,
}

impl SubmissionQueue {
    pub fn new(qid: u16, base: u64, entries: u32, cqid: u16) -> Self {
        Self {
            qid,
            base: BusAddr(base),
            entries,
            head: 0,
            tail: 0,
            cqid,
            shadow: None,
            rejected_shadow: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Fetches the entry at the head and advances the head.
    pub fn pop(&mut self, dma: &dyn DmaSpace) -> Result<Command, DmaError> {
        // head < entries <= 65536, so the offset is < 4 MiB.
        let off = u64::from(self.head) * SQE_SIZE as u64;
        let addr = self.base.checked_add(off).ok_or(DmaError::Overflow {
            addr: self.base.0,
            len: off,
        })?;
        let mut raw = [0u8; SQE_SIZE];
        dma.read(addr, &mut raw)?;
        self.head = (self.head + 1) % self.entries;
        Ok(Command::read_from_bytes(&raw).unwrap_or_default())
    }
}

/// A completion queue.
#[derive(Debug)]
pub struct CompletionQueue {
    pub qid: u16,
    pub base: BusAddr,
    pub entries: u32,
    pub head: u32,
    pub tail: u32,
    /// Phase Tag of the entries being written now (starts at 1).
    pub phase: bool,
    pub iv: u16,
    pub ien: bool,
    /// Number of SQs completing into this CQ.
    pub sq_count: u32,
    pub shadow: Option<Shadow>,
    /// The last rejected shadow head (see [`SubmissionQueue::rejected_shadow`]).
    pub rejected_shadow: Option<u32>,
}

impl CompletionQueue {
    pub fn new(qid: u16, base: u64, entries: u32, iv: u16, ien: bool) -> Self {
        Self {
            qid,
            base: BusAddr(base),
            entries,
            head: 0,
            tail: 0,
            phase: true,
            iv,
            ien,
            sq_count: 0,
            shadow: None,
            rejected_shadow: None,
        }
    }

    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }

    /// Writes `cqe` at the tail with the current phase and advances the tail.
    pub fn push(&mut self, dma: &dyn DmaSpace, mut cqe: Completion) -> Result<(), DmaError> {
        let off = u64::from(self.tail) * CQE_SIZE as u64;
        let addr = self.base.checked_add(off).ok_or(DmaError::Overflow {
            addr: self.base.0,
            len: off,
        })?;
        cqe.status = CqeStatus::from_bits(cqe.status.into_bits()).with_p(self.phase);
        let bytes = cqe.as_bytes();
        // The driver polls the phase tag (in the last dword's upper half) to learn that an
        // entry is new: write everything else first, and only then the status field, so it
        // can never see the new phase next to stale DW0/SQHD/CID.
        dma.write(addr, &bytes[..CQE_SIZE - 2])?;
        fence(Ordering::Release);
        let status_addr = addr
            .checked_add(CQE_SIZE as u64 - 2)
            .ok_or(DmaError::Overflow {
                addr: addr.0,
                len: 2,
            })?;
        dma.write(status_addr, &bytes[CQE_SIZE - 2..])?;
        self.tail += 1;
        if self.tail == self.entries {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }
}
