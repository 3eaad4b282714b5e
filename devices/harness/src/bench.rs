//! `p2plab bench`: throughput of the lab against the reference measured in the same run.
//!
//! Boots the baseline topology (QEMU's built-in NVMe with CMB, `qemu-nvme-reference`)
//! and the p2plab topology (`switch`) one after the other, runs the guest `bench` case
//! in each, and prints every metric side by side with the ratio p2plab / baseline.
//! Figures are MiB/s, best of three, measured in the guest under the same accelerator.
//! `OUT/bench.json` keeps them, with the lab process's RSS and BAR residency.

use anyhow::Context;
use p2plab_guest_abi::markers::BenchMetric;
use p2plab_guest_abi::CaseId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Baseline topology.
    #[arg(long, default_value = "qemu-configs/qemu-nvme-reference.toml")]
    baseline: PathBuf,
    /// Topology under test.
    #[arg(long, default_value = "qemu-configs/switch.toml")]
    config: PathBuf,
    /// Output directory (default: a fresh one under $P2PLAB_HOME/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Accelerator passed to `p2plab run`.
    #[arg(long, default_value = "auto")]
    accel: String,
}

/// `# BENCH <metric> <MiB/s>` lines of a console log.
pub fn parse_bench(console: &str) -> BTreeMap<String, f64> {
    console
        .lines()
        .filter_map(BenchMetric::parse_line)
        .map(|(m, v)| (m.to_string(), v))
        .collect()
}

fn run_one(
    config: &Path,
    out: &Path,
    accel: &str,
) -> anyhow::Result<(BTreeMap<String, f64>, Value)> {
    let exe = std::env::current_exe().context("locating p2plab")?;
    let status = std::process::Command::new(exe)
        .args([
            "run",
            "--cases",
            CaseId::Bench.name(),
            "--accel",
            accel,
            "--config",
        ])
        .arg(config)
        .arg("--out")
        .arg(out)
        .stdin(std::process::Stdio::null())
        .status()
        .context("starting p2plab run")?;
    let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
    let figures = parse_bench(&console);
    anyhow::ensure!(
        status.success(),
        "bench run of {} failed (see {})",
        config.display(),
        out.display()
    );
    anyhow::ensure!(
        !figures.is_empty(),
        "bench run of {} printed no figures (see {})",
        config.display(),
        out.join("console.log").display()
    );
    let counters = std::fs::read_to_string(out.join("counters.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    Ok((figures, counters))
}

pub fn bench_main(args: BenchArgs) -> anyhow::Result<i32> {
    let out = match args.out {
        Some(o) => o,
        None => {
            let home = std::env::var_os("P2PLAB_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/p2plab")
                });
            home.join("bench").join(format!(
                "{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
            ))
        }
    };
    std::fs::create_dir_all(&out)?;
    eprintln!(
        "p2plab bench: baseline {} then {} (results in {})",
        args.baseline.display(),
        args.config.display(),
        out.display()
    );
    let (base, _) = run_one(&args.baseline, &out.join("baseline"), &args.accel)?;
    let (ours, counters) = run_one(&args.config, &out.join("p2plab"), &args.accel)?;
    println!();
    println!(
        "{:<18} {:<46} {:>12} {:>12} {:>8}",
        "metric", "what", "baseline", "p2plab", "ratio"
    );
    println!("{}", "-".repeat(100));
    let mut rows = Vec::new();
    for metric in BenchMetric::ALL {
        let (m, what) = (metric.name(), metric.what());
        let (b, o) = (base.get(m).copied(), ours.get(m).copied());
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = match (b, o) {
            (Some(b), Some(o)) if b > 0.0 => Some(o / b),
            _ => None,
        };
        println!(
            "{:<18} {:<46} {:>12} {:>12} {:>8}",
            m,
            what,
            fmt(b),
            fmt(o),
            ratio.map_or("-".into(), |r| format!("{r:.1}x"))
        );
        rows.push(json!({"metric": m, "what": what, "baseline_mib_s": b, "p2plab_mib_s": o, "ratio": ratio}));
    }
    println!("{}", "-".repeat(100));
    let rss = counters["process"]["rss_bytes"].as_u64().unwrap_or(0);
    println!(
        "MiB/s, best of 3, in the guest. p2plab process RSS at exit: {:.1} MiB",
        rss as f64 / 1048576.0
    );
    if let Some(devs) = counters["devices"].as_array() {
        for d in devs {
            println!(
                "  {} memory BARs resident: {:.1} MiB",
                d["name"].as_str().unwrap_or("?"),
                d["bar_resident_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
            );
        }
    }
    let report = json!({"metrics": rows, "p2plab_rss_bytes": rss, "baseline": args.baseline, "config": args.config});
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("report: {}", out.join("bench.json").display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_lines_parse() {
        let m = super::parse_bench("x\n# BENCH p2p_read 2861.3\n#   p2p_read: ...\n# BENCH bad\n# BENCH own_cmb_read 900\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["p2p_read"], 2861.3);
    }
}
