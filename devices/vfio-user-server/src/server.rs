//! The accept loop and the per-connection reader loop.

use crate::door::{bind_private, BindError};
use crate::link::Link;
use crate::session::Session;
use crate::socket::SocketTransport;
use crate::transport::{recv_full, Transport};
use crate::{Device, Errno, ServerConfig};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vfio_user_proto::{Header, MessageType, HEADER_SIZE};
use zerocopy::FromBytes;

/// Extra payload room beyond `max_data_xfer_size` (access prefixes, WRITE_MULTI, caps).
const PAYLOAD_SLACK: usize = 64 * 1024;

/// What the reader got from the stream.
enum Incoming {
    Message {
        hdr: Header,
        payload: Vec<u8>,
        fds: Vec<OwnedFd>,
    },
    /// A message that was read (and discarded) but breaks a limit: answer with `errno`.
    Rejected {
        hdr: Header,
        errno: Errno,
    },
    /// A header the stream cannot be resynchronized after.
    Fatal {
        hdr: Header,
    },
    Closed,
}

fn read_message(t: &dyn Transport, max_payload: usize, max_fds: usize) -> io::Result<Incoming> {
    let mut fds = Vec::new();
    let mut hb = [0u8; HEADER_SIZE];
    let n = recv_full(t, &mut hb, &mut fds)?;
    if n < HEADER_SIZE {
        if n > 0 {
            log::warn!("connection closed inside a header ({n} of {HEADER_SIZE} bytes)");
        }
        return Ok(Incoming::Closed);
    }
    let hdr = Header::read_from_bytes(&hb).map_err(|_| io::Error::other("header size"))?;
    let Some(len) = hdr.body_len() else {
        log::warn!("message size {} below the header size", hdr.size);
        return Ok(Incoming::Fatal { hdr });
    };
    if len > max_payload {
        // Stay in sync: consume the declared payload without keeping it.
        let mut left = len;
        let mut scratch = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(scratch.len());
            let got = recv_full(t, &mut scratch[..want], &mut fds)?;
            fds.clear();
            if got < want {
                return Ok(Incoming::Closed);
            }
            left -= got;
        }
        log::warn!(
            "{} of {} bytes exceeds the {max_payload}-byte limit",
            hdr.command(),
            hdr.size
        );
        return Ok(Incoming::Rejected {
            hdr,
            errno: Errno::E2BIG,
        });
    }
    let mut payload = vec![0u8; len];
    if recv_full(t, &mut payload, &mut fds)? < len {
        log::warn!("connection closed inside a {} payload", hdr.command());
        return Ok(Incoming::Closed);
    }
    if fds.len() > max_fds {
        log::warn!(
            "{} carried {} fds (limit {max_fds})",
            hdr.command(),
            fds.len()
        );
        return Ok(Incoming::Rejected {
            hdr,
            errno: Errno::EINVAL,
        });
    }
    Ok(Incoming::Message { hdr, payload, fds })
}

fn send_error(link: &Link, hdr: &Header, errno: Errno) {
    if hdr.message_type() != MessageType::Request || hdr.no_reply() {
        log::warn!(
            "{} id {} failed: {errno} (no reply sent)",
            hdr.command(),
            hdr.id
        );
        return;
    }
    log::debug!("<- {} id {} error {errno}", hdr.command(), hdr.id);
    let r = hdr.error_reply(errno.0 as u32);
    if let Err(e) = link.send(&r, &[], &[]) {
        log::debug!("sending error reply failed: {e}");
    }
}

/// Serve one client over `transport` on the calling thread (which becomes the
/// connection's reader thread) until it disconnects. Then the client's DMA maps and
/// irq fds are dropped and [`Device::disconnected`] is called (if VERSION completed).
pub fn serve_connection(
    device: Arc<dyn Device>,
    transport: Arc<dyn Transport>,
    config: &ServerConfig,
) {
    let max_payload = (config.max_data_xfer_size as usize).saturating_add(PAYLOAD_SLACK);
    let max_fds = config.max_msg_fds as usize;
    let link = Arc::new(Link::new(
        transport.clone(),
        std::thread::current().id(),
        config.max_data_xfer_size as usize,
        config.relay_timeout,
    ));
    let mut session = Session::new(device.clone(), config.clone(), link.clone());
    loop {
        let msg = match read_message(&*transport, max_payload, max_fds) {
            Ok(m) => m,
            Err(e) => {
                log::debug!("connection read failed: {e}");
                break;
            }
        };
        match msg {
            Incoming::Closed => break,
            Incoming::Fatal { hdr } => {
                send_error(&link, &hdr, Errno::EINVAL);
                break;
            }
            Incoming::Rejected { hdr, errno } => send_error(&link, &hdr, errno),
            Incoming::Message { hdr, payload, fds } => match hdr.message_type() {
                MessageType::Reply => {
                    log::debug!("-> reply {} id {}", hdr.command(), hdr.id);
                    link.complete(&hdr, payload);
                }
                MessageType::Invalid(t) => {
                    log::warn!("message type {t} of {}", hdr.command());
                    send_error(&link, &hdr, Errno::EINVAL);
                }
                MessageType::Request => {
                    log::debug!(
                        "-> {} id {} ({} bytes, {} fds)",
                        hdr.command(),
                        hdr.id,
                        payload.len(),
                        fds.len()
                    );
                    let result = session.handle(&hdr, &payload, fds);
                    // Before the VERSION reply goes out, so the device is ready for
                    // whatever the client sends next.
                    if let Some(client) = session.just_connected.take() {
                        device.connected(client);
                    }
                    match result {
                        Ok(_) if hdr.no_reply() => {}
                        Ok(reply) => {
                            let Some(rh) = hdr.reply(reply.payload.len()) else {
                                send_error(&link, &hdr, Errno::E2BIG);
                                continue;
                            };
                            log::debug!(
                                "<- {} id {} ({} bytes)",
                                hdr.command(),
                                hdr.id,
                                reply.payload.len()
                            );
                            let fds: Vec<_> = reply.fd.iter().map(|f| f.as_fd()).collect();
                            if let Err(e) = link.send(&rh, &reply.payload, &fds) {
                                log::debug!("sending reply failed: {e}");
                            }
                        }
                        Err(errno) => send_error(&link, &hdr, errno),
                    }
                }
            },
        }
    }
    session.teardown();
}

struct Inner {
    path: PathBuf,
    /// (dev, ino) of the socket file we created, so shutdown unlinks only ours.
    ident: (u64, u64),
    listener: UnixListener,
    device: Arc<dyn Device>,
    config: ServerConfig,
    shutdown: AtomicBool,
    current: Mutex<Option<Arc<dyn Transport>>>,
}

/// A vfio-user server for one device on one UNIX socket.
///
/// Dropping the handle does not stop a spawned accept loop: call [`Server::shutdown`].
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind `path` with the default [`ServerConfig`]: mode 0600; a stale socket is
    /// replaced, a live one or any other file is refused ([`bind_private`]).
    pub fn bind(path: impl AsRef<Path>, device: Arc<dyn Device>) -> Result<Server, BindError> {
        Self::bind_with_config(path, device, ServerConfig::default())
    }

    /// [`Server::bind`] with `config`; only peers that `config.peers` allows are served.
    pub fn bind_with_config(
        path: impl AsRef<Path>,
        device: Arc<dyn Device>,
        config: ServerConfig,
    ) -> Result<Server, BindError> {
        let path = path.as_ref().to_path_buf();
        let listener = bind_private(&path)?;
        let m = std::fs::symlink_metadata(&path).map_err(|source| BindError::Bind {
            path: path.clone(),
            source,
        })?;
        Ok(Server {
            inner: Arc::new(Inner {
                path,
                ident: (m.dev(), m.ino()),
                listener,
                device,
                config,
                shutdown: AtomicBool::new(false),
                current: Mutex::new(None),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run the accept loop on a new thread: one client at a time, the next accepted
    /// after a disconnect, until [`Server::shutdown`].
    pub fn spawn(&self) -> io::Result<JoinHandle<()>> {
        let inner = self.inner.clone();
        let name = format!(
            "vfu:{}",
            inner
                .path
                .file_name()
                .map_or("?".into(), |n| n.to_string_lossy())
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || accept_loop(&inner))
    }

    /// Run the accept loop on the calling thread.
    pub fn run(&self) {
        accept_loop(&self.inner)
    }

    /// Stop accepting, disconnect the current client and unlink the socket.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(t) = inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.shutdown();
        }
        // Wake a blocked accept().
        let _ = UnixStream::connect(&inner.path);
        if let Ok(m) = std::fs::symlink_metadata(&inner.path) {
            if (m.dev(), m.ino()) == inner.ident {
                let _ = std::fs::remove_file(&inner.path);
            }
        }
    }
}

fn accept_loop(inner: &Inner) {
    while !inner.shutdown.load(Ordering::Acquire) {
        let stream = match inner.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if inner.shutdown.load(Ordering::Acquire) {
                    break;
                }
                log::warn!("accept on {}: {e}", inner.path.display());
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        if inner.shutdown.load(Ordering::Acquire) {
            break;
        }
        // A refused peer is only logged and closed: the device, and the client being
        // served next, never hear of it.
        if !inner.config.peers.admit(&stream, &inner.path) {
            continue;
        }
        let t: Arc<dyn Transport> = Arc::new(SocketTransport::new(stream));
        {
            let mut cur = inner.current.lock().unwrap_or_else(|p| p.into_inner());
            if inner.shutdown.load(Ordering::Acquire) {
                break;
            }
            *cur = Some(t.clone());
        }
        log::debug!("client connected on {}", inner.path.display());
        serve_connection(inner.device.clone(), t, &inner.config);
        log::debug!("client disconnected from {}", inner.path.display());
        inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
