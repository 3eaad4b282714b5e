//! The byte stream a connection runs over, behind a trait so the dispatch loop can be
//! driven by an in-memory pipe in tests (and fuzzed) as well as by a UNIX socket.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

/// A bidirectional byte stream that can carry file descriptors (SCM_RIGHTS).
///
/// `recv` is only ever called by the connection's reader thread; `send` may be called
/// from any thread, but callers serialize whole messages with their own lock.
pub trait Transport: Send + Sync {
    /// Read up to `buf.len()` bytes; fds that arrive with them are appended to `fds`.
    /// `Ok(0)` means the peer closed the stream.
    fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize>;
    /// Write all of `data`, with `fds` attached to its first byte.
    fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()>;
    /// Unblock a pending `recv` (it returns 0) and make later I/O fail.
    fn shutdown(&self);
}

#[derive(Default)]
struct PipeState {
    /// Segments in send order, each with the fds sent with it (taken at its first byte).
    segs: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// Bytes of the front segment already consumed.
    pos: usize,
    closed: bool,
}

#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    cv: Condvar,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

/// One end of an in-memory, fd-passing stream pair (see [`MemTransport::pair`]).
pub struct MemTransport {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

impl MemTransport {
    /// Two connected ends: what one sends the other receives.
    pub fn pair() -> (MemTransport, MemTransport) {
        let a = Arc::new(Pipe::default());
        let b = Arc::new(Pipe::default());
        (
            MemTransport {
                rx: a.clone(),
                tx: b.clone(),
            },
            MemTransport { rx: b, tx: a },
        )
    }

    /// Close only the sending direction (the peer reads EOF after the queued bytes).
    pub fn close_send(&self) {
        self.tx.close();
    }
}

impl Transport for MemTransport {
    fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.rx.lock();
        loop {
            let pos = st.pos;
            if let Some((seg, seg_fds)) = st.segs.front_mut() {
                if pos == 0 {
                    fds.append(seg_fds);
                }
                let n = buf.len().min(seg.len() - pos);
                buf[..n].copy_from_slice(&seg[pos..pos + n]);
                if pos + n == seg.len() {
                    st.segs.pop_front();
                    st.pos = 0;
                } else {
                    st.pos = pos + n;
                }
                return Ok(n);
            }
            if st.closed {
                return Ok(0);
            }
            st = self.rx.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let owned = fds
            .iter()
            .map(|f| f.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        let mut st = self.tx.lock();
        if st.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !data.is_empty() {
            st.segs.push_back((data.to_vec(), owned));
        }
        drop(st);
        self.tx.cv.notify_all();
        Ok(())
    }

    fn shutdown(&self) {
        self.rx.close();
        self.tx.close();
    }
}

impl Drop for MemTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Read exactly `buf.len()` bytes. Returns how many were read before EOF (short only
/// at EOF).
pub(crate) fn recv_full(
    t: &dyn Transport,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match t.recv(&mut buf[done..], fds) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn mem_transport_carries_bytes_and_fds() {
        let (a, b) = MemTransport::pair();
        let f = p2plab_memory::memfd_create("t", 4096).unwrap();
        a.send(b"hello", &[f.as_fd()]).unwrap();
        a.send(b"!", &[]).unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 3];
        assert_eq!(b.recv(&mut buf, &mut fds).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(fds.len(), 1);
        let mut rest = [0u8; 3];
        assert_eq!(recv_full(&b, &mut rest, &mut fds).unwrap(), 3);
        assert_eq!(&rest, b"lo!");
        assert_eq!(fds.len(), 1);
        a.close_send();
        assert_eq!(b.recv(&mut buf, &mut fds).unwrap(), 0);
    }
}
