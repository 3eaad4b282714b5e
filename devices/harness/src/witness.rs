//! The launcher's side of the CPU witness (`devices/tcg-witness`, a QEMU TCG plugin that
//! counts guest CPU loads/stores to given guest-physical windows).
//!
//! `p2plab run --cpu-witness` loads the plugin with `control=<run dir>/witness.sock`.
//! At each case BEGIN the launcher arms the plugin with the lab's memory BAR windows as
//! the guest programmed them (`Lab::bar_windows`) and takes a snapshot; at END it takes
//! another, disarms (an empty range set: boot and between-case time run at the plugin's
//! unarmed cost) and writes `cases/<case>/cpu.json`:
//!
//! ```json
//! {"ranges": [{"device": "gpu0", "bar": 2, "start": 4294967296, "len": 268435456,
//!              "loads": 0, "stores": 0, "load_bytes": 0, "store_bytes": 0,
//!              "io_accesses": 0}]}
//! ```
//! (the deltas over the case, one entry per window armed at BEGIN; `io_accesses` = how
//! many of those accesses QEMU trapped instead of doing directly).

use anyhow::{bail, Context, Result};
use p2plab_lab::BarWindow;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tcg_witness::{RangeCounts, RangeSpec, RangesFile, Snapshot};

/// The plugin's file name in a cargo target dir's `release/`.
pub const PLUGIN_FILE: &str = "libtcg_witness.so";

/// Where the plugin cdylib is: `explicit`, else `$P2PLAB_WITNESS_PLUGIN`, else
/// `$CARGO_TARGET_DIR/release`, `<repo>/target/release`, or next to this binary.
pub fn find_plugin(explicit: Option<&Path>, repo: &Path) -> Result<PathBuf> {
    let env = std::env::var_os("P2PLAB_WITNESS_PLUGIN")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if let Some(p) = explicit.map(Path::to_path_buf).or(env) {
        if p.is_file() {
            return Ok(p);
        }
        bail!("CPU witness plugin {} not found", p.display());
    }
    let mut cands = vec![];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        cands.push(PathBuf::from(t).join("release").join(PLUGIN_FILE));
    }
    cands.push(repo.join("target/release").join(PLUGIN_FILE));
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        cands.push(d.join(PLUGIN_FILE));
    }
    cands.into_iter().find(|c| c.is_file()).context(
        "CPU witness plugin not built: cargo build --release -p tcg-witness (or use scripts/run-guest --cpu-witness, \
         or --witness-plugin)",
    )
}

/// A connection to the plugin's control socket (one command line, one JSON reply line).
pub struct Witness {
    path: PathBuf,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
}

impl Witness {
    /// The socket QEMU's plugin creates at load; connected lazily on first use.
    pub fn new(path: PathBuf) -> Self {
        Witness { path, conn: None }
    }

    fn connect(&mut self) -> Result<&mut (UnixStream, BufReader<UnixStream>)> {
        if self.conn.is_none() {
            // The plugin binds the socket while QEMU starts; allow it a moment.
            let t = Instant::now();
            let s = loop {
                match UnixStream::connect(&self.path) {
                    Ok(s) => break s,
                    Err(e) if t.elapsed() > Duration::from_secs(5) => {
                        return Err(e).with_context(|| {
                            format!("connecting to the CPU witness at {}", self.path.display())
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let r = BufReader::new(s.try_clone()?);
            self.conn = Some((s, r));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Send one command, return its reply line. A broken connection is retried once.
    fn command(&mut self, cmd: &str) -> Result<String> {
        for attempt in 0..2 {
            let (w, r) = self.connect()?;
            let mut line = String::new();
            let res = w
                .write_all(format!("{cmd}\n").as_bytes())
                .and_then(|()| r.read_line(&mut line));
            match res {
                Ok(n) if n > 0 => return Ok(line),
                Ok(_) | Err(_) if attempt == 0 => self.conn = None,
                Ok(_) => bail!("CPU witness closed its control connection"),
                Err(e) => return Err(e).context("CPU witness control socket"),
            }
        }
        unreachable!("the loop returns")
    }

    fn expect_ok(&mut self, cmd: &str) -> Result<()> {
        let reply = self.command(cmd)?;
        let v: Value =
            serde_json::from_str(&reply).with_context(|| format!("CPU witness reply {reply:?}"))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        bail!(
            "CPU witness refused `{}`: {}",
            cmd.split(' ').next().unwrap_or(cmd),
            v.get("error").unwrap_or(&v)
        )
    }

    /// Witness exactly these windows from now on (empty: disarm).
    pub fn set_ranges(&mut self, windows: &[BarWindow]) -> Result<()> {
        let doc = RangesFile {
            ranges: windows
                .iter()
                .map(|w| RangeSpec {
                    device: w.device.clone(),
                    bar: w.bar,
                    start: w.start,
                    len: w.len,
                })
                .collect(),
        };
        self.expect_ok(&format!("ranges {}", serde_json::to_string(&doc)?))
    }

    /// Cumulative counts of every window ever set.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let reply = self.command("snapshot")?;
        serde_json::from_str(&reply).with_context(|| format!("CPU witness snapshot {reply:?}"))
    }
}

/// `cpu.json` of a case: per window armed at BEGIN, the counts `end − begin`.
pub fn case_delta(windows: &[BarWindow], begin: &Snapshot, end: &Snapshot) -> Value {
    let zero = RangeCounts::default();
    let ranges: Vec<Value> = windows
        .iter()
        .map(|w| {
            let b = begin.get(&w.device, w.bar).unwrap_or(&zero);
            let e = end.get(&w.device, w.bar).unwrap_or(&zero);
            json!({
                "device": w.device, "bar": w.bar, "start": w.start, "len": w.len,
                "loads": e.loads.saturating_sub(b.loads),
                "stores": e.stores.saturating_sub(b.stores),
                "load_bytes": e.load_bytes.saturating_sub(b.load_bytes),
                "store_bytes": e.store_bytes.saturating_sub(b.store_bytes),
                "io_accesses": e.io_accesses.saturating_sub(b.io_accesses),
            })
        })
        .collect();
    json!({ "ranges": ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(device: &str, bar: u32, loads: u64, stores: u64) -> RangeCounts {
        RangeCounts {
            device: device.into(),
            bar,
            start: 0x1000,
            len: 0x1000,
            active: true,
            loads,
            stores,
            load_bytes: loads * 8,
            store_bytes: stores * 8,
            io_accesses: 0,
        }
    }

    #[test]
    fn delta_covers_the_armed_windows_only() {
        let w = vec![BarWindow {
            device: "gpu0".into(),
            bar: 2,
            start: 0x1000,
            len: 0x1000,
        }];
        let b = Snapshot {
            ranges: vec![counts("gpu0", 2, 3, 1), counts("nvme0", 2, 9, 9)],
        };
        let e = Snapshot {
            ranges: vec![counts("gpu0", 2, 5, 11), counts("nvme0", 2, 20, 20)],
        };
        let d = case_delta(&w, &b, &e);
        assert_eq!(
            d,
            json!({"ranges": [{"device": "gpu0", "bar": 2, "start": 4096, "len": 4096, "loads": 2, "stores": 10,
                               "load_bytes": 16, "store_bytes": 80, "io_accesses": 0}]})
        );
        // A window first set at BEGIN has no earlier counts.
        let d = case_delta(&w, &Snapshot::default(), &e);
        assert_eq!(d["ranges"][0]["stores"], 11);
    }
}
