//! `p2plab summary`: the suite's closing table and `summary.json`.
//!
//! `scripts/test` runs one guest per topology into `OUT/<topology>/`; this reads every
//! `OUT/*/results.ktap` (the verdicts, host assertions already applied) with each case's
//! `result.json` (seconds) and `counters.json` (key counters), prints one row per case
//! and writes `OUT/summary.json` = `{"cases": [{"case", "topology", "result", "seconds",
//! "key_counters", "message"}], "environment": {"<topology>": {...}}}` (what produced the
//! results: QEMU, kernel release, toolroot recipe, from each run's `run.json`). Exit status 1 if any case is `not ok` or a topology
//! run produced no results.

use crate::ktap::{self, ResultLine, Verdict};
use anyhow::Context;
use p2plab_counters::{Counters, DeviceSnapshot, DirSnapshot};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Serialize, Clone)]
pub struct Row {
    pub case: String,
    pub topology: String,
    pub result: String,
    pub seconds: f64,
    pub key_counters: String,
    pub message: String,
}

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

pub fn collect(out: &Path) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        // Dot directories are the harness's own tests (expected to fail), not topologies.
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    for dir in dirs {
        let topology = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(ktap) = std::fs::read_to_string(dir.join("results.ktap")) else {
            rows.push(Row {
                case: "(boot)".into(),
                topology,
                result: "not ok".into(),
                seconds: 0.0,
                key_counters: String::new(),
                message: "no results.ktap: the run did not start".into(),
            });
            continue;
        };
        let cases = ktap::parse(&ktap);
        if cases.is_empty() {
            rows.push(Row {
                case: "(boot)".into(),
                topology: topology.clone(),
                result: "not ok".into(),
                seconds: 0.0,
                key_counters: String::new(),
                message: "results.ktap has no results".into(),
            });
        }
        for ResultLine {
            verdict,
            name: case,
            message: why,
            ..
        } in cases
        {
            let cdir = dir.join("cases").join(&case);
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
            rows.push(Row {
                case,
                topology: topology.clone(),
                result: verdict.as_str().into(),
                seconds,
                key_counters: key,
                message: why,
            });
        }
    }
    Ok(rows)
}

/// `p2plab summary OUT [--host-row NAME:RESULT:SECONDS]...`.
pub fn summary_main(out: &Path, host_rows: &[String]) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for h in host_rows {
        let mut it = h.splitn(4, ':');
        let (Some(case), Some(result), Some(secs)) = (it.next(), it.next(), it.next()) else {
            anyhow::bail!("--host-row wants NAME:RESULT:SECONDS[:MESSAGE], got '{h}'");
        };
        rows.push(Row {
            case: case.into(),
            topology: "host".into(),
            result: Verdict::from_word(result).as_str().into(),
            seconds: secs.parse().unwrap_or(0.0),
            key_counters: String::new(),
            message: it.next().unwrap_or_default().trim().into(),
        });
    }
    rows.extend(collect(out)?);
    println!();
    println!(
        "{:<18} {:<22} {:<7} {:>8}  key counters (bytes moved by the lab's devices)",
        "case", "topology", "result", "seconds"
    );
    println!("{}", "-".repeat(100));
    for r in &rows {
        println!(
            "{:<18} {:<22} {:<7} {:>8.2}  {}",
            r.case, r.topology, r.result, r.seconds, r.key_counters
        );
        if r.result != Verdict::Pass.as_str() && !r.message.is_empty() {
            println!("    └─ {}", r.message);
        }
    }
    let verdicts: Vec<Verdict> = rows.iter().map(|r| Verdict::from_word(&r.result)).collect();
    let failed = verdicts.iter().filter(|&&v| v == Verdict::Fail).count();
    let env = environment(out);
    let mut seen: Vec<String> = env.values().map(environment_line).collect();
    seen.dedup();
    for line in &seen {
        println!("environment: {line}");
    }
    let json = serde_json::json!({ "cases": rows, "environment": env });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!("{}", "-".repeat(100));
    println!("summary: {}", out.join("summary.json").display());
    println!("{}", ktap::closing_line(verdicts));
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

    #[test]
    fn missing_results_fail() {
        let dir = std::env::temp_dir().join(format!("p2plab-summary-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("switch")).unwrap();
        let rows = collect(&dir).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].result, "not ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
