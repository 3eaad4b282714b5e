//! `p2plab summary`: the suite's closing table, `summary.json` and `junit.xml`.
//!
//! `scripts/test` runs one guest per topology into `OUT/<topology>/` and the host rows
//! (cargo, setup check, the harness's own test) with their logs in `OUT/<row>.log`; this
//! reads every topology's `results.ktap` (the verdicts, host assertions already applied)
//! with each case's `result.json` (seconds) and `counters.json` (key counters), prints
//! one line per case and one per row (its wall time: where the suite's time went), and
//! writes
//! - `OUT/summary.json` = `{"cases": [{"case", "topology", "result", "seconds",
//!   "key_counters", "message", "details"?}], "rows": [{"row", "kind", "result",
//!   "seconds", "passed", "failed", "skipped"}], "suite": {"jobs", "shard",
//!   "wall_seconds", "setup_seconds", "row_seconds"}, "environment": {"<topology>":
//!   {...}}, "closing"}`
//!   (`details`: a failure's or skip's KTAP diagnostics or log tail; `environment`: what
//!   produced the results — QEMU, kernel release, toolroot recipe, from each run's
//!   `run.json`);
//! - `OUT/junit.xml` ([`crate::junit`]): one testsuite per row, one testcase per case.
//!
//! `p2plab suite merge` ([`merge_main`]) joins shards' `summary.json` files into one
//! (and its `junit.xml`). Exit status 1 if any case is `not ok` or a topology run
//! produced no results.

use crate::junit;
use crate::ktap::{self, CaseOutput, Verdict};
use crate::suite::Shard;
use anyhow::Context;
use p2plab_counters::{Counters, DeviceSnapshot, DirSnapshot};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One case (a host row is one case of topology `host`).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Row {
    pub case: String,
    pub topology: String,
    pub result: String,
    pub seconds: f64,
    pub key_counters: String,
    pub message: String,
    /// A failure's or skip's longer story: the case's KTAP diagnostics (host assertions
    /// included) and kernel report, or a host row's log tail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Is a suite row a host row or a guest boot?
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    Host,
    Topology,
}

/// One suite row: a host row or a topology's boot, with its wall time.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct SuiteRow {
    pub row: String,
    pub kind: RowKind,
    pub result: String,
    pub seconds: f64,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl SuiteRow {
    fn of(row: &str, kind: RowKind, seconds: f64, cases: &[Row]) -> SuiteRow {
        let count = |v: Verdict| {
            cases
                .iter()
                .filter(|c| Verdict::from_word(&c.result) == v)
                .count()
        };
        let (passed, failed, skipped) = (
            count(Verdict::Pass),
            count(Verdict::Fail),
            count(Verdict::Skip),
        );
        let result = if failed > 0 || cases.is_empty() {
            Verdict::Fail
        } else if passed == 0 {
            Verdict::Skip
        } else {
            Verdict::Pass
        };
        SuiteRow {
            row: row.into(),
            kind,
            result: result.as_str().into(),
            seconds,
            passed,
            failed,
            skipped,
        }
    }

    /// The cases of this row among a suite's.
    fn cases<'a>(&'a self, all: &'a [Row]) -> impl Iterator<Item = &'a Row> + 'a {
        all.iter().filter(move |c| match self.kind {
            RowKind::Host => c.topology == "host" && c.case == self.row,
            RowKind::Topology => c.topology == self.row,
        })
    }
}

/// The last `n` lines of a log, if it exists.
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    let mut t = String::new();
    if from > 0 {
        t.push_str(&format!("[… last {n} lines of {}]\n", path.display()));
    }
    t.push_str(&lines[from..].join("\n"));
    t
}

const LOG_TAIL_LINES: usize = 60;

fn mib(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else if n >= 1 << 20 {
        format!("{:.1}M", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.0}K", (n as f64 / 1024.0).ceil())
    }
}

/// "peer 64.0M, ram 172K, relay 0" summed over the lab's devices as bus masters.
pub fn key_counters(delta: &Counters) -> String {
    let devs = &delta.devices;
    if devs.is_empty() {
        return "(no p2plab devices)".into();
    }
    let sum = |f: &dyn Fn(&DeviceSnapshot) -> u64| devs.iter().map(f).sum::<u64>();
    let rw = |v: &DirSnapshot| v.read_bytes + v.write_bytes;
    let peer = sum(&|d| d.dma.peers.values().map(rw).sum());
    let own = sum(&|d| rw(&d.dma.self_));
    let ram = sum(&|d| rw(&d.dma.host_memory));
    let relay = sum(&|d| rw(&d.dma.client_relay));
    format!(
        "peer {} self {} ram {} relay {}",
        mib(peer),
        mib(own),
        mib(ram),
        mib(relay)
    )
}

/// One topology's run directory: a row per case (a `(boot)` failure when it has no
/// results; `log` is the row's output, whose tail then says why), and the row's seconds
/// (`timing.json`: image and boot to the end, when the caller did not time it).
pub fn collect_topology(dir: &Path, topology: &str, log: &Path) -> (Vec<Row>, f64) {
    let boot_failure = |message: &str| Row {
        case: "(boot)".into(),
        topology: topology.into(),
        result: Verdict::Fail.as_str().into(),
        seconds: 0.0,
        key_counters: String::new(),
        message: message.into(),
        details: log_tail(log, LOG_TAIL_LINES),
    };
    let timing: Option<Value> = std::fs::read_to_string(dir.join("timing.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let seconds = timing.map_or(0.0, |t| {
        t["image_seconds"].as_f64().unwrap_or(0.0) + t["total_seconds"].as_f64().unwrap_or(0.0)
    });
    let Ok(ktap) = std::fs::read_to_string(dir.join("results.ktap")) else {
        return (
            vec![boot_failure("no results.ktap: the run did not start")],
            seconds,
        );
    };
    let cases = ktap::parse_with_output(&ktap);
    if cases.is_empty() {
        return (vec![boot_failure("results.ktap has no results")], seconds);
    }
    let mut rows = Vec::new();
    for CaseOutput {
        result,
        diagnostics,
    } in cases
    {
        let cdir = dir.join("cases").join(&result.name);
        let read = |f: &str| {
            std::fs::read_to_string(cdir.join(f))
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        };
        let seconds = read("result.json")
            .and_then(|v| v["seconds"].as_f64())
            .unwrap_or(0.0);
        let key = read("counters.json")
            .and_then(|v| serde_json::from_value::<Counters>(v).ok())
            .map(|c| key_counters(&c))
            .unwrap_or_default();
        let mut details = String::new();
        if result.verdict != Verdict::Pass {
            details = diagnostics.join("\n");
            let splat = log_tail(&cdir.join("splat.txt"), LOG_TAIL_LINES);
            if !splat.is_empty() {
                details.push_str(&format!(
                    "\n--- cases/{}/splat.txt ---\n{splat}",
                    result.name
                ));
            }
        }
        rows.push(Row {
            case: result.name,
            topology: topology.into(),
            result: result.verdict.as_str().into(),
            seconds,
            key_counters: key,
            message: result.message,
            details,
        });
    }
    (rows, seconds)
}

/// The topology directories of `out`: `only` (in that order) when given, else every
/// sub-directory but the dot ones (the harness's own tests, expected to fail).
fn topology_dirs(out: &Path, only: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if !only.is_empty() {
        return Ok(only.iter().map(|t| (t.clone(), out.join(t))).collect());
    }
    let mut dirs: Vec<_> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    Ok(dirs
        .into_iter()
        .map(|d| {
            let name = d
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, d)
        })
        .collect())
}

/// Every case of the topologies under `out` (`only`, else every sub-directory but the
/// dot ones).
pub fn collect(out: &Path, only: &[String]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, dir) in topology_dirs(out, only)? {
        rows.extend(collect_topology(&dir, &name, &out.join(format!("{name}.log"))).0);
    }
    Ok(rows)
}

/// `NAME:RESULT:SECONDS[:MESSAGE]` (a host row) → its case; a failed row's details are
/// the tail of `OUT/NAME.log`.
fn host_row(out: &Path, h: &str) -> anyhow::Result<Row> {
    let mut it = h.splitn(4, ':');
    let (Some(case), Some(result), Some(secs)) = (it.next(), it.next(), it.next()) else {
        anyhow::bail!("--host-row wants NAME:RESULT:SECONDS[:MESSAGE], got '{h}'");
    };
    let verdict = Verdict::from_word(result);
    Ok(Row {
        case: case.into(),
        topology: "host".into(),
        result: verdict.as_str().into(),
        seconds: secs.parse().unwrap_or(0.0),
        key_counters: String::new(),
        message: it.next().unwrap_or_default().trim().into(),
        details: if verdict == Verdict::Fail {
            log_tail(&out.join(format!("{case}.log")), LOG_TAIL_LINES)
        } else {
            String::new()
        },
    })
}

/// What `p2plab summary` is told besides the output directory.
#[derive(Debug, Default)]
pub struct SummaryArgs {
    /// `NAME:RESULT:SECONDS[:MESSAGE]` per host row.
    pub host_rows: Vec<String>,
    /// The topology rows this suite ran (default: every sub-directory).
    pub topologies: Vec<String>,
    /// `TOPOLOGY:SECONDS`: a topology row's wall time as the suite measured it.
    pub row_seconds: Vec<String>,
    /// The suite's wall time, the part of it before the rows (toolroot check and the
    /// release build), its `--jobs` and `--shard`.
    pub wall_seconds: Option<f64>,
    pub setup_seconds: Option<f64>,
    pub jobs: Option<usize>,
    pub shard: Option<Shard>,
}

/// `p2plab summary OUT [--host-row NAME:RESULT:SECONDS]... [--topology T]...`.
pub fn summary_main(out: &Path, a: &SummaryArgs) -> anyhow::Result<i32> {
    let mut cases = Vec::new();
    let mut rows = Vec::new();
    for h in &a.host_rows {
        let r = host_row(out, h)?;
        rows.push(SuiteRow::of(
            &r.case,
            RowKind::Host,
            r.seconds,
            std::slice::from_ref(&r),
        ));
        cases.push(r);
    }
    let mut timed = std::collections::BTreeMap::new();
    for t in &a.row_seconds {
        let (name, secs) = t
            .rsplit_once(':')
            .with_context(|| format!("--row-seconds wants TOPOLOGY:SECONDS, got '{t}'"))?;
        timed.insert(name.to_string(), secs.parse::<f64>().unwrap_or(0.0));
    }
    let topologies = topology_dirs(out, &a.topologies)?;
    for (name, dir) in &topologies {
        let (c, secs) = collect_topology(dir, name, &out.join(format!("{name}.log")));
        let secs = timed.get(name).copied().unwrap_or(secs);
        rows.push(SuiteRow::of(name, RowKind::Topology, secs, &c));
        cases.extend(c);
    }
    let names: Vec<&str> = topologies.iter().map(|(n, _)| n.as_str()).collect();
    let env: serde_json::Map<String, Value> = environment(out)
        .into_iter()
        .filter(|(k, _)| a.topologies.is_empty() || names.contains(&k.as_str()))
        .collect();
    let row_seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    let suite = serde_json::json!({
        "jobs": a.jobs,
        "shard": a.shard.map(|s| s.to_string()),
        "wall_seconds": a.wall_seconds,
        "setup_seconds": a.setup_seconds,
        "row_seconds": row_seconds,
    });
    report(out, &cases, &rows, &env, suite)
}

/// What a `summary.json` holds (older ones have no rows or suite).
#[derive(Debug, Deserialize)]
struct SummaryFile {
    cases: Vec<Row>,
    #[serde(default)]
    rows: Vec<SuiteRow>,
    #[serde(default)]
    environment: serde_json::Map<String, Value>,
    #[serde(default)]
    suite: Value,
}

/// `p2plab suite merge OUT SHARD_DIR...`: the shards' `summary.json` files as one suite:
/// `OUT/summary.json` and `OUT/junit.xml`, the table and the closing line over every
/// shard's cases. The wall time is the slowest shard's.
pub fn merge_main(out: &Path, shards: &[PathBuf]) -> anyhow::Result<i32> {
    let (mut cases, mut rows, mut env, mut suites) =
        (vec![], vec![], serde_json::Map::new(), vec![]);
    for d in shards {
        let f = d.join("summary.json");
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let s: SummaryFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        for r in &s.rows {
            if rows
                .iter()
                .any(|o: &SuiteRow| o.row == r.row && o.kind == r.kind)
            {
                eprintln!(
                    "p2plab: warning: row {} is in more than one shard ({})",
                    r.row,
                    d.display()
                );
            }
        }
        cases.extend(s.cases);
        rows.extend(s.rows);
        env.extend(s.environment);
        suites.push(s.suite);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let wall = suites
        .iter()
        .filter_map(|s| s["wall_seconds"].as_f64())
        .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))));
    let suite = serde_json::json!({
        "shards": suites,
        "wall_seconds": wall,
        "row_seconds": rows.iter().map(|r| r.seconds).sum::<f64>(),
    });
    report(out, &cases, &rows, &env, suite)
}

/// Where the suite's time went: the rows' sum against the wall time of the rows (their
/// parallelism) and what came before them.
fn time_line(rows: &[SuiteRow], suite: &Value) -> String {
    let sum: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut parts = vec![format!("rows: {sum:.0} s summed")];
    if let Some(w) = suite["wall_seconds"].as_f64() {
        if let Some(setup) = suite["setup_seconds"].as_f64() {
            let in_rows = w - setup;
            if in_rows > 0.0 {
                parts[0].push_str(&format!(
                    " in {in_rows:.0} s of wall time ({:.2}× parallel)",
                    sum / in_rows
                ));
            }
            parts.push(format!(
                "before them (toolroot, release build) {setup:.0} s"
            ));
        }
        parts.push(if suite["shards"].is_array() {
            format!("slowest shard's wall time {w:.0} s")
        } else {
            format!("suite wall time {w:.0} s")
        });
    }
    parts.join("; ")
}

/// JUnit XML of a suite: a testsuite per row, its cases as testcases.
pub fn junit_xml(cases: &[Row], rows: &[SuiteRow], env: &serde_json::Map<String, Value>) -> String {
    let suites: Vec<junit::Suite> = rows
        .iter()
        .map(|r| junit::Suite {
            name: &r.row,
            seconds: r.seconds,
            properties: env
                .get(&r.row)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            cases: r
                .cases(cases)
                .map(|c| junit::Case {
                    name: &c.case,
                    seconds: c.seconds,
                    verdict: Verdict::from_word(&c.result),
                    message: &c.message,
                    details: &c.details,
                })
                .collect(),
        })
        .collect();
    junit::render("p2plab", &suites)
}

/// Print the tables, write `summary.json` and `junit.xml`, print the closing line.
fn report(
    out: &Path,
    cases: &[Row],
    rows: &[SuiteRow],
    env: &serde_json::Map<String, Value>,
    suite: Value,
) -> anyhow::Result<i32> {
    println!();
    println!(
        "{:<18} {:<22} {:<7} {:>8}  key counters (bytes moved by the lab's devices)",
        "case", "topology", "result", "seconds"
    );
    println!("{}", "-".repeat(100));
    for r in cases {
        println!(
            "{:<18} {:<22} {:<7} {:>8.2}  {}",
            r.case, r.topology, r.result, r.seconds, r.key_counters
        );
        if r.result != Verdict::Pass.as_str() && !r.message.is_empty() {
            println!("    └─ {}", r.message);
        }
    }
    println!("{}", "-".repeat(100));
    println!(
        "{:<22} {:<9} {:<7} {:>8}  {:<10} longest case",
        "row", "kind", "result", "seconds", "ok/fail/skip"
    );
    for r in rows {
        let longest = match r.kind {
            RowKind::Host => String::new(),
            RowKind::Topology => r
                .cases(cases)
                .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
                .map(|c| format!("{} {:.1} s", c.case, c.seconds))
                .unwrap_or_default(),
        };
        println!(
            "{:<22} {:<9} {:<7} {:>8.1}  {:<10} {longest}",
            r.row,
            match r.kind {
                RowKind::Host => "host",
                RowKind::Topology => "topology",
            },
            r.result,
            r.seconds,
            format!("{}/{}/{}", r.passed, r.failed, r.skipped),
        );
    }
    println!("{}", time_line(rows, &suite));
    let verdicts: Vec<Verdict> = cases
        .iter()
        .map(|r| Verdict::from_word(&r.result))
        .collect();
    let failed = verdicts.iter().filter(|&&v| v == Verdict::Fail).count();
    let mut seen: Vec<String> = env.values().map(environment_line).collect();
    seen.sort();
    seen.dedup();
    for line in &seen {
        println!("environment: {line}");
    }
    let closing = ktap::closing_line(verdicts);
    let json = serde_json::json!({
        "cases": cases, "rows": rows, "suite": suite, "environment": env, "closing": closing,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(out.join("junit.xml"), junit_xml(cases, rows, env))?;
    println!("{}", "-".repeat(100));
    println!(
        "summary: {}, JUnit: {}",
        out.join("summary.json").display(),
        out.join("junit.xml").display()
    );
    println!("{closing}");
    Ok(i32::from(failed > 0))
}

/// What produced each topology's results (from its `run.json`): QEMU, kernel, toolroot.
pub fn environment(out: &Path) -> serde_json::Map<String, Value> {
    let mut env = serde_json::Map::new();
    let Ok(rd) = std::fs::read_dir(out) else {
        return env;
    };
    let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let Some(run) = std::fs::read_to_string(dir.join("run.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        else {
            continue;
        };
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        env.insert(name, run_environment(&run));
    }
    env
}

/// The comparable facts of one `run.json`.
pub fn run_environment(run: &Value) -> Value {
    let tr = &run["toolroot"];
    serde_json::json!({
        "qemu_version": run["qemu_binary"]["version"],
        "qemu_source": run["qemu_binary"]["source"],
        "qemu_package": tr["qemu_package"],
        "kernel_release": run["kernel"]["release"],
        "kernel_path": run["kernel"]["path"],
        "toolroot_kernel_package": tr["kernel_package"],
        "toolroot_recipe": tr["recipe"],
        "toolroot_resolved_at": tr["resolved_at"],
    })
}

/// `QEMU 11.1.3 (toolroot 1:11.1.3+ds-2~bpo13+1), Linux 7.3.4+deb13-amd64, toolroot recipe 4`.
pub fn environment_line(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("?").to_string();
    let qemu = if e["qemu_source"] == "host" {
        format!("QEMU {} (host build)", s("qemu_version"))
    } else {
        format!(
            "QEMU {} (toolroot {})",
            s("qemu_version"),
            s("qemu_package")
        )
    };
    format!(
        "{qemu}, Linux {}, toolroot recipe {}",
        s("kernel_release"),
        s("toolroot_recipe")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_counters_sum_devices() {
        let v = serde_json::json!({"devices": [
            {"name": "nvme0", "kind": "nvme", "dma": {"peers": {"gpu0": {"read_bytes": 0, "write_bytes": 67108864}}, "self": {"read_bytes": 4096, "write_bytes": 0},
                     "host_memory": {"read_bytes": 1024, "write_bytes": 0}, "client_relay": {"read_bytes": 0, "write_bytes": 0}}},
            {"name": "gpu0", "kind": "gpu", "dma": {"peers": {}, "self": {}, "host_memory": {}, "client_relay": {}}}]});
        let v: Counters = serde_json::from_value(v).unwrap();
        assert_eq!(key_counters(&v), "peer 64.0M self 4K ram 1K relay 0");
    }

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("p2plab-summary-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A topology run as `p2plab run` leaves it: one pass, one host-assertion failure
    /// with a kernel report, one skip.
    fn fake_run(dir: &Path) {
        write(
            &dir.join("results.ktap"),
            "KTAP version 1\n1..3\n# p2p read: 0.15 s\nok 1 p2p-read\n# staged 64 MiB\n# host assertion: gpu0 dma.peers.nvme0 moved 0\nnot ok 2 p2p-write # host assertions: gpu0 dma.peers.nvme0 moved 0\nok 3 uring-dmabuf-read # SKIP needs the series\n",
        );
        write(
            &dir.join("cases/p2p-read/result.json"),
            r#"{"seconds": 3.0}"#,
        );
        write(
            &dir.join("cases/p2p-write/splat.txt"),
            "[ 5.7] WARNING: at p2pgpu.c:342\n",
        );
        write(
            &dir.join("timing.json"),
            r#"{"image_seconds": 1.0, "total_seconds": 60.5}"#,
        );
        write(
            &dir.join("run.json"),
            r#"{"qemu_binary": {"version": "11.1.3", "source": "toolroot"}, "kernel": {"release": "7.3.4"}, "toolroot": {"recipe": "4"}}"#,
        );
    }

    fn read_summary(out: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
    }

    #[test]
    fn missing_results_fail() {
        let dir = scratch("missing");
        std::fs::create_dir_all(dir.join("switch")).unwrap();
        write(&dir.join("switch.log"), "p2plab: error: no QEMU\n");
        let rows = collect(&dir, &[]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].result, "not ok");
        assert_eq!(rows[0].case, "(boot)");
        assert_eq!(rows[0].details, "p2plab: error: no QEMU");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_json_junit_and_closing_line() {
        let out = scratch("suite");
        fake_run(&out.join("switch"));
        // A stale directory of an earlier run in the same --out is not this suite's.
        std::fs::create_dir_all(out.join("two-gpu")).unwrap();
        write(&out.join("clippy.log"), "error: unused variable\n");
        let code = summary_main(
            &out,
            &SummaryArgs {
                host_rows: vec!["rustfmt:ok:1".into(), "clippy:failed:40".into()],
                topologies: vec!["switch".into()],
                row_seconds: vec!["switch:70.25".into()],
                wall_seconds: Some(111.0),
                setup_seconds: Some(10.0),
                jobs: Some(2),
                shard: Some(Shard { index: 1, count: 2 }),
            },
        )
        .unwrap();
        assert_eq!(code, 1);
        let s = read_summary(&out);
        assert_eq!(s["closing"], "2 passed, 2 failed, 1 skipped");
        let cases = s["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 5);
        assert!(cases.iter().all(|c| c["topology"] != "two-gpu"));
        assert_eq!(cases[1]["details"], "error: unused variable");
        let write_case = cases.iter().find(|c| c["case"] == "p2p-write").unwrap();
        let details = write_case["details"].as_str().unwrap();
        assert!(
            details.starts_with("# staged 64 MiB\n# host assertion: gpu0"),
            "{details}"
        );
        assert!(
            details.contains("--- cases/p2p-write/splat.txt ---\n[ 5.7] WARNING"),
            "{details}"
        );
        // Passing cases carry no details.
        assert!(cases[2].get("details").is_none());
        let rows: Vec<SuiteRow> = serde_json::from_value(s["rows"].clone()).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2],
            SuiteRow {
                row: "switch".into(),
                kind: RowKind::Topology,
                result: "not ok".into(),
                seconds: 70.25,
                passed: 1,
                failed: 1,
                skipped: 1
            }
        );
        assert_eq!(s["suite"]["jobs"], 2);
        assert_eq!(s["suite"]["shard"], "1/2");
        assert_eq!(s["suite"]["row_seconds"], 111.25);
        let rows_back: Vec<SuiteRow> = serde_json::from_value(s["rows"].clone()).unwrap();
        assert_eq!(
            time_line(&rows_back, &s["suite"]),
            "rows: 111 s summed in 101 s of wall time (1.10× parallel); before them (toolroot, release build) 10 s; suite wall time 111 s"
        );
        assert_eq!(s["environment"]["switch"]["qemu_version"], "11.1.3");

        let xml = std::fs::read_to_string(out.join("junit.xml")).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(
            [
                root.attribute("tests"),
                root.attribute("failures"),
                root.attribute("skipped")
            ],
            [Some("5"), Some("2"), Some("1")]
        );
        let suites: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("testsuite"))
            .map(|n| (n.attribute("name").unwrap(), n.attribute("tests").unwrap()))
            .collect();
        assert_eq!(suites, [("rustfmt", "1"), ("clippy", "1"), ("switch", "3")]);
        let clippy = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some("clippy"))
            .unwrap();
        assert_eq!(
            clippy.first_element_child().unwrap().text(),
            Some("error: unused variable")
        );
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn shards_merge_into_one_suite() {
        let base = scratch("merge");
        let (a, b, all) = (base.join("a"), base.join("b"), base.join("all"));
        fake_run(&a.join("switch"));
        fake_run(&b.join("two-gpu"));
        let args = |host: Vec<String>, topo: &str, wall: f64, i: usize| SummaryArgs {
            host_rows: host,
            topologies: vec![topo.into()],
            row_seconds: vec![],
            wall_seconds: Some(wall),
            setup_seconds: None,
            jobs: Some(1),
            shard: Some(Shard { index: i, count: 2 }),
        };
        summary_main(
            &a,
            &args(vec!["cargo-test:ok:60".into()], "switch", 130.0, 1),
        )
        .unwrap();
        summary_main(&b, &args(vec![], "two-gpu", 70.0, 2)).unwrap();
        let code = merge_main(&all, &[a, b]).unwrap();
        assert_eq!(code, 1);
        let s = read_summary(&all);
        assert_eq!(s["closing"], "3 passed, 2 failed, 2 skipped");
        assert_eq!(s["suite"]["wall_seconds"], 130.0);
        let rows_back: Vec<SuiteRow> = serde_json::from_value(s["rows"].clone()).unwrap();
        assert_eq!(
            time_line(&rows_back, &s["suite"]),
            "rows: 183 s summed; slowest shard's wall time 130 s"
        );
        assert_eq!(s["suite"]["shards"][1]["shard"], "2/2");
        assert_eq!(s["rows"].as_array().unwrap().len(), 3);
        let env: Vec<&String> = s["environment"].as_object().unwrap().keys().collect();
        assert_eq!(env, ["switch", "two-gpu"]);
        let xml = std::fs::read_to_string(all.join("junit.xml")).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("tests"), Some("7"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
