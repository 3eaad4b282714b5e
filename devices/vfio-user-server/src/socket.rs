//! [`Transport`] over a connected UNIX stream socket, passing fds with SCM_RIGHTS.
//!
//! This is the one module of the crate with `unsafe`: `recvmsg`/`sendmsg` control
//! messages have no safe std API on stable Rust.

use crate::transport::Transport;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Room for the kernel's limit of fds in one SCM_RIGHTS message (`SCM_MAX_FD` = 253),
/// so the control data is never truncated (a truncation would close fds silently).
const MAX_RECV_FDS: usize = 253;
const CMSG_BUF_WORDS: usize = (MAX_RECV_FDS * 4 + 64) / 8;

/// A connected UNIX socket.
pub struct SocketTransport {
    stream: UnixStream,
}

impl SocketTransport {
    pub fn new(stream: UnixStream) -> Self {
        SocketTransport { stream }
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct of integers and pointers; all-zero is a valid
    // (empty) value for it.
    unsafe { std::mem::zeroed() }
}

impl Transport for SocketTransport {
    fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        let mut cmsg = [0u64; CMSG_BUF_WORDS];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg = zeroed_msghdr();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        let n = loop {
            // SAFETY: msg points at a live iovec covering `buf` and at `cmsg`, both
            // valid for the lengths given, and outliving the call.
            let n =
                unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: msg was filled by a successful recvmsg; the CMSG_* macros only walk
        // inside msg_control/msg_controllen.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: c is a non-null header inside the control buffer (CMSG_FIRSTHDR/
            // CMSG_NXTHDR guarantee the header fits); read unaligned to be safe.
            let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(c) };
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN is a pure size computation.
                let hdr_len = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = (h.cmsg_len as usize).saturating_sub(hdr_len)
                    / std::mem::size_of::<libc::c_int>();
                // SAFETY: c is a valid header; CMSG_DATA points just after it.
                let data = unsafe { libc::CMSG_DATA(c) }.cast::<libc::c_int>();
                for i in 0..count {
                    // SAFETY: the kernel wrote `count` ints after the header, inside the
                    // buffer (cmsg_len covers them).
                    let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                    if fd >= 0 {
                        // SAFETY: SCM_RIGHTS installed this fd in our table just now;
                        // nobody else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR; returns null past the end.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("SCM_RIGHTS control data truncated"));
        }
        Ok(n)
    }

    fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut done = 0usize;
        let mut first = true;
        while done < data.len() || (first && !fds.is_empty()) {
            let rest = &data[done..];
            let mut iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            let mut msg = zeroed_msghdr();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            let mut cmsg = [0u64; CMSG_BUF_WORDS];
            if first && !fds.is_empty() {
                if fds.len() > MAX_RECV_FDS {
                    return Err(io::Error::from(io::ErrorKind::InvalidInput));
                }
                let bytes = (fds.len() * std::mem::size_of::<libc::c_int>()) as u32;
                // SAFETY: pure size computations.
                let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
                msg.msg_control = cmsg.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                // SAFETY: the control buffer is large enough for `space` bytes (checked
                // by the fd-count limit) and msg points at it.
                let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
                if c.is_null() {
                    return Err(io::Error::other("no room for control message"));
                }
                // SAFETY: c points at the start of our zeroed, 8-byte aligned buffer,
                // which has room for the header and `bytes` of fds.
                unsafe {
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
                    let p = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    for (i, fd) in fds.iter().enumerate() {
                        std::ptr::write_unaligned(p.add(i), fd.as_raw_fd());
                    }
                }
            }
            // SAFETY: msg points at live iovec/control buffers valid for their lengths.
            let n = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            first = false;
            done += n as usize;
            if n == 0 && !rest.is_empty() {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn passes_fds_over_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (SocketTransport::new(a), SocketTransport::new(b));
        let f1 = p2plab_memory::memfd_create("a", 4096).unwrap();
        let f2 = p2plab_memory::memfd_create("b", 4096).unwrap();
        a.send(b"0123456789abcdef", &[f1.as_fd(), f2.as_fd()])
            .unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 16];
        let n = crate::transport::recv_full(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(n, 16);
        assert_eq!(&buf, b"0123456789abcdef");
        assert_eq!(fds.len(), 2);
        a.shutdown();
        assert_eq!(b.recv(&mut buf, &mut fds).unwrap(), 0);
    }
}
