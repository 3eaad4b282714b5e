//! The door: only the lab's owner (and root) get in. A peer of another uid that
//! reaches the socket anyway (its mode opened by mistake) is logged and closed, and the
//! server goes on serving.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, Once};
use support::*;
use vfio_user_server::{PeerPolicy, ServerConfig};

/// uid/gid the forked client switches to.
const NOBODY: u32 = 65534;

/// Log records of this test binary, as "LEVEL message".
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            LOGS.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in this binary");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// How the forked client's attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// connect() failed with this errno.
    ConnectFailed(i32),
    /// Connected, then the server closed the connection (read returned 0).
    ClosedByServer,
    /// Connected and nothing happened within the timeout: the server is serving it.
    Served,
    Other(i32),
}

/// Fork a child that becomes uid/gid `uid`, connects to `path` and waits (2 s at most)
/// for the server to close the connection.
fn connect_as(uid: u32, path: &std::path::Path) -> Attempt {
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs is prepared before the fork: after it, the child of
    // this multithreaded process makes raw system calls only.
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let addr_len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: the child only calls async-signal-safe system calls on memory prepared
    // above (or on its own stack) and leaves with _exit; the parent only waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            if libc::syscall(libc::SYS_setgid, uid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                libc::_exit(100);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(101);
            }
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(fd, (&raw const addr).cast(), addr_len) != 0 {
                // errno values are small; 1..=99 means "connect failed with it".
                let e = *libc::__errno_location();
                libc::_exit(e.clamp(1, 99));
            }
            let mut b = [0u8; 16];
            let n = libc::read(fd, b.as_mut_ptr().cast(), b.len());
            libc::_exit(match n {
                0 => 0,
                n if n < 0 => 102,
                _ => 103,
            });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        match libc::WEXITSTATUS(status) {
            0 => Attempt::ClosedByServer,
            e @ 1..=99 => Attempt::ConnectFailed(e),
            102 => Attempt::Served,
            e => Attempt::Other(e),
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn another_users_connection_is_refused_logged_and_the_lab_serves_on() {
    if !is_root() {
        eprintln!("skipped: switching to uid {NOBODY} needs root");
        return;
    }
    capture_logs();
    let r = serve("door.sock", ServerConfig::default());
    let path = r.server.path().to_path_buf();

    // First lock: the socket is 0600, so nobody's connect() is refused by the kernel.
    assert_eq!(
        connect_as(NOBODY, &path),
        Attempt::ConnectFailed(libc::EACCES)
    );

    // Second lock: with the mode opened by mistake the kernel lets the peer in, and the
    // server closes it after reading its uid.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(connect_as(NOBODY, &path), Attempt::ClosedByServer);
    let logs = LOGS.lock().unwrap().clone();
    let refusal = format!("refused a connection from uid {NOBODY}");
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains(&refusal) && l.contains("door.sock")),
        "{logs:?}"
    );
    assert_eq!(
        r.dev.connects.load(Ordering::SeqCst),
        0,
        "the device never saw it"
    );

    // The lab is undisturbed: its owner (root here) is served as before.
    let mut c = r.raw();
    c.handshake();
    c.region_read(7, 0, 4).ok();
    drop(c);
    r.stop();
}

#[test]
fn a_lab_owned_by_another_uid_refuses_us_unless_we_are_root() {
    capture_logs();
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    let config = ServerConfig {
        peers: PeerPolicy::owner(me.wrapping_add(4242)),
        ..Default::default()
    };
    let r = serve("door-owner.sock", config);
    let mut c = r.raw();
    if me == 0 {
        c.handshake();
        assert_eq!(r.dev.connects.load(Ordering::SeqCst), 1, "root may connect");
    } else {
        assert!(c.recv().is_none(), "closed without a word");
        assert_eq!(r.dev.connects.load(Ordering::SeqCst), 0);
    }
    drop(c);
    r.stop();
}
