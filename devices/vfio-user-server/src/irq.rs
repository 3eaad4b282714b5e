//! Interrupt eventfds handed over with DEVICE_SET_IRQS, and signalling them.

use crate::Errno;
use p2plab_memory::InterruptSink;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use vfio_user_proto::wire::IrqSet;
use vfio_user_proto::*;

#[derive(Default)]
struct IrqIndex {
    /// `IRQ_INFO_*` flags the device reported.
    flags: u32,
    fds: Vec<Option<Arc<File>>>,
    masked: Vec<bool>,
    pending: Vec<bool>,
}

impl IrqIndex {
    fn new(flags: u32, count: u32) -> Self {
        let n = count as usize;
        IrqIndex {
            flags,
            fds: vec![None; n],
            masked: vec![false; n],
            pending: vec![false; n],
        }
    }
    fn disable(&mut self) {
        self.fds.iter_mut().for_each(|f| *f = None);
        self.masked.iter_mut().for_each(|m| *m = false);
        self.pending.iter_mut().for_each(|p| *p = false);
    }
    /// Trigger vector `v`: returns the eventfd to write, or records it pending if masked.
    fn fire(&mut self, v: usize) -> Option<Arc<File>> {
        if *self.masked.get(v)? {
            self.pending[v] = true;
            return None;
        }
        let fd = self.fds.get(v)?.clone()?;
        if self.flags & IRQ_INFO_AUTOMASKED != 0 {
            self.masked[v] = true;
        }
        Some(fd)
    }
}

/// The interrupt eventfds of one client connection.
///
/// [`InterruptSink::signal`]`(vector)` writes the MSI-X eventfd of `vector` if the
/// client set one, else the MSI one, else INTx (vector 0). Masked vectors are recorded
/// as pending and delivered on unmask; INTx is automasked when the device reports
/// `IRQ_INFO_AUTOMASKED` (QEMU unmasks it on EOI). After disconnect it does nothing.
pub struct Irqs {
    state: Mutex<Vec<IrqIndex>>,
}

fn notify(fd: &File) {
    if let Err(e) = (&*fd).write_all(&1u64.to_ne_bytes()) {
        log::debug!("eventfd write failed: {e}");
    }
}

impl Irqs {
    /// `infos[i]` = (flags, count) of interrupt index `i`.
    pub(crate) fn new(infos: &[(u32, u32)]) -> Self {
        Irqs {
            state: Mutex::new(infos.iter().map(|&(f, c)| IrqIndex::new(f, c)).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IrqIndex>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the client installed an eventfd for `vector` of interrupt `index`.
    pub fn has_eventfd(&self, index: u32, vector: u32) -> bool {
        let st = self.lock();
        st.get(index as usize)
            .and_then(|i| i.fds.get(vector as usize))
            .is_some_and(|f| f.is_some())
    }

    /// Number of eventfds installed for interrupt `index`.
    pub fn eventfd_count(&self, index: u32) -> usize {
        self.lock()
            .get(index as usize)
            .map_or(0, |i| i.fds.iter().filter(|f| f.is_some()).count())
    }

    /// Trigger `vector` of interrupt `index` (respecting masks).
    pub fn trigger(&self, index: u32, vector: u32) {
        let fd = self
            .lock()
            .get_mut(index as usize)
            .and_then(|i| i.fire(vector as usize));
        if let Some(fd) = fd {
            notify(&fd);
        }
    }

    /// Drop every eventfd (disconnect).
    pub(crate) fn clear(&self) {
        self.lock().iter_mut().for_each(IrqIndex::disable);
    }

    /// DEVICE_SET_IRQS.
    pub(crate) fn set_irqs(
        &self,
        set: &IrqSet,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        let data_type = set.flags & IRQ_SET_DATA_TYPE_MASK;
        let action = set.flags & IRQ_SET_ACTION_TYPE_MASK;
        if set.flags & !(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK) != 0
            || data_type.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(Errno::EINVAL);
        }
        if data_type != IRQ_SET_DATA_EVENTFD && !fds.is_empty() {
            return Err(Errno::EINVAL);
        }
        let mut to_fire = Vec::new();
        {
            let mut st = self.lock();
            let idx = st.get_mut(set.index as usize).ok_or(Errno::EINVAL)?;
            let start = set.start as usize;
            let count = set.count as usize;
            let end = start.checked_add(count).ok_or(Errno::EINVAL)?;
            if count == 0 {
                // DATA_NONE or DATA_EVENTFD with TRIGGER and count 0 disables the index.
                if action == IRQ_SET_ACTION_TRIGGER
                    && data_type != IRQ_SET_DATA_BOOL
                    && fds.is_empty()
                {
                    idx.disable();
                    return Ok(());
                }
                return Err(Errno::EINVAL);
            }
            if end > idx.fds.len() {
                return Err(Errno::EINVAL);
            }
            let selected =
                |i: usize| data_type != IRQ_SET_DATA_BOOL || data.get(i).is_some_and(|&b| b != 0);
            match action {
                IRQ_SET_ACTION_TRIGGER if data_type == IRQ_SET_DATA_EVENTFD => {
                    if fds.is_empty() {
                        // QEMU sends runs of "-1" (unassigned) vectors without fds.
                        idx.fds[start..end].iter_mut().for_each(|f| *f = None);
                    } else if fds.len() != count {
                        return Err(Errno::EINVAL);
                    } else {
                        for (slot, fd) in idx.fds[start..end].iter_mut().zip(fds) {
                            *slot = Some(Arc::new(File::from(fd)));
                        }
                    }
                }
                IRQ_SET_ACTION_TRIGGER => {
                    for v in start..end {
                        if selected(v - start) {
                            to_fire.extend(idx.fire(v));
                        }
                    }
                }
                IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK
                    if data_type != IRQ_SET_DATA_EVENTFD =>
                {
                    let mask = action == IRQ_SET_ACTION_MASK;
                    for v in start..end {
                        if !selected(v - start) {
                            continue;
                        }
                        idx.masked[v] = mask;
                        if !mask && std::mem::take(&mut idx.pending[v]) {
                            to_fire.extend(idx.fire(v));
                        }
                    }
                }
                // Unmask/mask through an eventfd (KVM irqfd resampling) is not offered.
                _ => return Err(Errno::EINVAL),
            }
        }
        for fd in to_fire {
            notify(&fd);
        }
        Ok(())
    }
}

impl InterruptSink for Irqs {
    /// Whether the client installed any MSI-X vector.
    fn msix_enabled(&self) -> bool {
        self.eventfd_count(PCI_MSIX_IRQ_INDEX) > 0
    }

    fn signal(&self, vector: u16) {
        let v = vector as usize;
        let fd = {
            let mut st = self.lock();
            let has = |st: &Vec<IrqIndex>, index: u32, v: usize| {
                st.get(index as usize)
                    .and_then(|i| i.fds.get(v))
                    .is_some_and(|f| f.is_some())
            };
            let target = if has(&st, PCI_MSIX_IRQ_INDEX, v) {
                Some((PCI_MSIX_IRQ_INDEX, v))
            } else if has(&st, PCI_MSI_IRQ_INDEX, v) {
                Some((PCI_MSI_IRQ_INDEX, v))
            } else if has(&st, PCI_INTX_IRQ_INDEX, 0) {
                Some((PCI_INTX_IRQ_INDEX, 0))
            } else {
                None
            };
            match target {
                Some((index, v)) => st.get_mut(index as usize).and_then(|i| i.fire(v)),
                None => {
                    log::debug!("signal({vector}): no eventfd installed");
                    None
                }
            }
        };
        if let Some(fd) = fd {
            notify(&fd);
        }
    }
}
