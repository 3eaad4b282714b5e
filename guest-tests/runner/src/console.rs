//! The serial console: KTAP/marker output and the host ACK handshake.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use p2plab_guest_abi::Marker;

pub struct Console {
    out: std::io::Stdout,
    tty: Option<File>,
    timeout: Duration,
    pending: Vec<u8>,
}

impl Console {
    /// `ack`: wait for `P2PLAB-ACK` lines on `tty` after each marker.
    pub fn open(tty: &str, ack: bool, timeout: Duration) -> Console {
        let tty = if ack {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags_noctty()
                .open(tty)
            {
                Ok(f) => {
                    quiet_tty(&f);
                    Some(f)
                }
                Err(e) => {
                    println!("# p2plab-guest: cannot open {tty} for the host handshake: {e}");
                    None
                }
            }
        } else {
            None
        };
        Console {
            out: std::io::stdout(),
            tty,
            timeout,
            pending: vec![],
        }
    }

    /// Print one line in a single write (kernel messages interleave per write).
    pub fn line(&mut self, s: &str) {
        let mut l = String::with_capacity(s.len() + 1);
        l.push_str(s);
        l.push('\n');
        let _ = self.out.write_all(l.as_bytes());
        let _ = self.out.flush();
    }

    /// Print a case boundary (`P2PLAB-CASE-BEGIN <name>` or `P2PLAB-CASE-END <name>`)
    /// and wait for `P2PLAB-ACK <name>`. False if no ACK came.
    pub fn mark(&mut self, marker: Marker<'_>) -> bool {
        self.line(&marker.to_string());
        let Some(tty) = self.tty.as_mut() else {
            return true;
        };
        let (Marker::CaseBegin(name) | Marker::CaseEnd(name)) = marker else {
            return true;
        };
        let want = Marker::Ack(name).to_string();
        let deadline = Instant::now() + self.timeout;
        loop {
            while let Some(p) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
                let l: Vec<u8> = self.pending.drain(..=p).collect();
                let l = String::from_utf8_lossy(&l);
                if l.trim() == want {
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let msg = format!(
                    "# p2plab-guest: ERROR: no '{want}' from the host within {} s after {}",
                    self.timeout.as_secs(),
                    marker.keyword()
                );
                self.line(&msg);
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: tty.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one valid pollfd, count 1.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                let mut buf = [0u8; 256];
                match tty.read(&mut buf) {
                    Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}
impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// Line mode without echo (the host's ACKs must not show up on the console), and drop
/// whatever input was queued before the run.
fn quiet_tty(f: &File) {
    let fd = f.as_raw_fd();
    // SAFETY: termios is plain data; fd is an open tty (errors are ignored: a non-tty
    // simply keeps its settings).
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
            t.c_lflag |= libc::ICANON;
            t.c_iflag |= libc::ICRNL;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        libc::tcflush(fd, libc::TCIFLUSH);
    }
}
