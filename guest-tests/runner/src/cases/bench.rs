//! `bench`: throughput figures for `p2plab bench`, on request only (no topology runs it
//! by default). Each figure is the best of a few repeats; the P2P read is verified once.
//! Output lines: `# BENCH <metric> <MiB/s>` ([`BenchMetric::line`]; the host parses them).

use super::Ctx;
use crate::devices::Role;
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use p2plab_guest_abi::markers::BenchMetric;
use std::time::Instant;

const LEN: usize = 64 * MIB;
const CHUNK: usize = MIB;
const REPEATS: usize = 3;
const SEED: u64 = 0x6265_6e63;

/// Best MiB/s of `REPEATS` runs of `f` over `len` bytes.
fn best(len: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut best = 0f64;
    for _ in 0..REPEATS {
        let t = Instant::now();
        f()?;
        best = best.max(len as f64 / MIB as f64 / t.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(best)
}

fn report(ctx: &mut Ctx, metric: BenchMetric, mibs: f64, what: &str) {
    ctx.diag(&metric.line(mibs));
    ctx.diag(&format!(
        "  {}: {what}: {mibs:.1} MiB/s (best of {REPEATS})",
        metric.name()
    ));
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
    let v = best(LEN, || io(&ram, 0, true))?;
    report(
        ctx,
        BenchMetric::RamToNvme,
        v,
        &format!("O_DIRECT write guest RAM -> {ns}"),
    );
    let v = best(LEN, || io(&ram, 0, false))?;
    report(
        ctx,
        BenchMetric::NvmeToRam,
        v,
        &format!("O_DIRECT read {ns} -> guest RAM"),
    );
    ram.verify(SEED)?;
    drop(ram);

    {
        let p2p = Mapping::p2pmem(&pbdf, LEN)?;
        p2p.fill(!SEED);
        let v = best(LEN, || io(&p2p, 0, false))?;
        p2p.verify(SEED)?;
        report(
            ctx,
            BenchMetric::P2pRead,
            v,
            &format!(
                "O_DIRECT read {ns} -> {} p2pmem (verified)",
                provider.info.name
            ),
        );
        let v = best(LEN, || io(&p2p, 128 << 20, true))?;
        report(
            ctx,
            BenchMetric::P2pWrite,
            v,
            &format!("O_DIRECT write {} p2pmem -> {ns}", provider.info.name),
        );
        let v = best(LEN, || {
            p2p.fill(SEED);
            Ok(())
        })?;
        report(
            ctx,
            BenchMetric::CpuStoreP2pmem,
            v,
            &format!("CPU 64-bit stores to {} p2pmem", provider.info.name),
        );
        let v = best(LEN, || p2p.verify(SEED))?;
        report(
            ctx,
            BenchMetric::CpuLoadP2pmem,
            v,
            &format!("CPU loads from {} p2pmem", provider.info.name),
        );
    }

    if let Some(cbdf) = client.bdf.as_deref() {
        match Mapping::p2pmem(cbdf, LEN) {
            Ok(cmb) => {
                let v = best(LEN, || io(&cmb, 0, false))?;
                cmb.verify(SEED)?;
                report(
                    ctx,
                    BenchMetric::OwnCmbRead,
                    v,
                    &format!("O_DIRECT read {ns} -> its own CMB (verified)"),
                );
            }
            Err(e) => ctx.diag(&format!("own_cmb_read not measured: {e}")),
        }
    }
    Ok(())
}
