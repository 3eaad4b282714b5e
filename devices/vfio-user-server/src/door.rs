//! The door: how a socket path is claimed and who may come in through it.
//!
//! - [`bind_private`] binds a listening socket with mode 0600 (the lab puts it in a
//!   directory it created 0700). A path that already holds a socket is probed first: a
//!   socket nobody listens on (a lab that was killed left it) is replaced, with a
//!   warning; one some live process listens on is never taken ([`BindError::InUse`]).
//! - [`PeerPolicy::admit`] checks each accepted connection's peer credentials
//!   (`SO_PEERCRED`, taken by the kernel at `connect`): the lab's owner (the effective
//!   uid of this process) and root may connect; anyone else is logged with `warn!` and
//!   the connection is closed, without touching the device or its current client.
//!
//! Socket permissions are the first lock and the uid check the second: a socket made
//! reachable by mistake (a mode changed, a shared directory) still admits nobody else.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Mode of every socket [`bind_private`] creates: read/write for the owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// Why a socket path could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Some process accepts connections on the path (another lab, or this one twice).
    #[error(
        "{}: a live process is listening on this socket (another lab?); refusing to take it over",
        path.display()
    )]
    InUse { path: PathBuf },
    /// Something other than a socket (a file, a directory, a symlink) is in the way.
    #[error("{}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    /// Probing the existing socket failed in a way that says nothing about a listener
    /// (e.g. no permission to connect): it is left alone.
    #[error("{}: cannot tell whether the existing socket is stale", path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: removing the stale socket", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: restricting the socket to its owner (mode 0600)", path.display())]
    Restrict {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bind a listening UNIX socket at `path`, mode [`SOCKET_MODE`].
///
/// An existing socket is probed with a `connect`: refused means nobody listens (it is
/// stale: removed with a warning, then replaced); accepted means a live listener, and
/// the path is refused with [`BindError::InUse`]. Anything else at the path is never
/// removed. Between `bind` and `chmod` the socket carries the umask's mode for an
/// instant; the directory's mode and the uid check cover that window.
pub fn bind_private(path: &Path) -> Result<UnixListener, BindError> {
    claim(path)?;
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.into(),
        source,
    })?;
    if let Err(source) =
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
    {
        let _ = std::fs::remove_file(path);
        return Err(BindError::Restrict {
            path: path.into(),
            source,
        });
    }
    Ok(listener)
}

/// Make `path` free for a new socket, or say why it is not.
fn claim(path: &Path) -> Result<(), BindError> {
    let probe = |source| BindError::Probe {
        path: path.into(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => return Err(BindError::NotASocket { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(probe(e)),
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse { path: path.into() }),
        // A listener whose backlog is full is alive.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
            Err(BindError::InUse { path: path.into() })
        }
        // It vanished since the lstat: the path is free.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::warn!(
                "{}: replacing a stale socket (nobody listens on it; a lab that was killed \
                 left it behind)",
                path.display()
            );
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(BindError::RemoveStale {
                    path: path.into(),
                    source,
                }),
            }
        }
        Err(e) => Err(probe(e)),
    }
}

/// Who is at the other end of a UNIX socket, as the kernel recorded it at `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer's credentials of a connected UNIX stream (`SO_PEERCRED`).
pub fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live ucred of that
    // size; the fd is a valid socket owned by `stream`.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Who may connect to a lab's sockets: its owner, and root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    owner: u32,
}

impl PeerPolicy {
    /// The lab belongs to `uid`.
    pub fn owner(uid: u32) -> Self {
        PeerPolicy { owner: uid }
    }

    /// The lab belongs to the effective uid of this process.
    pub fn current_user() -> Self {
        // SAFETY: geteuid has no arguments, cannot fail and touches no memory of ours.
        PeerPolicy::owner(unsafe { libc::geteuid() })
    }

    /// The owner's uid.
    pub fn owner_uid(&self) -> u32 {
        self.owner
    }

    /// Whether a peer running as `uid` may connect.
    pub fn allows(&self, uid: u32) -> bool {
        uid == self.owner || uid == 0
    }

    /// Check an accepted connection on `socket`: `true` to serve it; `false` (and a
    /// warning naming the peer) when its uid is not allowed or cannot be read. The
    /// caller then drops the stream, which closes it.
    pub fn admit(&self, stream: &UnixStream, socket: &Path) -> bool {
        match peer_credentials(stream) {
            Ok(c) if self.allows(c.uid) => true,
            Ok(c) => {
                log::warn!(
                    "{}: refused a connection from uid {} (pid {}): the lab belongs to uid {}",
                    socket.display(),
                    c.uid,
                    c.pid,
                    self.owner
                );
                false
            }
            Err(e) => {
                log::warn!(
                    "{}: refused a connection whose peer is unknown (SO_PEERCRED: {e})",
                    socket.display()
                );
                false
            }
        }
    }
}

impl Default for PeerPolicy {
    /// [`PeerPolicy::current_user`].
    fn default() -> Self {
        PeerPolicy::current_user()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_and_root_may_connect_nobody_else() {
        let p = PeerPolicy::owner(1000);
        assert!(p.allows(1000));
        assert!(p.allows(0), "root");
        assert!(!p.allows(1001));
        assert!(!p.allows(65534));
        let root_lab = PeerPolicy::owner(0);
        assert!(root_lab.allows(0) && !root_lab.allows(1000));
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_credentials(&a).unwrap();
        assert_eq!(c.pid, std::process::id() as i32);
        assert_eq!(c.uid, PeerPolicy::current_user().owner_uid());
        assert!(PeerPolicy::current_user().admit(&a, Path::new("pair")));
        // A lab owned by someone else admits us only if we are root.
        let other = PeerPolicy::owner(c.uid.wrapping_add(1));
        assert_eq!(other.admit(&a, Path::new("pair")), c.uid == 0);
    }
}
