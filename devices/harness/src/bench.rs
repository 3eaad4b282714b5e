//! `p2plab bench`: the lab against the reference, measured in the same run.
//!
//! Measures the host limits first (this process, no guest running: `limits.rs`), then
//! boots `qemu-configs/bench.toml`, which holds both sides — p2plab's nvme0, gpu0 and
//! nvme1 (the peer, for the NVMe → peer-CMB figures `*_cmb`) and QEMU's two built-in NVMe
//! with CMB — and runs the guest `bench` case there: each metric's samples alternate
//! between the sides, so both meet the same host (`# BENCH baseline:<metric>` lines are
//! the baseline's). The same topology boots a second time with QEMU's DMA bounce buffer
//! raised from 4 KiB to 2 MiB for the baseline's P2P figures (`*_bounce2m`). A `--config`
//! without QEMU NVMe is booted alone after the `--baseline` topology. This prints the
//! median with min..max of each side, the ratio of the medians p2plab / baseline, each
//! figure's fraction of the host limit it is set against and each boot's host CPU steal.
//! `OUT/bench.json` keeps all of it with the lab process's RSS, and `OUT/bench.svg` draws
//! it (`chart.rs`).

mod chart;
mod limits;

use anyhow::Context;
use p2plab_counters::Counters;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Baseline topology (booted only when `--config` holds no QEMU NVMe of its own).
    #[arg(long, default_value = "qemu-configs/qemu-nvme-reference.toml")]
    baseline: PathBuf,
    /// Topology under test. The default, `bench`, holds `two-nvme`'s devices (nvme0, gpu0,
    /// and nvme1 as the peer, for the NVMe → peer-CMB rows) and the baseline's two QEMU
    /// NVMe: one boot measures both sides, sample by sample in turn, and `--baseline` is
    /// not booted. A topology without QEMU NVMe is measured in its own boot after the
    /// baseline's.
    #[arg(long, default_value = "qemu-configs/bench.toml")]
    config: PathBuf,
    /// Output directory (default: a fresh one under $P2PLAB_HOME/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Accelerator passed to `p2plab run`.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Guest kernel for both runs (`p2plab run --kernel`), e.g. one with the io_uring
    /// dma-buf series for `uring_dmabuf_read`; default the toolroot's.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Its module tree (`p2plab run --modules`).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// Skip the large-VRAM boot (`vram128g`: boot time and p2plab's RSS as the guest
    /// touches 0, 64 MiB and 1 GiB of a 128 GiB VRAM).
    #[arg(long)]
    no_vram128g: bool,
    /// Skip the second baseline boot with QEMU's bounce buffer at 2 MiB
    /// (`p2p_read_bounce2m`, `p2p_write_bounce2m`).
    #[arg(long)]
    no_bounce2m: bool,
}

/// A guest metric as `p2plab bench` reports it.
struct Metric {
    /// Name in the guest's `# BENCH` lines and in `bench.json`.
    name: &'static str,
    unit: &'static str,
    what: &'static str,
    /// The host limit the figure is set against, if any.
    limit: Option<&'static str>,
}

impl Metric {
    /// Latencies: a smaller figure (a ratio below 1) is better.
    fn lower_is_better(&self) -> bool {
        self.unit == "µs"
    }
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    what: &'static str,
    limit: Option<&'static str>,
) -> Metric {
    Metric {
        name,
        unit,
        what,
        limit,
    }
}

const PREAD4K: Option<&str> = Some("host_pread4k_ops");
const PREAD_MEMFD: Option<&str> = Some("host_pread_memfd");
const MEMCPY: Option<&str> = Some("host_memcpy");

/// The guest metrics, in print order (the guest's `bench` case measures them).
const METRICS: &[Metric] = &[
    metric(
        "rr4k_qd1_iops",
        "IOPS",
        "fio 4 KiB randread, psync QD 1",
        PREAD4K,
    ),
    metric(
        "rr4k_qd1_p50_us",
        "µs",
        "fio 4 KiB randread, psync QD 1: completion latency p50",
        None,
    ),
    metric(
        "rr4k_qd1_p99_us",
        "µs",
        "fio 4 KiB randread, psync QD 1: completion latency p99",
        None,
    ),
    metric(
        "rr4k_qd32_iops",
        "IOPS",
        "fio 4 KiB randread, io_uring QD 32",
        PREAD4K,
    ),
    metric(
        "rr4k_qd32_coalesced_iops",
        "IOPS",
        "rr4k_qd32 with Interrupt Coalescing asked of both controllers (Set Features 08h: 8 entries / 100 µs); QEMU's NVMe refuses it (Feature Not Changeable) and runs as in rr4k_qd32",
        PREAD4K,
    ),
    metric(
        "rr4k_qd1_polled_iops",
        "IOPS",
        "fio 4 KiB randread, io_uring QD 1 polled (--hipri on the driver's poll queue, nvme.poll_queues=1: no interrupts)",
        PREAD4K,
    ),
    metric(
        "rr4k_qd32_polled_iops",
        "IOPS",
        "fio 4 KiB randread, io_uring QD 32 polled (--hipri on the driver's poll queue)",
        PREAD4K,
    ),
    metric(
        "seq128k_read",
        "MiB/s",
        "fio 128 KiB sequential read, io_uring QD 8",
        PREAD_MEMFD,
    ),
    metric(
        "seq128k_write",
        "MiB/s",
        "fio 128 KiB sequential write, io_uring QD 8",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read",
        "MiB/s",
        "NVMe → provider p2pmem, O_DIRECT 1 MiB reads",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read_qd8",
        "MiB/s",
        "NVMe → provider p2pmem, io_uring READ 1 MiB, 8 in flight (the guest's work on one request overlaps the device's copy of another)",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read_qd8_polled",
        "MiB/s",
        "p2p_read_qd8 with its completions polled (io_uring IOPOLL on the driver's poll queue: no interrupts, no sleeping reader)",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read_mcpu",
        "MiB/s",
        "NVMe → provider p2pmem, io_uring READ 1 MiB, 8 in flight from each guest CPU (the guest's per-request work on both vCPUs)",
        PREAD_MEMFD,
    ),
    metric(
        "uring_dmabuf_read",
        "MiB/s",
        "NVMe → provider VRAM dma-buf, io_uring READ_FIXED 1 MiB QD 8 (the io_uring dma-buf series; no struct pages)",
        PREAD_MEMFD,
    ),
    metric(
        "uring_dmabuf_read_polled",
        "MiB/s",
        "uring_dmabuf_read with its completions polled (io_uring IOPOLL on the driver's poll queue)",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_write",
        "MiB/s",
        "provider p2pmem → NVMe, O_DIRECT 1 MiB writes",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read_bounce2m",
        "MiB/s",
        "p2p_read against the baseline booted again with QEMU's bounce buffer at 2 MiB (x-max-bounce-buffer-size)",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_write_bounce2m",
        "MiB/s",
        "p2p_write against the baseline booted again with QEMU's bounce buffer at 2 MiB",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_read_cmb",
        "MiB/s",
        "NVMe → a peer NVMe's CMB p2pmem, O_DIRECT 1 MiB reads (the baseline's p2p_read: its provider is a QEMU NVMe)",
        PREAD_MEMFD,
    ),
    metric(
        "p2p_write_cmb",
        "MiB/s",
        "a peer NVMe's CMB p2pmem → NVMe, O_DIRECT 1 MiB writes (against the baseline's p2p_write)",
        PREAD_MEMFD,
    ),
    metric(
        "nvme_to_ram",
        "MiB/s",
        "NVMe → guest RAM, O_DIRECT 1 MiB reads",
        PREAD_MEMFD,
    ),
    metric(
        "ram_to_nvme",
        "MiB/s",
        "guest RAM → NVMe, O_DIRECT 1 MiB writes",
        PREAD_MEMFD,
    ),
    metric(
        "own_cmb_read",
        "MiB/s",
        "NVMe → its own CMB, O_DIRECT 1 MiB reads",
        PREAD_MEMFD,
    ),
    metric(
        "cpu_store_p2pmem",
        "MiB/s",
        "CPU 64-bit stores to provider p2pmem",
        MEMCPY,
    ),
    metric(
        "cpu_load_p2pmem",
        "MiB/s",
        "CPU 64-bit loads from provider p2pmem",
        MEMCPY,
    ),
];

/// The topology of the large-VRAM boot: `switch` with a 128 GiB VRAM BAR.
const VRAM_CONFIG: &str = "qemu-configs/vram-128g.toml";
/// The target of issue 15: p2plab's RSS after the guest touched 64 MiB of a 128 GiB VRAM.
const VRAM_RSS_64M_TARGET_MIB: f64 = 160.0;

/// Boot to the first case, in seconds, as `p2plab run` recorded it in `timing.json`.
fn boot_seconds(run: &Path) -> Option<f64> {
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("timing.json")).ok()?).ok()?;
    t["boot_to_first_case_seconds"].as_f64()
}

/// The large-VRAM figures: boot time next to the default topology's, and per touch step
/// p2plab's RSS and the VRAM's resident MiB; printed and returned for `bench.json`.
fn vram_report(
    figs: &BTreeMap<String, Vec<f64>>,
    boot: Option<f64>,
    boot_1g: Option<f64>,
) -> (String, Value) {
    use std::fmt::Write;
    let mut t = String::new();
    let secs = |b: Option<f64>| b.map_or("-".into(), |b| format!("{b:.1} s"));
    let _ = writeln!(
        t,
        "128 GiB VRAM ({VRAM_CONFIG}): boot to first case {} (1 GiB VRAM, the p2plab run above: {})",
        secs(boot),
        secs(boot_1g)
    );
    let _ = writeln!(
        t,
        "  {:<14} {:>12} {:>16}",
        "p2pmem touched", "p2plab RSS", "VRAM resident"
    );
    let one = |k: String| figs.get(&k).and_then(|v| v.first().copied());
    let mut steps = Map::new();
    for (step, label) in [("0", "0"), ("64m", "64 MiB"), ("1g", "1 GiB")] {
        let (rss, res) = (
            one(format!("vram_rss_{step}")),
            one(format!("vram_resident_{step}")),
        );
        let mib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} MiB"));
        let _ = writeln!(t, "  {label:<14} {:>12} {:>16}", mib(rss), mib(res));
        steps.insert(
            step.into(),
            json!({"rss_mib": rss, "vram_resident_mib": res}),
        );
    }
    let rss64 = one("vram_rss_64m".into());
    let _ = writeln!(
        t,
        "  target: p2plab RSS after a 64 MiB touch <= {VRAM_RSS_64M_TARGET_MIB} MiB: {}",
        match rss64 {
            Some(r) if r <= VRAM_RSS_64M_TARGET_MIB => "holds",
            Some(_) => "missed",
            None => "not measured",
        }
    );
    (
        t,
        json!({
            "config": VRAM_CONFIG,
            "boot_s": boot,
            "boot_s_1g_vram": boot_1g,
            "touched": steps,
            "rss_64m_target_mib": VRAM_RSS_64M_TARGET_MIB,
        }),
    )
}

/// QEMU arguments of the second baseline boot: every QEMU NVMe controller may bounce up
/// to 2 MiB at once when its DMA targets MMIO (a peer's CMB) instead of the 4 KiB default.
const BOUNCE_2M: [&str; 2] = ["-global", "nvme.x-max-bounce-buffer-size=2M"];

/// `p2p_read_bounce2m` / `p2p_write_bounce2m`: the baseline side from the 2 MiB-bounce
/// boot, the p2plab side the same samples as `p2p_read` / `p2p_write`.
fn pair_bounce2m(
    base: &mut BTreeMap<String, Vec<f64>>,
    ours: &mut BTreeMap<String, Vec<f64>>,
    bounce: &BTreeMap<String, Vec<f64>>,
) {
    for m in ["p2p_read", "p2p_write"] {
        if let Some(v) = bounce.get(m) {
            base.insert(format!("{m}_bounce2m"), v.clone());
        }
        if let Some(v) = ours.get(m).cloned() {
            ours.insert(format!("{m}_bounce2m"), v);
        }
    }
}

/// `p2p_read_cmb` / `p2p_write_cmb` (p2plab NVMe → a peer p2plab NVMe's CMB): their
/// baseline is the baseline's `p2p_read` / `p2p_write`, which already go from one QEMU NVMe
/// to the other's CMB. Nothing is paired when p2plab's topology has no peer NVMe.
fn pair_cmb(base: &mut BTreeMap<String, Vec<f64>>, ours: &BTreeMap<String, Vec<f64>>) {
    for m in ["p2p_read", "p2p_write"] {
        let cmb = format!("{m}_cmb");
        if let (Some(v), true) = (base.get(m).cloned(), ours.contains_key(&cmb)) {
            base.insert(cmb, v);
        }
    }
}

/// Every `# BENCH <metric> <value>` line of a console log: the samples of each metric,
/// in the order printed.
pub fn parse_bench(console: &str) -> BTreeMap<String, Vec<f64>> {
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in console.lines() {
        let Some((name, v)) = p2plab_guest_abi::markers::parse_bench_line(l) else {
            continue;
        };
        if v.is_finite() {
            m.entry(name.to_string()).or_default().push(v);
        }
    }
    m
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no samples; the median of an even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Stats> {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Some(Stats {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// Removes what a bench run leaves that is only bulk: the namespace images the fio
/// figures filled (~600 MiB each) and the booted initrd (~80 MiB). The console, the
/// counters and the timings stay.
fn remove_bulk(run: &Path) {
    let Ok(rd) = std::fs::read_dir(run) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".img") || name == "initrd.cpio" {
            if let Err(err) = std::fs::remove_file(e.path()) {
                eprintln!("p2plab bench: removing {}: {err}", e.path().display());
            }
        }
    }
}

/// The host's CPU time so far from `/proc/stat`'s first line: (all jiffies, steal jiffies).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(stat.lines().next()?)
}

/// (all, steal) jiffies of a `cpu  user nice system idle iowait irq softirq steal ...` line.
fn steal_of(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some((v.iter().sum(), *v.get(7)?))
}

/// The share of this host's CPU time that its hypervisor gave to others while `f` ran
/// (`/proc/stat` steal): on a VM host every figure moves with it, so each boot's is
/// printed and kept beside its figures. `None` where the kernel does not count it.
fn with_steal<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Option<f64>)> {
    let a = cpu_jiffies();
    let r = f()?;
    let steal = match (a, cpu_jiffies()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => {
            Some(s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    Ok((r, steal))
}

use p2plab_guest_abi::markers::{
    BENCH_BASELINE_PREFIX as BASELINE_PREFIX, BENCH_P2P_ONLY as P2P_ONLY,
};

/// Whether `config` holds QEMU's NVMe beside p2plab's devices (`qemu-configs/bench.toml`):
/// then one boot measures both sides, sample by sample in turn.
fn holds_the_baseline(config: &Path) -> anyhow::Result<bool> {
    use p2plab_lab::config::{DeviceKind, Topology};
    let path = crate::run::resolve_config(config, &crate::run::repo_root())?;
    let t = Topology::load(&path).with_context(|| format!("reading {}", path.display()))?;
    let qemu = t
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::QemuNvme)
        .count();
    Ok(qemu >= 2 && t.devices.len() > qemu)
}

/// The figures of a boot with both sides: (baseline, p2plab).
fn split_sides(
    figs: BTreeMap<String, Vec<f64>>,
) -> (BTreeMap<String, Vec<f64>>, BTreeMap<String, Vec<f64>>) {
    let (mut base, mut ours) = (BTreeMap::new(), BTreeMap::new());
    for (k, v) in figs {
        match k.strip_prefix(BASELINE_PREFIX) {
            Some(m) => base.insert(m.to_string(), v),
            None => ours.insert(k, v),
        };
    }
    (base, ours)
}

/// `p2plab run --cases CASES` of `config` into `out`: the `# BENCH` figures and the
/// whole run's counters.
fn run_cases(
    cases: &str,
    config: &Path,
    out: &Path,
    args: &BenchArgs,
    qemu_args: &[&str],
    append: Option<&str>,
) -> anyhow::Result<(BTreeMap<String, Vec<f64>>, Counters)> {
    let exe = std::env::current_exe().context("locating p2plab")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "--cases", cases, "--accel", &args.accel, "--config"])
        .arg(config)
        .arg("--out")
        .arg(out);
    if let Some(k) = &args.kernel {
        cmd.arg("--kernel").arg(k);
    }
    if let Some(m) = &args.modules {
        cmd.arg("--modules").arg(m);
    }
    for a in qemu_args {
        cmd.arg(format!("--qemu-arg={a}"));
    }
    if let Some(w) = append {
        cmd.arg("--append").arg(w);
    }
    let status = cmd
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
        .unwrap_or_default();
    remove_bulk(out);
    Ok((figures, counters))
}

/// A figure for the table: whole numbers from 100 on, one decimal below.
fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `median [min..max]`, or `-`.
fn fmt_stats(s: Option<Stats>) -> String {
    s.map_or("-".into(), |s| {
        format!("{} [{}..{}]", fmt(s.median), fmt(s.min), fmt(s.max))
    })
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

const HOST_CACHING: &str = "Host page cache: each side's namespace is a regular file on the host, read and written through the host page cache (QEMU's drive with its default cache=writeback; p2plab's namespace file opened without O_DIRECT), so caching applies to both sides equally; O_DIRECT in the guest bypasses only the guest's page cache.";

/// The comparison of the two sides and the host limits: the printout, `bench.json` and the
/// chart rows.
struct Report {
    json: Map<String, Value>,
    rows: Vec<chart::Row>,
    table: String,
}

fn compare(
    base: &BTreeMap<String, Vec<f64>>,
    ours: &BTreeMap<String, Vec<f64>>,
    host: &[limits::Limit],
) -> Report {
    use std::fmt::Write;
    let limit_value = |name: &str| {
        host.iter()
            .find(|l| l.name == name)
            .and_then(|l| Stats::of(&l.samples))
            .map(|s| s.median)
    };
    let mut json = Map::new();
    let mut rows = Vec::new();
    let mut t = String::new();
    let rule = "-".repeat(125);
    let _ = writeln!(
        t,
        "{:<18} {:<6} {:>24} {:>24} {:>7}  of host limit (baseline / p2plab)",
        "metric", "unit", "baseline [min..max]", "p2plab [min..max]", "ratio"
    );
    let _ = writeln!(t, "{rule}");
    let empty = Vec::new();
    for m in METRICS {
        let bs = base.get(m.name).unwrap_or(&empty);
        let os = ours.get(m.name).unwrap_or(&empty);
        let (b, o) = (Stats::of(bs), Stats::of(os));
        let ratio = match (b, o) {
            (Some(b), Some(o)) if b.median > 0.0 => Some(o.median / b.median),
            _ => None,
        };
        let lim = m.limit.and_then(|n| limit_value(n).map(|v| (n, v)));
        let frac =
            |s: Option<Stats>| lim.and_then(|(_, v)| s.filter(|_| v > 0.0).map(|s| s.median / v));
        let (bf, of) = (frac(b), frac(o));
        let _ = writeln!(
            t,
            "{:<18} {:<6} {:>24} {:>24} {:>7}  {}",
            m.name,
            m.unit,
            fmt_stats(b),
            fmt_stats(o),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            lim.map_or(String::new(), |(n, _)| format!(
                "{} / {} of {n}",
                percent(bf),
                percent(of)
            ))
        );
        let mut e = json!({
            "unit": m.unit,
            "what": m.what,
            "baseline": b.map(|s| s.median),
            "p2plab": o.map(|s| s.median),
            "ratio": ratio,
            "min": {"baseline": b.map(|s| s.min), "p2plab": o.map(|s| s.min)},
            "max": {"baseline": b.map(|s| s.max), "p2plab": o.map(|s| s.max)},
            "samples": {"baseline": bs, "p2plab": os},
            "lower_is_better": m.lower_is_better(),
        });
        if let Some((n, _)) = lim {
            e["limit"] = n.into();
            e["fraction_of_limit"] = json!({"baseline": bf, "p2plab": of});
        }
        json.insert(m.name.into(), e);
        let bar = |s: Option<Stats>| {
            s.map(|s| chart::Bar {
                median: s.median,
                min: s.min,
                max: s.max,
            })
        };
        rows.push(chart::Row {
            label: format!(
                "{} ({}{})",
                m.name,
                m.unit,
                if m.lower_is_better() {
                    ", lower is better"
                } else {
                    ""
                }
            ),
            baseline: bar(b),
            p2plab: bar(o),
            ratio,
            limit: lim.map(|(_, v)| v),
            host: None,
        });
    }
    let _ = writeln!(t, "{rule}");
    for l in host {
        let s = Stats::of(&l.samples);
        let _ = writeln!(
            t,
            "{:<18} {:<6} {:>24}  host: {}",
            l.name,
            l.unit,
            fmt_stats(s),
            l.what
        );
        json.insert(
            l.name.into(),
            json!({"value": s.map(|s| s.median), "unit": l.unit, "what": l.what, "samples": l.samples}),
        );
        rows.push(chart::Row {
            label: format!("{} ({})", l.name, l.unit),
            baseline: None,
            p2plab: None,
            ratio: None,
            limit: None,
            host: s.map(|s| s.median),
        });
    }
    let _ = writeln!(t, "{rule}");
    for m in METRICS {
        let _ = writeln!(t, "{:<18} {}", m.name, m.what);
    }
    // Metrics the guest printed that this table does not know (a newer guest).
    for (side, figs) in [("baseline", base), ("p2plab", ours)] {
        for (k, v) in figs {
            if !METRICS.iter().any(|m| m.name == k) {
                let _ = writeln!(t, "{side} also printed {k}: {}", fmt_stats(Stats::of(v)));
            }
        }
    }
    Report {
        json,
        rows,
        table: t,
    }
}

/// The default output directory: `$P2PLAB_HOME/bench/<unix time>`.
fn default_out() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("P2PLAB_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/p2plab")
        });
    Ok(home.join("bench").join(format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    )))
}

pub fn bench_main(args: BenchArgs) -> anyhow::Result<i32> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_out()?,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let together = holds_the_baseline(&args.config)?;
    let bounce_note = if args.no_bounce2m {
        ""
    } else {
        " (the baseline again with QEMU's bounce buffer at 2 MiB)"
    };
    if together {
        eprintln!(
            "p2plab bench: host limits, then {} with both sides in one boot{bounce_note} (results in {})",
            args.config.display(),
            out.display()
        );
    } else {
        eprintln!(
            "p2plab bench: host limits, then baseline {}{bounce_note} and {} (results in {})",
            args.baseline.display(),
            args.config.display(),
            out.display()
        );
    }
    let host = limits::measure(&out).context("measuring the host limits")?;
    let mut steal = Map::new();
    let (mut base, mut ours, counters);
    if together {
        let ((figs, c), s) =
            with_steal(|| run_cases("bench", &args.config, &out.join("p2plab"), &args, &[], None))?;
        steal.insert("p2plab_and_baseline".into(), json!(s));
        (base, ours) = split_sides(figs);
        counters = c;
    } else {
        let ((b, _), s) = with_steal(|| {
            run_cases(
                "bench",
                &args.baseline,
                &out.join("baseline"),
                &args,
                &[],
                None,
            )
        })?;
        steal.insert("baseline".into(), json!(s));
        base = b;
        let ((o, c), s) =
            with_steal(|| run_cases("bench", &args.config, &out.join("p2plab"), &args, &[], None))?;
        steal.insert("p2plab".into(), json!(s));
        (ours, counters) = (o, c);
    }
    // The baseline again with QEMU's bounce buffer at 2 MiB; in a two-sided topology the
    // guest measures only the P2P rows there.
    let bounce = if args.no_bounce2m {
        Default::default()
    } else {
        let (config, append) = if together {
            (&args.config, Some(P2P_ONLY))
        } else {
            (&args.baseline, None)
        };
        let ((figs, _), s) = with_steal(|| {
            run_cases(
                "bench",
                config,
                &out.join("baseline-bounce2m"),
                &args,
                &BOUNCE_2M,
                append,
            )
        })?;
        steal.insert("baseline_bounce2m".into(), json!(s));
        if together {
            split_sides(figs).0
        } else {
            figs
        }
    };
    pair_bounce2m(&mut base, &mut ours, &bounce);
    pair_cmb(&mut base, &ours);
    let vram = if args.no_vram128g {
        None
    } else {
        let dir = out.join("vram-128g");
        let (figs, _) = run_cases("vram-rss", Path::new(VRAM_CONFIG), &dir, &args, &[], None)?;
        Some(vram_report(
            &figs,
            boot_seconds(&dir),
            boot_seconds(&out.join("p2plab")),
        ))
    };
    let mut r = compare(&base, &ours, &host);

    let mut counts: Vec<usize> = base.values().chain(ours.values()).map(Vec::len).collect();
    counts.sort_unstable();
    counts.dedup();
    let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
    println!();
    print!("{}", r.table);
    println!(
        "Each guest figure: median [min..max] of {} samples {}; ratio = p2plab / baseline",
        counts.join("/"),
        if together {
            "per side, both sides in one boot, alternating"
        } else {
            "in one boot per side"
        }
    );
    println!(
        "of the medians (for the µs latencies lower is better). Host limits: median [min..max] of"
    );
    println!(
        "{} samples by this process before the guests booted; each P2P/NVMe figure's fraction is of the",
        limits::SAMPLES
    );
    println!("limit named (writes are set against the same copy's read direction).");
    let pct = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |v| format!("{:.0} %", v * 100.0))
    };
    println!(
        "Host CPU steal (time this VM's hypervisor gave to others) during each boot: {}; a side booted under more steal is slower on every figure.",
        steal
            .iter()
            .map(|(k, v)| format!("{k} {}", pct(v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{HOST_CACHING}");
    let rss = counters.process.map_or(0, |p| p.rss_bytes);
    println!(
        "p2plab process RSS at exit: {:.1} MiB",
        rss as f64 / 1048576.0
    );
    let mut bars = Map::new();
    for d in &counters.devices {
        let b = d.bar_resident_bytes;
        println!(
            "  {} memory BARs resident: {:.1} MiB",
            d.name,
            b as f64 / 1048576.0
        );
        bars.insert(d.name.clone(), b.into());
    }
    if let Some((text, v)) = vram {
        print!("{text}");
        r.json.insert("vram128g".into(), v);
    }
    r.json.insert("p2plab_rss_bytes".into(), rss.into());
    r.json
        .insert("bar_resident_bytes".into(), Value::Object(bars));
    r.json.insert(
        "baseline_config".into(),
        json!(if together {
            &args.config
        } else {
            &args.baseline
        }),
    );
    r.json.insert("one_boot".into(), together.into());
    r.json.insert("config".into(), json!(args.config));
    r.json.insert("host_caching".into(), HOST_CACHING.into());
    r.json.insert("steal".into(), Value::Object(steal));
    let json_path = out.join("bench.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&Value::Object(r.json))? + "\n",
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    let svg = out.join("bench.svg");
    chart::write(
        &svg,
        &format!(
            "p2plab bench: {} vs {}",
            args.config.display(),
            args.baseline.display()
        ),
        &r.rows,
    )?;
    println!("report: {}", json_path.display());
    println!("chart:  {}", svg.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{Stats, METRICS};

    #[test]
    fn bench_lines_parse() {
        let m = super::parse_bench(
            "x\n# BENCH p2p_read 2861.3\n#   p2p_read: ...\n# BENCH bad\n# BENCH own_cmb_read 900\n# BENCH p2p_read 2000\n# BENCH p2p_read NaN\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m["p2p_read"], vec![2861.3, 2000.0]);
    }

    /// One sample per metric.
    fn map(kv: &[(&str, f64)]) -> std::collections::BTreeMap<String, Vec<f64>> {
        kv.iter().map(|(k, v)| (k.to_string(), vec![*v])).collect()
    }

    /// The 2 MiB-bounce rows: the baseline from the second baseline boot, p2plab's the
    /// same samples as its p2p_read / p2p_write; nothing from a boot that did not run.
    #[test]
    fn bounce2m_rows_pair_the_second_baseline_with_p2plab() {
        let mut base = map(&[("p2p_read", 50.0), ("p2p_write", 40.0)]);
        let mut ours = map(&[("p2p_read", 1000.0), ("p2p_write", 900.0)]);
        let bounce = map(&[("p2p_read", 200.0), ("p2p_write", 150.0)]);
        super::pair_bounce2m(&mut base, &mut ours, &bounce);
        assert_eq!(base["p2p_read_bounce2m"], vec![200.0]);
        assert_eq!(base["p2p_write_bounce2m"], vec![150.0]);
        assert_eq!(ours["p2p_read_bounce2m"], vec![1000.0]);
        assert_eq!(
            base["p2p_read"],
            vec![50.0],
            "the default-bounce row is kept"
        );
        let mut base = map(&[("p2p_read", 50.0)]);
        super::pair_bounce2m(&mut base, &mut ours, &Default::default());
        assert!(!base.contains_key("p2p_read_bounce2m"));
    }

    /// A boot with both sides: `baseline:`-prefixed samples are the baseline's.
    #[test]
    fn one_boot_splits_into_the_two_sides() {
        let (base, ours) = super::split_sides(map(&[
            ("p2p_read", 1000.0),
            ("baseline:p2p_read", 20.0),
            ("p2p_read_cmb", 900.0),
        ]));
        assert_eq!(base, map(&[("p2p_read", 20.0)]));
        assert_eq!(ours, map(&[("p2p_read", 1000.0), ("p2p_read_cmb", 900.0)]));
    }

    /// `bench.toml` holds both sides (one boot); `two-nvme` and the reference do not.
    #[test]
    fn which_topologies_hold_the_baseline() {
        let f = |t: &str| super::holds_the_baseline(std::path::Path::new(t)).unwrap();
        assert!(f("qemu-configs/bench.toml"));
        assert!(!f("qemu-configs/two-nvme.toml"));
        assert!(
            !f("qemu-configs/qemu-nvme-reference.toml"),
            "only QEMU NVMe"
        );
    }

    #[test]
    fn steal_is_the_eighth_cpu_field() {
        assert_eq!(
            super::steal_of("cpu  100 5 50 800 10 1 2 32 0 0"),
            Some((1000, 32))
        );
        assert_eq!(super::steal_of("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(
            super::steal_of("cpu  1 2 3"),
            None,
            "a kernel without steal"
        );
    }

    /// The peer-CMB rows take the baseline's p2p_read / p2p_write (QEMU NVMe → the other
    /// QEMU NVMe's CMB), and only when p2plab measured them.
    #[test]
    fn cmb_rows_pair_with_the_baseline_p2p_rows() {
        let mut base = map(&[("p2p_read", 20.0), ("p2p_write", 21.0)]);
        let ours = map(&[("p2p_read", 1000.0), ("p2p_read_cmb", 900.0)]);
        super::pair_cmb(&mut base, &ours);
        assert_eq!(base["p2p_read_cmb"], vec![20.0]);
        assert!(
            !base.contains_key("p2p_write_cmb"),
            "p2plab has no such row"
        );
        assert_eq!(base["p2p_read"], vec![20.0]);
    }

    /// The large-VRAM section: one figure per step, the 64 MiB target judged on RSS.
    #[test]
    fn vram_report_judges_the_64m_rss() {
        let figs = |rss64: f64| {
            [
                ("vram_rss_0", 70.0),
                ("vram_resident_0", 0.0),
                ("vram_rss_64m", rss64),
                ("vram_resident_64m", 64.0),
                ("vram_rss_1g", 71.0),
                ("vram_resident_1g", 1024.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), vec![v]))
            .collect()
        };
        let (t, v) = super::vram_report(&figs(71.0), Some(9.5), Some(8.0));
        assert!(t.contains("holds"), "{t}");
        assert_eq!(v["touched"]["1g"]["vram_resident_mib"], 1024.0);
        assert_eq!(v["boot_s"], 9.5);
        let (t, _) = super::vram_report(&figs(200.0), None, None);
        assert!(t.contains("missed"), "{t}");
        let (t, _) = super::vram_report(&Default::default(), None, None);
        assert!(t.contains("not measured"), "{t}");
    }

    #[test]
    fn stats_take_the_median() {
        let s = Stats::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(Stats::of(&[1.0, 4.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn report_has_every_metric_and_limit() {
        let side = |k: f64| {
            METRICS
                .iter()
                .map(|m| {
                    (
                        m.name.to_string(),
                        vec![k, 2.0 * k, 3.0 * k, 4.0 * k, 5.0 * k],
                    )
                })
                .collect()
        };
        let host: Vec<super::limits::Limit> =
            ["host_memcpy", "host_pread_memfd", "host_pread4k_ops"]
                .into_iter()
                .map(|name| super::limits::Limit {
                    name,
                    unit: "MiB/s",
                    what: "test",
                    samples: vec![300.0; 5],
                })
                .collect();
        let r = super::compare(&side(10.0), &side(20.0), &host);
        for m in METRICS {
            let e = &r.json[m.name];
            assert_eq!(e["baseline"], 30.0, "{}", m.name);
            assert_eq!(e["p2plab"], 60.0);
            assert_eq!(e["ratio"], 2.0);
            assert_eq!(e["samples"]["p2plab"].as_array().map(Vec::len), Some(5));
            assert!(r.table.contains(m.name));
            if m.limit.is_some() {
                assert_eq!(e["fraction_of_limit"]["p2plab"], 0.2);
            }
        }
        for l in &host {
            assert_eq!(r.json[l.name]["value"], 300.0);
        }
        assert_eq!(r.rows.len(), METRICS.len() + host.len());
        let names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "rr4k_qd1_iops",
                "rr4k_qd1_p50_us",
                "rr4k_qd1_p99_us",
                "rr4k_qd32_iops",
                "rr4k_qd32_coalesced_iops",
                "rr4k_qd1_polled_iops",
                "rr4k_qd32_polled_iops",
                "seq128k_read",
                "seq128k_write",
                "p2p_read",
                "p2p_read_qd8",
                "p2p_read_qd8_polled",
                "p2p_read_mcpu",
                "uring_dmabuf_read",
                "uring_dmabuf_read_polled",
                "p2p_write",
                "p2p_read_bounce2m",
                "p2p_write_bounce2m",
                "p2p_read_cmb",
                "p2p_write_cmb",
                "nvme_to_ram",
                "ram_to_nvme",
                "own_cmb_read",
                "cpu_store_p2pmem",
                "cpu_load_p2pmem"
            ]
        );
    }
}
