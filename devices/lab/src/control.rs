//! The lab's control socket: a UNIX stream socket at `<run dir>/control.sock` that
//! answers one-line commands with one JSON line.
//!
//! Commands: `stats` (the counter contract: `{"devices": [...]}`), `windows` (decoded
//! memory BAR windows, for the CPU witness), `ping`.
//!
//! It is behind the same door as the device sockets (`vfio_user_server::bind_private`,
//! `PeerPolicy`): mode 0600, only the lab's owner and root are answered.

use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vfio_user_server::{bind_private, PeerPolicy};

pub type Handler = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A running control socket; [`Control::shutdown`] (or drop) stops it and unlinks the
/// socket if it is still the one this lab bound.
pub struct Control {
    path: PathBuf,
    /// (dev, ino) of our socket file.
    ident: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Serve `handler` on `path` from a background thread (one short-lived thread per
/// client). The socket is the lab's like its device sockets: mode 0600, a stale one
/// replaced, a live one refused, and only the lab's owner (and root) admitted.
pub fn spawn(path: &Path, handler: Handler) -> anyhow::Result<Control> {
    let listener = bind_private(path).context("control socket")?;
    let m = std::fs::symlink_metadata(path)
        .with_context(|| format!("control socket {}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stop, path) = (stop.clone(), path.to_path_buf());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &path, &handler, &stop))?
    };
    Ok(Control {
        path: path.to_path_buf(),
        ident: (m.dev(), m.ino()),
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &UnixListener, path: &Path, handler: &Handler, stop: &AtomicBool) {
    let peers = PeerPolicy::current_user();
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if !peers.admit(&conn, path) {
            continue; // logged; dropping the stream closes it
        }
        let h = handler.clone();
        let _ = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || serve_client(conn, h));
    }
}

impl Control {
    /// Stop accepting and unlink the socket (only if it is still ours).
    pub fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocked accept().
        let _ = UnixStream::connect(&self.path);
        let _ = thread.join();
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_client(conn: UnixStream, handler: Handler) {
    let Ok(w) = conn.try_clone() else { return };
    let mut w = std::io::BufWriter::new(w);
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let cmd = line.trim();
        let reply = match cmd {
            "ping" => Some("\"pong\"".to_string()),
            _ => handler(cmd),
        }
        .unwrap_or_else(|| {
            serde_json::json!({"error": format!("unknown command '{cmd}'")}).to_string()
        });
        if writeln!(w, "{reply}").and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

/// Send one command and read the one-line reply.
pub fn request(sock: &Path, cmd: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(sock)
        .with_context(|| format!("connecting to {} (is the lab running?)", sock.display()))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    writeln!(s, "{cmd}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    anyhow::ensure!(!line.is_empty(), "control socket closed without a reply");
    Ok(line.trim_end().to_string())
}

/// A lab in another process (`p2plab serve --dir DIR`), seen through its control
/// socket: counters and BAR windows for a guest run booted against it.
pub struct RemoteLab {
    sock: PathBuf,
}

impl RemoteLab {
    /// The lab whose run directory (or control socket) is `target`; it must answer.
    pub fn connect(target: &Path) -> anyhow::Result<RemoteLab> {
        let sock = socket_of(target);
        let pong = request(&sock, "ping")?;
        anyhow::ensure!(
            pong == "\"pong\"",
            "{} answered '{pong}' to ping: not a p2plab control socket",
            sock.display()
        );
        Ok(RemoteLab { sock })
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// The counters, or why they could not be read.
    pub fn try_snapshot(&self) -> anyhow::Result<p2plab_counters::Counters> {
        let reply = request(&self.sock, "stats")?;
        serde_json::from_str(&reply).context("control socket sent invalid counters")
    }
}

impl crate::lab::LabView for RemoteLab {
    /// The counters; if the lab cannot be reached, no devices and an `error` (the
    /// case's counter assertions then fail, naming it).
    fn snapshot(&self) -> p2plab_counters::Counters {
        self.try_snapshot().unwrap_or_else(|e| {
            log::warn!("lab at {}: {e:#}", self.sock.display());
            p2plab_counters::Counters {
                error: Some(format!("{e:#}")),
                ..Default::default()
            }
        })
    }

    fn bar_windows(&self) -> Vec<crate::lab::BarWindow> {
        request(&self.sock, "windows")
            .and_then(|r| serde_json::from_str(&r).context("invalid windows JSON"))
            .unwrap_or_else(|e| {
                log::warn!("lab at {}: windows: {e:#}", self.sock.display());
                vec![]
            })
    }
}

fn socket_of(target: &Path) -> PathBuf {
    if target.is_dir() {
        target.join("control.sock")
    } else {
        target.to_path_buf()
    }
}

/// `p2plab stats [RUN_DIR | SOCKET]`: print the live counters, pretty JSON.
pub fn stats_main(target: &Path) -> anyhow::Result<i32> {
    let reply = request(&socket_of(target), "stats")?;
    let v: serde_json::Value =
        serde_json::from_str(&reply).context("control socket sent invalid JSON")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_only() -> Handler {
        Arc::new(|c: &str| (c == "stats").then(|| "{\"devices\":[]}".to_string()))
    }

    #[test]
    fn answers_commands_and_unknowns() {
        let dir = std::env::temp_dir().join(format!("p2plab-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("control.sock");
        let mut control = spawn(&sock, stats_only()).unwrap();
        assert_eq!(request(&sock, "stats").unwrap(), "{\"devices\":[]}");
        assert_eq!(request(&sock, "ping").unwrap(), "\"pong\"");
        assert!(request(&sock, "bogus").unwrap().contains("unknown command"));
        control.shutdown();
        assert!(!sock.exists(), "unlinked at shutdown");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_control_socket_is_not_taken_and_a_stale_one_is() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("p2plab-ctl2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("control.sock");
        drop(UnixListener::bind(&sock).unwrap()); // stale
        let first = spawn(&sock, stats_only()).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = spawn(&sock, stats_only())
            .err()
            .expect("live socket refused");
        assert!(
            format!("{e:#}").contains("a live process is listening"),
            "{e:#}"
        );
        drop(e);
        assert_eq!(
            request(&sock, "ping").unwrap(),
            "\"pong\"",
            "first undisturbed"
        );
        drop(first);
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
