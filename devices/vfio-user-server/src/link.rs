//! The shared write side of a connection: serialized sends from any thread, and
//! server→client requests whose replies the reader thread routes back by message id.

use crate::transport::Transport;
use p2plab_memory::DmaError;
use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use vfio_user_proto::{Command, Header, HEADER_SIZE};
use zerocopy::IntoBytes;

/// Outcome of a server→client request: the reply payload, or the client's errno.
type ReplyResult = Result<Vec<u8>, u32>;

#[derive(Default)]
struct Pending {
    slot: Mutex<Option<ReplyResult>>,
    cv: Condvar,
}

pub(crate) struct Link {
    transport: Arc<dyn Transport>,
    /// Held while one whole message is written, so messages never interleave.
    send_lock: Mutex<()>,
    pending: Mutex<PendingTable>,
    next_id: AtomicU16,
    /// The connection's reader thread: it must never wait for a reply itself.
    reader: ThreadId,
    closed: AtomicBool,
    /// Negotiated max data bytes per DMA_READ/WRITE message.
    pub(crate) max_xfer: AtomicUsize,
    timeout: Duration,
}

#[derive(Default)]
struct PendingTable {
    map: HashMap<u16, Arc<Pending>>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        reader: ThreadId,
        max_xfer: usize,
        timeout: Duration,
    ) -> Self {
        Link {
            transport,
            send_lock: Mutex::new(()),
            pending: Mutex::new(PendingTable::default()),
            next_id: AtomicU16::new(0),
            reader,
            closed: AtomicBool::new(false),
            max_xfer: AtomicUsize::new(max_xfer),
            timeout,
        }
    }

    /// Write one message (header + payload) atomically with respect to other senders.
    pub(crate) fn send(
        &self,
        hdr: &Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(HEADER_SIZE + payload.len());
        buf.extend_from_slice(hdr.as_bytes());
        buf.extend_from_slice(payload);
        let _g = lock(&self.send_lock);
        self.transport.send(&buf, fds)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Send a request to the client and wait for its reply payload. Never called with
    /// a lock held by the caller's caller chain in this crate; fails instead of
    /// deadlocking when called on the reader thread.
    pub(crate) fn request(&self, command: Command, payload: &[u8]) -> Result<Vec<u8>, DmaError> {
        if std::thread::current().id() == self.reader {
            return Err(DmaError::Relay(
                "relay from the connection's reader thread would deadlock (reply first, relay on a worker)".into(),
            ));
        }
        let p = Arc::new(Pending::default());
        let id = {
            let mut t = lock(&self.pending);
            if t.closed {
                return Err(DmaError::Relay("client disconnected".into()));
            }
            let mut tries = 0u32;
            loop {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                if let std::collections::hash_map::Entry::Vacant(slot) = t.map.entry(id) {
                    slot.insert(p.clone());
                    break id;
                }
                tries += 1;
                if tries > u16::MAX as u32 {
                    return Err(DmaError::Relay("no free message id".into()));
                }
            }
        };
        let hdr = Header::request(id, command, payload.len())
            .ok_or_else(|| DmaError::Relay("message too large".into()))?;
        log::debug!("-> {command} id {id} ({} bytes)", payload.len());
        if let Err(e) = self.send(&hdr, payload, &[]) {
            lock(&self.pending).map.remove(&id);
            return Err(DmaError::Relay(format!("send failed: {e}")));
        }
        let deadline = Instant::now() + self.timeout;
        let mut slot = lock(&p.slot);
        loop {
            if let Some(r) = slot.take() {
                return r.map_err(|errno| {
                    DmaError::Relay(format!("{command} failed in the client: errno {errno}"))
                });
            }
            let now = Instant::now();
            if now >= deadline {
                drop(slot);
                lock(&self.pending).map.remove(&id);
                return Err(DmaError::Relay(format!(
                    "{command} id {id}: no reply within {:?}",
                    self.timeout
                )));
            }
            slot =
                p.cv.wait_timeout(slot, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
        }
    }

    /// Reader thread: a reply arrived; hand it to the waiting requester, if any.
    pub(crate) fn complete(&self, hdr: &Header, payload: Vec<u8>) {
        let p = lock(&self.pending).map.remove(&hdr.id);
        match p {
            Some(p) => {
                let r = if hdr.is_error() {
                    Err(hdr.error)
                } else {
                    Ok(payload)
                };
                *lock(&p.slot) = Some(r);
                p.cv.notify_all();
            }
            None => log::warn!(
                "reply id {} ({}) matches no outstanding request",
                hdr.id,
                hdr.command()
            ),
        }
    }

    /// The connection is gone: fail every waiter now and all later requests.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let drained: Vec<_> = {
            let mut t = lock(&self.pending);
            t.closed = true;
            t.map.drain().map(|(_, p)| p).collect()
        };
        for p in drained {
            *lock(&p.slot) = Some(Err(libc::ECONNRESET as u32));
            p.cv.notify_all();
        }
        self.transport.shutdown();
    }
}
