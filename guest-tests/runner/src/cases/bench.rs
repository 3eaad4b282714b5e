//! `bench`: figures for `p2plab bench`, on request only (no topology runs it by default).
//!
//! Every metric is measured [`SAMPLES`] times in this one boot, and every sample is
//! printed as `# BENCH <metric> <value>` (the host takes median, min and max); a
//! throughput sample repeats its transfer until it has lasted [`MIN_SAMPLE_SECS`]. Units:
//! MiB/s for throughput, IOPS for the fio random reads, µs for their completion-latency
//! percentiles. The P2P and own-CMB reads are verified. When the topology also holds two
//! of QEMU's NVMe controllers (`qemu-configs/bench.toml`), every paired metric is measured
//! on both sides in the same boot, sample by sample in turn, the baseline's printed as
//! `# BENCH baseline:<metric> <value>`.
//!
//! Namespace regions (each side's own namespace): the O_DIRECT figures use 0..64M (RAM and
//! P2P reads, written first by `ram_to_nvme`) and 128M..192M (`p2p_write`,
//! `p2p_write_cmb`); the fio figures use 512M..1G, written by `seq128k_write` before any
//! fio read so the reads return data, not holes.

use super::nvme::fio_json;
use super::Ctx;
use crate::devices::{Found, Role};
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use nvme_spec::feature::InterruptCoalescing;
use std::time::Instant;

const LEN: usize = 64 * MIB;
const CHUNK: usize = MIB;
/// Samples per metric, each printed.
const SAMPLES: usize = 5;
const SEED: u64 = 0x6265_6e63;
/// The fio span: 512 MiB from 512 MiB on (the namespace must hold 1 GiB).
const FIO_OFF: u64 = 512 << 20;
const FIO_SPAN: u64 = 512 << 20;
/// Seconds of I/O per fio sample (`--time_based --runtime`).
const FIO_RUNTIME_S: u32 = 3;

/// The touches of `vram-rss`: metric suffix and bytes of provider p2pmem touched so far.
const VRAM_TOUCHES: [(&str, usize); 3] = [("0", 0), ("64m", 64 * MIB), ("1g", 1024 * MIB)];

/// vram-rss: on a GPU with a large VRAM BAR, what the lab holds in host memory as the
/// guest's CPU touches provider p2pmem (one store per 4 KiB page): p2plab's RSS and the
/// VRAM's resident bytes, read from the client's vendor log page 0xC0 after each step
/// (`# BENCH vram_rss_<step> MiB`, `# BENCH vram_resident_<step> MiB`). Fails if the
/// touched bytes are not resident (the stores went somewhere else).
pub fn vram_rss(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let ctrl = client
        .ctrl
        .clone()
        .ok_or_else(|| format!("client {} has no controller", client.info.name))?;
    let (pname, pbdf) = (
        provider.info.name.clone(),
        provider.bdf.clone().unwrap_or_default(),
    );
    let total = VRAM_TOUCHES[VRAM_TOUCHES.len() - 1].1;
    let m = Mapping::p2pmem(&pbdf, total)?;
    let mut touched = 0;
    for (step, upto) in VRAM_TOUCHES {
        while touched < upto {
            // SAFETY: touched < upto <= total = m.len(); one aligned store per page.
            unsafe {
                m.ptr()
                    .add(touched)
                    .cast::<u64>()
                    .write_volatile(touched as u64 + 1)
            };
            touched += 4096;
        }
        let (log, _) = super::nvme::vendor_log(&ctrl)?;
        let rss = log["process"]["rss_bytes"]
            .as_u64()
            .ok_or("vendor log has no process.rss_bytes")?;
        let resident = super::nvme::log_counter(&log, &pname, &["bar_resident_bytes"])?;
        let mib = |b: u64| b as f64 / MIB as f64;
        ctx.diag(&p2plab_guest_abi::markers::bench_line(
            &format!("vram_rss_{step}"),
            mib(rss),
        ));
        ctx.diag(&p2plab_guest_abi::markers::bench_line(
            &format!("vram_resident_{step}"),
            mib(resident),
        ));
        if resident < upto as u64 {
            return Err(format!(
                "{pname}: {upto} bytes of p2pmem touched but only {resident} bytes of VRAM resident"
            ));
        }
    }
    Ok(())
}

/// One side of the comparison in this boot: p2plab's devices (metric names as they are),
/// or — when the topology also has two of QEMU's NVMe controllers — QEMU's pair (names
/// prefixed `baseline:`). Each metric's samples alternate between the sides, so both meet
/// the same host: on a VM host whose CPU steal changes by the minute, two sides measured
/// in separate boots minutes apart differed by up to 7× on the same binary.
struct Side {
    prefix: &'static str,
    /// The NVMe whose namespace is read and written, and that namespace.
    client: Found,
    ns: String,
    file: std::fs::File,
    /// Whose p2pmem is the P2P buffer (p2plab: the GPU; baseline: the second QEMU NVMe's CMB).
    provider: Found,
}

impl Side {
    fn new(prefix: &'static str, client: &Found, provider: &Found) -> Result<Side, String> {
        let ns = client
            .ns
            .clone()
            .ok_or_else(|| format!("{} has no namespace", client.info.name))?;
        Ok(Side {
            prefix,
            file: open_direct(&ns)?,
            ns,
            client: client.clone(),
            provider: provider.clone(),
        })
    }

    fn io(&self, m: &Mapping, off: u64, write: bool) -> Result<(), String> {
        direct_io(&self.file, m, off, CHUNK, write)
            .map_err(|e| format!("O_DIRECT on {}: {e}", self.ns))
    }

    fn p2pmem(&self, bdf: Option<&str>) -> Result<Mapping, String> {
        Mapping::p2pmem(bdf.unwrap_or_default(), LEN)
    }
}

/// QEMU's NVMe pair in a p2plab topology (`qemu-configs/bench.toml`): the first QEMU NVMe
/// with a namespace is the client, the next one (its CMB) the provider.
fn baseline_side(ctx: &Ctx) -> Result<Option<Side>, String> {
    let q: Vec<&Found> = ctx
        .env
        .devices
        .iter()
        .filter(|d| d.info.kind == p2plab_guest_abi::DeviceKind::QemuNvme && d.bdf.is_some())
        .collect();
    let client = ctx.env.role(Role::Client)?;
    if client.info.kind == p2plab_guest_abi::DeviceKind::QemuNvme || q.len() < 2 {
        return Ok(None);
    }
    Side::new(p2plab_guest_abi::markers::BENCH_BASELINE_PREFIX, q[0], q[1]).map(Some)
}

/// Seconds → MiB/s of `len` bytes.
fn mibs(len: usize, t: Instant) -> f64 {
    len as f64 / MIB as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

/// A throughput sample lasts at least this long: `op` is repeated until it has. A 64 MiB
/// P2P read takes p2plab ~0.1 s and QEMU's NVMe ~3 s; on a host whose CPU steal comes in
/// sub-second bursts a 0.1 s sample is one burst's hostage, a 1 s one is not.
const MIN_SAMPLE_SECS: f64 = 1.0;

/// MiB/s of one sample: `op` (moving `len` bytes) run once, then again until the sample
/// has lasted [`MIN_SAMPLE_SECS`]; all the bytes over all the time.
pub(super) fn timed(len: usize, mut op: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let t = Instant::now();
    let mut runs = 0usize;
    loop {
        op()?;
        runs += 1;
        if t.elapsed().as_secs_f64() >= MIN_SAMPLE_SECS {
            return Ok(mibs(len * runs, t));
        }
    }
}

/// [`SAMPLES`] rounds of `one(side)` over every side in turn; the samples per side.
fn paired(
    sides: &[Side],
    mut one: impl FnMut(usize, &Side) -> Result<f64, String>,
) -> Result<Vec<Vec<f64>>, String> {
    let mut v = vec![Vec::with_capacity(SAMPLES); sides.len()];
    for _ in 0..SAMPLES {
        for (i, s) in sides.iter().enumerate() {
            v[i].push(one(i, s)?);
        }
    }
    Ok(v)
}

/// MiB/s of each of `SAMPLES` runs of `f` over `len` bytes (one side only).
fn sample(len: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<Vec<f64>, String> {
    let mut v = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        v.push(timed(len, &mut f)?);
    }
    Ok(v)
}

/// One `# BENCH` line per sample, then a readable summary line.
fn report(ctx: &mut Ctx, metric: &str, unit: &str, samples: &[f64], what: &str) {
    for v in samples {
        ctx.diag(&p2plab_guest_abi::markers::bench_line(metric, *v));
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (s.first(), s.last()) {
        ctx.diag(&format!(
            "  {metric}: {what}: median {:.1} {unit} ({lo:.1}..{hi:.1}, {} samples)",
            s[s.len() / 2],
            s.len()
        ));
    }
}

/// [`report`] for every side: `what` gets the side's client and provider names.
fn report_sides(
    ctx: &mut Ctx,
    sides: &[Side],
    metric: &str,
    unit: &str,
    v: &[Vec<f64>],
    what: impl Fn(&Side) -> String,
) {
    for (s, v) in sides.iter().zip(v) {
        report(ctx, &format!("{}{metric}", s.prefix), unit, v, &what(s));
    }
}

/// [`paired`] reads of `read(i, side)` into `maps[i]` (side i's buffer, which the read
/// fills from the namespace region written with [`SEED`]): every buffer is set to
/// something else first, so stale data cannot pass, and verified after.
fn paired_verified_reads(
    sides: &[Side],
    maps: &[Mapping],
    mut read: impl FnMut(&Side, &Mapping) -> Result<(), String>,
) -> Result<Vec<Vec<f64>>, String> {
    for m in maps {
        m.fill(!SEED);
    }
    let v = paired(sides, |i, s| timed(maps[i].len(), || read(s, &maps[i])))?;
    for m in maps {
        m.verify(SEED)?;
    }
    Ok(v)
}

/// Pin the calling thread to CPU `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the call
    // reads `size_of::<cpu_set_t>()` bytes of it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(format!(
            "sched_setaffinity(CPU {cpu}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `m` read from `f` (from offset 0) by `cpus` threads at once, each pinned to its own
/// CPU with its own ring and DEPTH requests in flight, over its own slice.
fn read_on_cpus(f: &std::fs::File, m: &Mapping, cpus: usize) -> Result<(), String> {
    let part = m.len() / cpus;
    let base = m.ptr() as usize;
    std::thread::scope(|sc| {
        let threads: Vec<_> = (0..cpus)
            .map(|k| {
                sc.spawn(move || -> Result<(), String> {
                    pin_to_cpu(k)?;
                    let ring = super::uring::Ring::new(super::uring::DEPTH * 2)?;
                    ring.transfer_at(f, base + k * part, part, (k * part) as u64, false)
                })
            })
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .map_err(|_| "a reader thread panicked".to_string())?
        })
    })
}

/// Whether the kernel command line carries `word` (`p2plab run --append`).
fn cmdline_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == word))
        .unwrap_or(false)
}

pub fn bench(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?.clone();
    let provider = ctx.env.role(Role::Provider)?.clone();
    let mut sides = vec![Side::new("", &client, &provider)?];
    if let Some(b) = baseline_side(ctx)? {
        ctx.diag(&format!(
            "baseline in the same boot: {} -> {} CMB; samples alternate between the sides",
            b.client.info.name, b.provider.info.name
        ));
        sides.push(b);
    }
    let p2p_only = cmdline_has(p2plab_guest_abi::markers::BENCH_P2P_ONLY);

    if !p2p_only {
        let ram = Mapping::ram(LEN)?;
        ram.fill(SEED);
        let v = paired(&sides, |_, s| timed(LEN, || s.io(&ram, 0, true)))?;
        report_sides(ctx, &sides, "ram_to_nvme", "MiB/s", &v, |s| {
            format!("O_DIRECT write guest RAM -> {}", s.ns)
        });
        let v = paired(&sides, |_, s| timed(LEN, || s.io(&ram, 0, false)))?;
        ram.verify(SEED)?;
        report_sides(ctx, &sides, "nvme_to_ram", "MiB/s", &v, |s| {
            format!("O_DIRECT read {} -> guest RAM", s.ns)
        });
    } else {
        // Stage what p2p_read reads.
        let ram = Mapping::ram(LEN)?;
        ram.fill(SEED);
        for s in &sides {
            s.io(&ram, 0, true)?;
        }
    }

    {
        let p2p: Vec<Mapping> = sides
            .iter()
            .map(|s| s.p2pmem(s.provider.bdf.as_deref()))
            .collect::<Result<_, _>>()?;
        let v = paired_verified_reads(&sides, &p2p, |s, m| s.io(m, 0, false))?;
        report_sides(ctx, &sides, "p2p_read", "MiB/s", &v, |s| {
            format!(
                "O_DIRECT read {} -> {} p2pmem (verified)",
                s.ns, s.provider.info.name
            )
        });
        if !p2p_only {
            // The same reads with DEPTH of them in flight (io_uring READ): the guest's
            // per-request work on one request overlaps the device's copy of another.
            let ring = super::uring::Ring::new(super::uring::DEPTH * 2)?;
            let v =
                paired_verified_reads(&sides, &p2p, |s, m| ring.transfer(&s.file, m, 0, false))?;
            // What the io_uring rows say: `from` names the readers.
            let uring_what = |s: &Side, from: &str| {
                format!(
                    "io_uring READ {} -> {} p2pmem{from}, 1 MiB x {} in flight each (verified)",
                    s.ns,
                    s.provider.info.name,
                    super::uring::DEPTH
                )
            };
            report_sides(ctx, &sides, "p2p_read_qd8", "MiB/s", &v, |s| {
                uring_what(s, "")
            });
            // The same, completions polled from the driver's poll queue (no interrupts,
            // no sleeping reader), when every side's namespace has one.
            if sides.iter().all(|s| io_poll(&s.ns)) {
                let ring = super::uring::Ring::new_polled(super::uring::DEPTH * 2)?;
                let v = paired_verified_reads(&sides, &p2p, |s, m| {
                    ring.transfer(&s.file, m, 0, false)
                })?;
                report_sides(ctx, &sides, "p2p_read_qd8_polled", "MiB/s", &v, |s| {
                    uring_what(s, ", polled (IOPOLL)")
                });
            } else {
                ctx.diag("p2p_read_qd8_polled not measured: a namespace without poll queues");
            }
            // And on every CPU at once (the guest's per-request work is the limit): each
            // CPU's thread reads its slice with DEPTH in flight on its own ring.
            // (A power of two: the slices stay whole 1 MiB requests.)
            let online = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8);
            let cpus = 1usize << online.ilog2();
            if cpus > 1 {
                let v = paired_verified_reads(&sides, &p2p, |s, m| read_on_cpus(&s.file, m, cpus))?;
                let from = format!(" from {cpus} CPUs");
                report_sides(ctx, &sides, "p2p_read_mcpu", "MiB/s", &v, |s| {
                    uring_what(s, &from)
                });
            }
        }
        let v = paired(&sides, |i, s| timed(LEN, || s.io(&p2p[i], 128 << 20, true)))?;
        report_sides(ctx, &sides, "p2p_write", "MiB/s", &v, |s| {
            format!("O_DIRECT write {} p2pmem -> {}", s.provider.info.name, s.ns)
        });
        if p2p_only {
            return Ok(());
        }
        let v = paired(&sides, |i, _| {
            timed(LEN, || {
                p2p[i].fill(SEED);
                Ok(())
            })
        })?;
        report_sides(ctx, &sides, "cpu_store_p2pmem", "MiB/s", &v, |s| {
            format!("CPU 64-bit stores to {} p2pmem", s.provider.info.name)
        });
        let v = paired(&sides, |i, _| timed(LEN, || p2p[i].verify(SEED)))?;
        report_sides(ctx, &sides, "cpu_load_p2pmem", "MiB/s", &v, |s| {
            format!("CPU loads from {} p2pmem", s.provider.info.name)
        });
    }

    // NVMe → a peer NVMe's CMB and back, when the topology has a peer (`two-nvme`,
    // `bench`): the baseline's figure for it is its p2p_read / p2p_write (its provider is
    // a QEMU NVMe's CMB), paired by the host.
    let ours = &sides[0];
    if let Some(peer) = ctx.env.role(Role::Peer).ok().cloned() {
        let name = peer.info.name.clone();
        let cmb = ours
            .p2pmem(peer.bdf.as_deref())
            .map_err(|e| format!("peer {name} CMB p2pmem: {e}"))?;
        cmb.fill(!SEED);
        let v = sample(LEN, || ours.io(&cmb, 0, false))?;
        cmb.verify(SEED)?;
        let ns = ours.ns.clone();
        report(
            ctx,
            "p2p_read_cmb",
            "MiB/s",
            &v,
            &format!("O_DIRECT read {ns} -> {name} CMB p2pmem (verified)"),
        );
        let v = sample(LEN, || ours.io(&cmb, 128 << 20, true))?;
        report(
            ctx,
            "p2p_write_cmb",
            "MiB/s",
            &v,
            &format!("O_DIRECT write {name} CMB p2pmem -> {ns}"),
        );
    }

    // The page-less block path beside the struct-page p2p_read: READ_FIXED into a
    // dma-buf of the provider's VRAM (a GPU), when the kernel has the io_uring series.
    if ours.provider.info.kind == p2plab_guest_abi::DeviceKind::Gpu {
        let gpu = super::gpu::Gpu::open(&ours.provider)?;
        let (ns, pname) = (ours.ns.clone(), ours.provider.info.name.clone());
        let what = format!("io_uring READ_FIXED {ns} -> {pname} VRAM dma-buf, 1 MiB QD 8");
        match super::uring_dmabuf::bench_read(&ns, 0, &gpu, 768 << 20, LEN, SAMPLES, false)? {
            Ok(v) => {
                report(ctx, "uring_dmabuf_read", "MiB/s", &v, &what);
                // The same on a polled ring (the driver's poll queue), as p2p_read_qd8_polled.
                if !io_poll(&ns) {
                    ctx.diag(
                        "uring_dmabuf_read_polled not measured: a namespace without poll queues",
                    );
                } else {
                    // A kernel whose series refuses polled READ_FIXED says so here and
                    // the row is left out; the interrupt-driven row above stands.
                    match super::uring_dmabuf::bench_read(
                        &ns,
                        0,
                        &gpu,
                        768 << 20,
                        LEN,
                        SAMPLES,
                        true,
                    ) {
                        Ok(Ok(v)) => report(
                            ctx,
                            "uring_dmabuf_read_polled",
                            "MiB/s",
                            &v,
                            &format!("{what}, polled (IOPOLL)"),
                        ),
                        Ok(Err(why)) | Err(why) => {
                            ctx.diag(&format!("uring_dmabuf_read_polled not measured: {why}"))
                        }
                    }
                }
            }
            Err(why) => ctx.diag(&format!("uring_dmabuf_read not measured: {why}")),
        }
    }

    // Each side's client into its own CMB.
    let own: Result<Vec<Mapping>, String> = sides
        .iter()
        .map(|s| s.p2pmem(s.client.bdf.as_deref()))
        .collect();
    match own {
        Ok(cmbs) => {
            let v = paired_verified_reads(&sides, &cmbs, |s, m| s.io(m, 0, false))?;
            report_sides(ctx, &sides, "own_cmb_read", "MiB/s", &v, |s| {
                format!("O_DIRECT read {} -> its own CMB (verified)", s.ns)
            });
        }
        Err(e) => ctx.diag(&format!("own_cmb_read not measured: {e}")),
    }
    fio_figures(ctx, &sides)
}

/// The namespace's size in bytes (sysfs counts 512-byte sectors whatever the LBA size).
fn ns_bytes(ns: &str) -> Result<u64, String> {
    let name = ns.rsplit('/').next().unwrap_or(ns);
    let p = format!("/sys/class/block/{name}/size");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("read {p}: {e}"))?;
    let sectors: u64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{p}: {:?}: {e}", s.trim()))?;
    Ok(sectors * 512)
}

/// One fio job (`--output-format=json`) over the bench span, `extra` arguments last;
/// its read or write section.
fn fio_job(
    ns: &str,
    name: &str,
    engine: &str,
    rw: &str,
    bs: &str,
    qd: u32,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let mut args = vec![
        format!("--name={name}"),
        format!("--filename={ns}"),
        "--direct=1".into(),
        format!("--ioengine={engine}"),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={qd}"),
        format!("--offset={FIO_OFF}"),
        format!("--size={FIO_SPAN}"),
        "--time_based".into(),
        format!("--runtime={FIO_RUNTIME_S}"),
        "--norandommap".into(),
        "--randrepeat=0".into(),
        "--output-format=json".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = fio_json(&args)?;
    let job = &v["jobs"][0];
    let err = job["error"]
        .as_i64()
        .ok_or("fio JSON has no jobs[0].error")?;
    if err != 0 {
        return Err(format!("fio {name}: error {err}"));
    }
    let dir = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    let sec = job[dir].clone();
    if sec["io_bytes"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("fio {name}: no {dir} bytes moved"));
    }
    Ok(sec)
}

fn num(sec: &serde_json::Value, path: &[&str], what: &str) -> Result<f64, String> {
    path.iter()
        .fold(sec, |v, k| &v[*k])
        .as_f64()
        .ok_or_else(|| format!("fio JSON has no {what} ({})", path.join(".")))
}

/// The fio figures on each side's namespace, O_DIRECT over [`FIO_SPAN`] bytes, samples
/// alternating between the sides.
fn fio_figures(ctx: &mut Ctx, sides: &[Side]) -> Result<(), String> {
    for s in sides {
        let size = ns_bytes(&s.ns)?;
        if size < FIO_OFF + FIO_SPAN {
            return Err(format!(
                "{} holds {} MiB; the fio figures need {} MiB",
                s.ns,
                size >> 20,
                (FIO_OFF + FIO_SPAN) >> 20
            ));
        }
    }
    let span = |s: &Side| {
        format!(
            "{} {}..{} MiB, O_DIRECT, {FIO_RUNTIME_S} s each",
            s.ns,
            FIO_OFF >> 20,
            (FIO_OFF + FIO_SPAN) >> 20
        )
    };
    for (metric, rw) in [("seq128k_write", "write"), ("seq128k_read", "read")] {
        let v = paired(sides, |_, s| {
            let sec = fio_job(&s.ns, metric, "io_uring", rw, "128k", 8, &[])?;
            Ok(num(&sec, &["bw_bytes"], "bandwidth")? / MIB as f64)
        })?;
        report_sides(ctx, sides, metric, "MiB/s", &v, |s| {
            format!("fio sequential {rw} 128 KiB, io_uring QD 8, {}", span(s))
        });
    }
    let mut lat = vec![(vec![], vec![]); sides.len()];
    let iops = paired(sides, |i, s| {
        let sec = fio_job(&s.ns, "rr4k_qd1", "psync", "randread", "4k", 1, &[])?;
        lat[i]
            .0
            .push(num(&sec, &["clat_ns", "percentile", "50.000000"], "clat p50")? / 1000.0);
        lat[i]
            .1
            .push(num(&sec, &["clat_ns", "percentile", "99.000000"], "clat p99")? / 1000.0);
        num(&sec, &["iops"], "IOPS")
    })?;
    let what = |s: &Side| format!("fio 4 KiB randread, psync QD 1, {}", span(s));
    report_sides(ctx, sides, "rr4k_qd1_iops", "IOPS", &iops, what);
    let (p50, p99): (Vec<Vec<f64>>, Vec<Vec<f64>>) = lat.into_iter().unzip();
    report_sides(ctx, sides, "rr4k_qd1_p50_us", "us", &p50, |s| {
        format!("{}: clat p50", what(s))
    });
    report_sides(ctx, sides, "rr4k_qd1_p99_us", "us", &p99, |s| {
        format!("{}: clat p99", what(s))
    });
    let qd32 = |name: &str| {
        paired(sides, |_, s| {
            let sec = fio_job(&s.ns, name, "io_uring", "randread", "4k", 32, &[])?;
            num(&sec, &["iops"], "IOPS")
        })
    };
    let v = qd32("rr4k_qd32")?;
    report_sides(ctx, sides, "rr4k_qd32_iops", "IOPS", &v, |s| {
        format!("fio 4 KiB randread, io_uring QD 32, {}", span(s))
    });
    // The same with Interrupt Coalescing asked of each controller (Set Features 08h,
    // which Linux never sends on its own): a guest bound by its CPU at QD 32 spends much
    // of it per interrupt. A controller that refuses the feature (QEMU's NVMe answers
    // Feature Not Changeable) is measured as it is, and its row says so.
    let mut taken = Vec::with_capacity(sides.len());
    for s in sides {
        match super::nvme::set_interrupt_coalescing(&s.client, COALESCING) {
            Ok(()) => taken.push(true),
            Err(e) if !s.prefix.is_empty() => {
                ctx.diag(&format!("{}: {e}; measured without", s.client.info.name));
                taken.push(false);
            }
            Err(e) => {
                restore_coalescing(sides, &taken)?;
                return Err(e);
            }
        }
    }
    let v = qd32("rr4k_qd32_coalesced");
    restore_coalescing(sides, &taken)?;
    let (entries, time) = COALESCING
        .aggregation()
        .ok_or("COALESCING turns coalescing off")?;
    let us = time.as_micros();
    let refused: Vec<&str> = sides
        .iter()
        .zip(&taken)
        .filter(|(_, t)| !**t)
        .map(|(s, _)| s.prefix)
        .collect();
    report_sides(ctx, sides, "rr4k_qd32_coalesced_iops", "IOPS", &v?, |s| {
        let how = if refused.contains(&s.prefix) {
            "Interrupt Coalescing refused by the controller (its defaults)".to_string()
        } else {
            format!("Interrupt Coalescing {entries} entries / {us} us")
        };
        format!("fio 4 KiB randread, io_uring QD 32, {how}, {}", span(s))
    });
    polled_figures(ctx, sides, &span)
}

/// 4 KiB random reads on the driver's polled queues (`nvme.poll_queues`, which the
/// `bench` topology boots with): io_uring with IOPOLL (fio `--hipri`), so the guest
/// reaps completions by reading the CQ and neither side raises an interrupt. Not
/// measured (and said so) when a side's namespace has no poll queue.
fn polled_figures(
    ctx: &mut Ctx,
    sides: &[Side],
    span: &dyn Fn(&Side) -> String,
) -> Result<(), String> {
    let missing: Vec<&str> = sides
        .iter()
        .filter(|s| !io_poll(&s.ns))
        .map(|s| s.ns.as_str())
        .collect();
    if !missing.is_empty() {
        ctx.diag(&format!(
            "rr4k_qd1_polled_iops, rr4k_qd32_polled_iops not measured: {} without poll \
             queues (boot with nvme.poll_queues=1)",
            missing.join(", ")
        ));
        return Ok(());
    }
    for (metric, qd) in [("rr4k_qd1_polled_iops", 1), ("rr4k_qd32_polled_iops", 32)] {
        let v = paired(sides, |_, s| {
            let sec = fio_job(
                &s.ns,
                metric,
                "io_uring",
                "randread",
                "4k",
                qd,
                &["--hipri"],
            )?;
            num(&sec, &["iops"], "IOPS")
        })?;
        report_sides(ctx, sides, metric, "IOPS", &v, |s| {
            format!(
                "fio 4 KiB randread, io_uring QD {qd} polled (--hipri, a poll queue), {}",
                span(s)
            )
        });
    }
    Ok(())
}

/// The block queue of `ns` takes polled I/O (the NVMe driver gave it poll queues).
fn io_poll(ns: &str) -> bool {
    let name = ns.rsplit('/').next().unwrap_or(ns);
    std::fs::read_to_string(format!("/sys/class/block/{name}/queue/io_poll"))
        .is_ok_and(|s| s.trim() == "1")
}

/// Interrupt Coalescing for [`fio_figures`]' coalesced row (CDW11 of Set Features 08h):
/// THR 7 (8 completion entries per interrupt, 0's based), TIME 1 (100 µs).
const COALESCING: InterruptCoalescing = InterruptCoalescing::new().with_thr(7).with_time(1);

/// Interrupt Coalescing off again on the sides that took it (`taken[i]`).
fn restore_coalescing(sides: &[Side], taken: &[bool]) -> Result<(), String> {
    let mut r = Ok(());
    for (s, _) in sides.iter().zip(taken).filter(|(_, t)| **t) {
        r = r.and(super::nvme::set_interrupt_coalescing(
            &s.client,
            InterruptCoalescing::new(),
        ));
    }
    r
}
