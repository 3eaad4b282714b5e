//! `bench`: figures for `p2plab bench`, on request only (no topology runs it by default).
//!
//! Every metric is measured [`SAMPLES`] times in this one boot, and every sample is
//! printed as `# BENCH <metric> <value>` (the host takes median, min and max). Units:
//! MiB/s for throughput, IOPS for the fio random reads, µs for their completion-latency
//! percentiles. The P2P and own-CMB reads are verified.
//!
//! Namespace regions: the O_DIRECT figures use 0..64M (RAM and P2P reads, written first by
//! `ram_to_nvme`) and 128M..192M (`p2p_write`, `p2p_write_cmb`); the fio figures use 512M..1G, written by
//! `seq128k_write` before any fio read so the reads return data, not holes.

use super::nvme::fio_json;
use super::Ctx;
use crate::devices::Role;
use crate::mem::{direct_io, open_direct, Mapping, MIB};
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

/// MiB/s of each of `SAMPLES` runs of `f` over `len` bytes.
fn sample(len: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<Vec<f64>, String> {
    let mut v = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        f()?;
        v.push(len as f64 / MIB as f64 / t.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(v)
}

/// Samples of `read` (which fills `m` from the namespace region written with [`SEED`]):
/// `m` is set to something else first, so stale data cannot pass, and verified after.
fn verified_reads(
    m: &Mapping,
    read: impl FnMut() -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    m.fill(!SEED);
    let v = sample(m.len(), read)?;
    m.verify(SEED)?;
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

pub fn bench(ctx: &mut Ctx) -> Result<(), String> {
    let client = ctx.env.role(Role::Client)?;
    let provider = ctx.env.role(Role::Provider)?;
    let ns = client
        .ns
        .clone()
        .ok_or_else(|| format!("client {} has no namespace", client.info.name))?;
    let pbdf = provider.bdf.clone().unwrap_or_default();
    let f = open_direct(&ns)?;
    let io = |m: &Mapping, off: u64, write: bool| {
        direct_io(&f, m, off, CHUNK, write).map_err(|e| format!("O_DIRECT on {ns}: {e}"))
    };

    let ram = Mapping::ram(LEN)?;
    ram.fill(SEED);
    let v = sample(LEN, || io(&ram, 0, true))?;
    report(
        ctx,
        "ram_to_nvme",
        "MiB/s",
        &v,
        &format!("O_DIRECT write guest RAM -> {ns}"),
    );
    let v = sample(LEN, || io(&ram, 0, false))?;
    report(
        ctx,
        "nvme_to_ram",
        "MiB/s",
        &v,
        &format!("O_DIRECT read {ns} -> guest RAM"),
    );
    ram.verify(SEED)?;
    drop(ram);

    {
        let p2p = Mapping::p2pmem(&pbdf, LEN)?;
        let v = verified_reads(&p2p, || io(&p2p, 0, false))?;
        report(
            ctx,
            "p2p_read",
            "MiB/s",
            &v,
            &format!(
                "O_DIRECT read {ns} -> {} p2pmem (verified)",
                provider.info.name
            ),
        );
        // The same reads with DEPTH of them in flight (io_uring READ): the guest's
        // per-request work on one request overlaps the device's copy of another.
        let ring = super::uring::Ring::new(super::uring::DEPTH * 2)?;
        let v = verified_reads(&p2p, || ring.transfer(&f, &p2p, 0, false))?;
        drop(ring);
        report(
            ctx,
            "p2p_read_qd8",
            "MiB/s",
            &v,
            &format!(
                "io_uring READ {ns} -> {} p2pmem, 1 MiB x {} in flight (verified)",
                provider.info.name,
                super::uring::DEPTH
            ),
        );
        let v = sample(LEN, || io(&p2p, 128 << 20, true))?;
        report(
            ctx,
            "p2p_write",
            "MiB/s",
            &v,
            &format!("O_DIRECT write {} p2pmem -> {ns}", provider.info.name),
        );
        let v = sample(LEN, || {
            p2p.fill(SEED);
            Ok(())
        })?;
        report(
            ctx,
            "cpu_store_p2pmem",
            "MiB/s",
            &v,
            &format!("CPU 64-bit stores to {} p2pmem", provider.info.name),
        );
        let v = sample(LEN, || p2p.verify(SEED))?;
        report(
            ctx,
            "cpu_load_p2pmem",
            "MiB/s",
            &v,
            &format!("CPU loads from {} p2pmem", provider.info.name),
        );
    }

    // NVMe → a peer NVMe's CMB and back, when the topology has a peer (`two-nvme`): the
    // figure QEMU's NVMe gives as its p2p_read (the baseline's provider is a QEMU NVMe).
    if let Some(peer) = ctx.env.role(Role::Peer).ok().cloned() {
        let name = peer.info.name.clone();
        let cmb = Mapping::p2pmem(peer.bdf.as_deref().unwrap_or_default(), LEN)
            .map_err(|e| format!("peer {name} CMB p2pmem: {e}"))?;
        let v = verified_reads(&cmb, || io(&cmb, 0, false))?;
        report(
            ctx,
            "p2p_read_cmb",
            "MiB/s",
            &v,
            &format!("O_DIRECT read {ns} -> {name} CMB p2pmem (verified)"),
        );
        let v = sample(LEN, || io(&cmb, 128 << 20, true))?;
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
    if provider.info.kind == p2plab_guest_abi::DeviceKind::Gpu {
        let gpu = super::gpu::Gpu::open(provider)?;
        match super::uring_dmabuf::bench_read(&ns, 0, &gpu, 768 << 20, LEN, SAMPLES)? {
            Ok(v) => report(
                ctx,
                "uring_dmabuf_read",
                "MiB/s",
                &v,
                &format!(
                    "io_uring READ_FIXED {ns} -> {} VRAM dma-buf, 1 MiB QD 8",
                    provider.info.name
                ),
            ),
            Err(why) => ctx.diag(&format!("uring_dmabuf_read not measured: {why}")),
        }
    }

    if let Some(cbdf) = client.bdf.as_deref() {
        match Mapping::p2pmem(cbdf, LEN) {
            Ok(cmb) => {
                let v = verified_reads(&cmb, || io(&cmb, 0, false))?;
                report(
                    ctx,
                    "own_cmb_read",
                    "MiB/s",
                    &v,
                    &format!("O_DIRECT read {ns} -> its own CMB (verified)"),
                );
            }
            Err(e) => ctx.diag(&format!("own_cmb_read not measured: {e}")),
        }
    }
    drop(f);
    fio_figures(ctx, &ns)
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

/// One fio job (`--output-format=json`) over the bench span; its read or write section.
fn fio_job(
    ns: &str,
    name: &str,
    engine: &str,
    rw: &str,
    bs: &str,
    qd: u32,
) -> Result<serde_json::Value, String> {
    let args = [
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

/// The fio figures on the client namespace, O_DIRECT over [`FIO_SPAN`] bytes.
fn fio_figures(ctx: &mut Ctx, ns: &str) -> Result<(), String> {
    let size = ns_bytes(ns)?;
    if size < FIO_OFF + FIO_SPAN {
        return Err(format!(
            "{ns} holds {} MiB; the fio figures need {} MiB",
            size >> 20,
            (FIO_OFF + FIO_SPAN) >> 20
        ));
    }
    let span = format!(
        "{ns} {}..{} MiB, O_DIRECT, {FIO_RUNTIME_S} s each",
        FIO_OFF >> 20,
        (FIO_OFF + FIO_SPAN) >> 20
    );
    for (metric, rw) in [("seq128k_write", "write"), ("seq128k_read", "read")] {
        let mut v = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let sec = fio_job(ns, metric, "io_uring", rw, "128k", 8)?;
            v.push(num(&sec, &["bw_bytes"], "bandwidth")? / MIB as f64);
        }
        report(
            ctx,
            metric,
            "MiB/s",
            &v,
            &format!("fio sequential {rw} 128 KiB, io_uring QD 8, {span}"),
        );
    }
    let (mut iops, mut p50, mut p99) = (vec![], vec![], vec![]);
    for _ in 0..SAMPLES {
        let sec = fio_job(ns, "rr4k_qd1", "psync", "randread", "4k", 1)?;
        iops.push(num(&sec, &["iops"], "IOPS")?);
        p50.push(num(&sec, &["clat_ns", "percentile", "50.000000"], "clat p50")? / 1000.0);
        p99.push(num(&sec, &["clat_ns", "percentile", "99.000000"], "clat p99")? / 1000.0);
    }
    let what = format!("fio 4 KiB randread, psync QD 1, {span}");
    report(ctx, "rr4k_qd1_iops", "IOPS", &iops, &what);
    report(
        ctx,
        "rr4k_qd1_p50_us",
        "us",
        &p50,
        &format!("{what}: clat p50"),
    );
    report(
        ctx,
        "rr4k_qd1_p99_us",
        "us",
        &p99,
        &format!("{what}: clat p99"),
    );
    let mut v = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let sec = fio_job(ns, "rr4k_qd32", "io_uring", "randread", "4k", 32)?;
        v.push(num(&sec, &["iops"], "IOPS")?);
    }
    report(
        ctx,
        "rr4k_qd32_iops",
        "IOPS",
        &v,
        &format!("fio 4 KiB randread, io_uring QD 32, {span}"),
    );
    Ok(())
}
