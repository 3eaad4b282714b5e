//! Control protocol (one command per line, one JSON reply line per command) and its
//! UNIX socket server.
//!
//! | command | reply |
//! |---|---|
//! | `ranges {"ranges":[...]}` | `{"ok":true}` or `{"error":"..."}` |
//! | `reload` (re-read the `ranges=FILE` file) | `{"ok":true}` or `{"error":"..."}` |
//! | `snapshot` | [`Snapshot`](crate::spec::Snapshot) JSON |
//! | `reset` | `{"ok":true}` |
//! | anything else | `{"error":"..."}` |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::spec::RangesFile;
use crate::table::{RangeError, Witness};

/// Why a range set could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The ranges file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid ranges JSON.
    #[error("parsing ranges JSON: {0}")]
    Parse(#[from] serde_json::Error),
    /// Valid JSON but an invalid set.
    #[error(transparent)]
    Invalid(#[from] RangeError),
    /// `reload` without a `ranges=FILE` argument.
    #[error("no ranges file configured")]
    NoFile,
}

/// Parse and install a `{"ranges": [...]}` document.
pub fn load_ranges_json(witness: &Witness, json: &str) -> Result<(), LoadError> {
    let file: RangesFile = serde_json::from_str(json)?;
    witness.set_ranges(&file)?;
    Ok(())
}

/// Read and install the ranges file. A missing file means "no ranges yet" (the
/// launcher writes it once the guest has programmed the BARs).
pub fn load_ranges_file(witness: &Witness, path: &Path) -> Result<(), LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_ranges_json(witness, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoadError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn ok() -> String {
    r#"{"ok":true}"#.to_owned()
}

fn error(msg: impl std::fmt::Display) -> String {
    serde_json::json!({ "error": msg.to_string() }).to_string()
}

/// Execute one command line; returns the reply line (without newline).
pub fn handle_line(witness: &Witness, ranges_file: Option<&Path>, line: &str) -> String {
    let line = line.trim();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    match cmd {
        "ranges" => match load_ranges_json(witness, rest.trim()) {
            Ok(()) => ok(),
            Err(e) => error(e),
        },
        "reload" => match ranges_file
            .ok_or(LoadError::NoFile)
            .and_then(|p| load_ranges_file(witness, p))
        {
            Ok(()) => ok(),
            Err(e) => error(e),
        },
        "snapshot" => match serde_json::to_string(&witness.snapshot()) {
            Ok(s) => s,
            Err(e) => error(e),
        },
        "reset" => {
            witness.reset();
            ok()
        }
        "" => error("empty command"),
        other => error(format!(
            "unknown command {other:?} (ranges, reload, snapshot, reset)"
        )),
    }
}

/// Serve one client until it closes the connection.
fn serve_client(
    witness: &Witness,
    ranges_file: Option<&Path>,
    stream: UnixStream,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let mut reply = handle_line(witness, ranges_file, &line?);
        reply.push('\n');
        writer.write_all(reply.as_bytes())?;
    }
    Ok(())
}

/// Bind `path` (replacing a stale socket file there) and serve clients on a
/// background thread, each connection on its own thread.
pub fn spawn_server(
    witness: Arc<Witness>,
    path: &Path,
    ranges_file: Option<PathBuf>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let ranges_file = ranges_file.map(Arc::new);
    std::thread::Builder::new()
        .name("tcg-witness-ctl".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tcg-witness: control accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let witness = Arc::clone(&witness);
                let ranges_file = ranges_file.clone();
                let spawned = std::thread::Builder::new()
                    .name("tcg-witness-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(
                            &witness,
                            ranges_file.as_deref().map(PathBuf::as_path),
                            stream,
                        ) {
                            eprintln!("tcg-witness: control client: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("tcg-witness: control client thread: {e}");
                }
            }
        })
}

/// Poll `path`'s modification time and reinstall its ranges whenever it changes, so a
/// launcher can just rewrite the file once BAR addresses are known.
pub fn spawn_file_watcher(
    witness: Arc<Witness>,
    path: PathBuf,
    period: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    std::thread::Builder::new()
        .name("tcg-witness-watch".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let now = mtime(&path);
            if now != last {
                last = now;
                if let Err(e) = load_ranges_file(&witness, &path) {
                    eprintln!("tcg-witness: {e}");
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Snapshot;
    use crate::table::Access;

    const GPU_RANGES: &str = r#"{"ranges":[{"device":"gpu0","bar":2,"start":4096,"len":4096}]}"#;

    #[test]
    fn ranges_then_snapshot_round_trip() {
        let w = Witness::new();
        assert_eq!(
            handle_line(&w, None, &format!("ranges {GPU_RANGES}")),
            r#"{"ok":true}"#
        );
        w.record(0x1000, 8, Access::Store, false);
        let snap: Snapshot = serde_json::from_str(&handle_line(&w, None, "snapshot")).unwrap();
        let r = snap.get("gpu0", 2).expect("gpu0 BAR 2");
        assert_eq!(
            (r.start, r.len, r.stores, r.store_bytes, r.loads),
            (4096, 4096, 1, 8, 0)
        );
    }

    #[test]
    fn snapshot_json_has_the_contract_field_names() {
        let w = Witness::new();
        handle_line(&w, None, &format!("ranges {GPU_RANGES}"));
        let v: serde_json::Value =
            serde_json::from_str(&handle_line(&w, None, "snapshot")).unwrap();
        let r = &v["ranges"][0];
        for key in [
            "device",
            "bar",
            "start",
            "len",
            "loads",
            "stores",
            "load_bytes",
            "store_bytes",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {v}");
        }
    }

    #[test]
    fn reset_command_zeroes() {
        let w = Witness::new();
        handle_line(&w, None, &format!("ranges {GPU_RANGES}"));
        w.record(0x1000, 8, Access::Load, false);
        assert_eq!(handle_line(&w, None, "reset"), r#"{"ok":true}"#);
        assert_eq!(w.snapshot().get("gpu0", 2).map(|r| r.loads), Some(0));
    }

    #[test]
    fn bad_json_is_an_error_reply() {
        let w = Witness::new();
        let reply = handle_line(&w, None, "ranges {not json");
        assert!(reply.starts_with(r#"{"error":"#), "{reply}");
    }

    #[test]
    fn unknown_command_is_an_error_reply() {
        let reply = handle_line(&Witness::new(), None, "frobnicate");
        assert!(reply.contains("unknown command"), "{reply}");
    }

    #[test]
    fn reload_without_file_is_an_error_reply() {
        let reply = handle_line(&Witness::new(), None, "reload");
        assert!(reply.contains("no ranges file"), "{reply}");
    }

    #[test]
    fn missing_ranges_file_means_no_ranges() {
        let w = Witness::new();
        load_ranges_file(&w, Path::new("/nonexistent/tcg-witness-ranges.json")).unwrap();
        assert!(!w.armed());
    }

    #[test]
    fn socket_server_answers_commands() {
        let dir = std::env::temp_dir().join(format!("tcg-witness-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("ctl.sock");
        let file = dir.join("ranges.json");
        std::fs::write(&file, GPU_RANGES).unwrap();
        let w = Arc::new(Witness::new());
        spawn_server(Arc::clone(&w), &sock, Some(file)).unwrap();

        let stream = UnixStream::connect(&sock).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut ask = |cmd: &str| {
            writer.write_all(format!("{cmd}\n").as_bytes()).unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line
        };
        assert_eq!(ask("reload"), "{\"ok\":true}\n");
        w.record(0x1fff, 1, Access::Load, false);
        let snap: Snapshot = serde_json::from_str(&ask("snapshot")).unwrap();
        assert_eq!(snap.get("gpu0", 2).map(|r| r.loads), Some(1));
        std::fs::remove_dir_all(&dir).ok();
    }
}
