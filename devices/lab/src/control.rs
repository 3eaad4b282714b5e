//! The lab's control socket: a UNIX stream socket at `<run dir>/control.sock` that
//! answers one-line commands with one JSON line.
//!
//! Commands: `stats` (the counter contract: `{"devices": [...]}`), `windows` (decoded
//! memory BAR windows, for the CPU witness), `ping`.

use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type Handler = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Serve `handler` on `path` from a background thread (one short-lived thread per client).
pub fn spawn(path: &Path, handler: Handler) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let h = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || serve_client(conn, h));
            }
        })?;
    Ok(())
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

    #[test]
    fn answers_commands_and_unknowns() {
        let dir = std::env::temp_dir().join(format!("p2plab-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("control.sock");
        spawn(
            &sock,
            Arc::new(|c: &str| (c == "stats").then(|| "{\"devices\":[]}".to_string())),
        )
        .unwrap();
        assert_eq!(request(&sock, "stats").unwrap(), "{\"devices\":[]}");
        assert_eq!(request(&sock, "ping").unwrap(), "\"pong\"");
        assert!(request(&sock, "bogus").unwrap().contains("unknown command"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
