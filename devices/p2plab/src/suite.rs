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
pub fn key_counters(delta: &Value) -> String {
    let Some(devs) = delta.get("devices").and_then(Value::as_array) else {
        return String::new();
    };
    if devs.is_empty() {
        return "(no p2plab devices)".into();
    }
    let sum = |f: &dyn Fn(&Value) -> u64| devs.iter().map(f).sum::<u64>();
    let rw =
        |v: &Value| v["read_bytes"].as_u64().unwrap_or(0) + v["write_bytes"].as_u64().unwrap_or(0);
    let peer = sum(&|d| {
        d["dma"]["peers"]
            .as_object()
            .map_or(0, |m| m.values().map(rw).sum())
    });
    let own = sum(&|d| rw(&d["dma"]["self"]));
    let ram = sum(&|d| rw(&d["dma"]["host_memory"]));
    let relay = sum(&|d| rw(&d["dma"]["client_relay"]));
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
                .map(|v| key_counters(&v))
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

fn fmt_bytes(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n >= 1 << 20 {
        out.push_str(&format!(" ({:.1} MiB)", n as f64 / f64::from(1u32 << 20)));
    }
    out
}

/// `p2plab proof RUN_DIR [CASE]`: the proof of CASE, else of `p2p-read` when the run
/// has it, else (a --shell or --exec run) the whole run's movement table.
pub fn proof_or_movement(run_dir: &Path, case: Option<&str>) -> anyhow::Result<i32> {
    if let Some(c) = case {
        return proof_main(run_dir, c);
    }
    let ktap = std::fs::read_to_string(run_dir.join("results.ktap")).unwrap_or_default();
    if ktap::parse(&ktap).iter().any(|r| r.name == "p2p-read") {
        return proof_main(run_dir, "p2p-read");
    }
    movement_main(run_dir)
}

/// What every device moved where over a whole run (`counters.json`): the proof of a
/// free-form run, whose cases the lab does not know.
pub fn movement_main(run_dir: &Path) -> anyhow::Result<i32> {
    let read = |f: &str| -> anyhow::Result<Value> {
        let p = run_dir.join(f);
        Ok(serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?,
        )?)
    };
    let run = read("run.json")?;
    let counters = read("counters.json")?;
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let rw = |v: &Value| {
        format!(
            "read {}, wrote {}",
            fmt_bytes(u(&v["read_bytes"])),
            fmt_bytes(u(&v["write_bytes"]))
        )
    };
    println!();
    println!(
        "p2plab counters — whole run of topology '{}' ({})",
        run["topology"].as_str().unwrap_or("?"),
        run_dir.display()
    );
    println!("  ({})", environment_line(&run_environment(&run)));
    for d in counters["devices"].as_array().into_iter().flatten() {
        let name = d["name"].as_str().unwrap_or("?");
        println!(
            "  {name} ({}) as bus master:",
            d["kind"].as_str().unwrap_or("?")
        );
        println!("    {:<28} {}", "guest RAM", rw(&d["dma"]["host_memory"]));
        println!("    {:<28} {}", "its own BARs", rw(&d["dma"]["self"]));
        for (peer, v) in d["dma"]["peers"].as_object().into_iter().flatten() {
            println!("    {:<28} {}", format!("peer {peer}'s BARs"), rw(v));
        }
        println!(
            "    {:<28} {}",
            "relayed through QEMU",
            rw(&d["dma"]["client_relay"])
        );
        for (peer, v) in d["inbound"]["peers"].as_object().into_iter().flatten() {
            println!("    {:<28} {}", format!("inbound from {peer}"), rw(v));
        }
        println!(
            "    {:<28} {}",
            "trapped CPU MMIO",
            rw(&d["inbound"]["cpu_mmio"])
        );
    }
    Ok(0)
}

/// `p2plab proof RUN_DIR CASE`: the bypass proof of one P2P case, for a newcomer.
pub fn proof_main(run_dir: &Path, case: &str) -> anyhow::Result<i32> {
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("run.json")).context("run.json")?,
    )?;
    let mut topo: crate::config::Topology =
        toml::from_str(run["topology_toml"].as_str().unwrap_or_default())
            .context("topology in run.json")?;
    topo.name = run["topology"].as_str().unwrap_or_default().to_string();
    // Who moved the data where: the page-less (dma-buf) cases' initiator is the importer
    // GPU and their target the exporter's VRAM; the others' the client NVMe and the
    // provider's BAR.
    let pageless = case.starts_with("dmabuf-");
    let uring_dmabuf = case.starts_with("uring-dmabuf-");
    let (client, provider) = if uring_dmabuf {
        (
            topo.roles
                .client
                .clone()
                .context("topology has no client role")?,
            topo.roles
                .exporter
                .clone()
                .or_else(|| topo.roles.provider.clone())
                .context("topology has no exporter or provider role")?,
        )
    } else if pageless {
        (
            topo.roles
                .importer
                .clone()
                .context("topology has no importer role")?,
            topo.roles
                .exporter
                .clone()
                .context("topology has no exporter role")?,
        )
    } else {
        (
            topo.roles
                .client
                .clone()
                .context("topology has no client role")?,
            topo.roles
                .provider
                .clone()
                .context("topology has no provider role")?,
        )
    };
    let ktap = std::fs::read_to_string(run_dir.join("results.ktap")).unwrap_or_default();
    let verdict = ktap::parse(&ktap).into_iter().find(|r| r.name == case);
    let cdir = run_dir.join("cases").join(case);
    let delta: Value = std::fs::read_to_string(cdir.join("counters.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let dev = |name: &str| {
        delta["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (c, p) = (dev(&client), dev(&provider));
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let peer = u(&c["dma"]["peers"][&provider]["write_bytes"]);
    let inbound = u(&p["inbound"]["peers"][&client]["write_bytes"]);
    // The NVMe's guest-RAM reads are its queues and PRP lists; a GPU's are its ring.
    let ram_data = u(&c["dma"]["host_memory"]["write_bytes"])
        + if pageless {
            u(&c["dma"]["host_memory"]["read_bytes"])
        } else {
            0
        };
    let relay: u64 = [&c, &p]
        .iter()
        .map(|d| {
            u(&d["dma"]["client_relay"]["read_bytes"]) + u(&d["dma"]["client_relay"]["write_bytes"])
        })
        .sum();
    let cpu: Option<Value> = std::fs::read_to_string(cdir.join("cpu.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let console = std::fs::read_to_string(run_dir.join("console.log")).unwrap_or_default();
    // The guest's own data-check line, from inside this case's markers.
    let begin = format!("P2PLAB-CASE-BEGIN {case}");
    let end = format!("P2PLAB-CASE-END {case}");
    let checksum_line = console
        .lines()
        .skip_while(|l| !l.contains(&begin))
        .take_while(|l| !l.contains(&end))
        .find(|l| l.contains("checksum") || l.contains("verified"))
        .map(str::trim);
    let guest_ok = verdict.as_ref().is_some_and(|v| v.verdict == Verdict::Pass);

    println!();
    println!(
        "p2plab proof — case {case} in topology '{}' ({client} → {provider})",
        topo.name
    );
    println!("  ({})", environment_line(&run_environment(&run)));
    println!(
        "  {:<52} {}",
        format!("bytes DMA'd {client} → {provider} BAR (peer-to-peer)"),
        fmt_bytes(peer)
    );
    println!(
        "  {:<52} {}",
        format!("  …as counted by {provider} (inbound)"),
        fmt_bytes(inbound)
    );
    println!(
        "  {:<52} {}",
        if pageless {
            format!("bytes {client} moved through guest RAM")
        } else {
            format!("bytes {client} wrote into guest RAM")
        },
        fmt_bytes(ram_data)
    );
    if let Some(target) = topo.device(&provider) {
        if target.kind == crate::config::DeviceKind::Gpu {
            println!(
                "  {:<52} {}",
                "struct pages behind the target buffer",
                if target.publishes_p2pmem() {
                    format!("p2pmem published on {provider}")
                } else {
                    format!("none (no p2pmem published on {provider})")
                }
            );
        }
    }
    println!(
        "  {:<52} {}",
        "bytes relayed through QEMU",
        fmt_bytes(relay)
    );
    let cpu_accesses = match &cpu {
        Some(cpu) => {
            let r = cpu["ranges"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|r| r["device"] == provider.as_str() && r["bar"] == 2)
                })
                .cloned()
                .unwrap_or(Value::Null);
            println!(
                "  {:<52} {} loads, {} stores",
                format!("guest CPU accesses to {provider} BAR2 (TCG witness)"),
                u(&r["loads"]),
                u(&r["stores"])
            );
            if r.is_null() {
                None
            } else {
                Some(u(&r["loads"]) + u(&r["stores"]))
            }
        }
        None => {
            println!(
                "  {:<52} (not measured: run with --cpu-witness)",
                "guest CPU accesses to the BAR"
            );
            Some(0)
        }
    };
    println!(
        "  {:<52} {}",
        "data check in the guest",
        match (guest_ok, checksum_line) {
            (true, Some(l)) => format!("ok — {}", l.trim_start_matches("# ")),
            (true, None) => "ok".to_string(),
            (false, _) => format!(
                "FAILED {}",
                verdict
                    .map(|v| v.message)
                    .unwrap_or_else(|| "(case did not run)".into())
            ),
        }
    );
    let proven = guest_ok
        && peer >= 64 << 20
        && inbound == peer
        && ram_data < 1 << 20
        && relay == 0
        && cpu_accesses == Some(0);
    println!();
    if proven {
        println!("  ✔ bypass proven: the data went {client} → {provider} directly; neither guest RAM nor QEMU carried it.");
        Ok(0)
    } else {
        println!(
            "  ✘ bypass NOT proven (see the figures above and {})",
            cdir.display()
        );
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_counters_sum_devices() {
        let v = serde_json::json!({"devices": [
            {"dma": {"peers": {"gpu0": {"read_bytes": 0, "write_bytes": 67108864}}, "self": {"read_bytes": 4096, "write_bytes": 0},
                     "host_memory": {"read_bytes": 1024, "write_bytes": 0}, "client_relay": {"read_bytes": 0, "write_bytes": 0}}},
            {"dma": {"peers": {}, "self": {}, "host_memory": {}, "client_relay": {}}}]});
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
