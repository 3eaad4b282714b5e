//! `p2plab proof RUN_DIR [CASE]`: the bypass proof of one P2P case (the bytes each
//! device moved where, the CPU witness, the guest's own data check, a verdict), or for
//! a run without one what every device moved over the whole run.

use crate::ktap::{self, Verdict};
use crate::summary::{environment_line, run_environment};
use anyhow::Context;
use p2plab_counters::{BytesSnapshot, Counters, DeviceSnapshot, DirSnapshot};
use p2plab_guest_abi::{CaseId, Marker, Role};
use p2plab_lab::config::{DeviceKind, Topology};
use serde_json::Value;
use std::path::Path;

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
    let p2p_read = CaseId::P2pRead.name();
    if ktap::parse(&ktap).iter().any(|r| r.name == p2p_read) {
        return proof_main(run_dir, p2p_read);
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
    let counters: Counters = serde_json::from_value(read("counters.json")?)
        .context("counters.json is not the counter contract")?;
    let rw = |r: u64, w: u64| format!("read {}, wrote {}", fmt_bytes(r), fmt_bytes(w));
    let dir = |d: &DirSnapshot| rw(d.read_bytes, d.write_bytes);
    let bytes = |b: &BytesSnapshot| rw(b.read_bytes, b.write_bytes);
    println!();
    println!(
        "p2plab counters — whole run of topology '{}' ({})",
        run["topology"].as_str().unwrap_or("?"),
        run_dir.display()
    );
    println!("  ({})", environment_line(&run_environment(&run)));
    for d in &counters.devices {
        println!("  {} ({}) as bus master:", d.name, d.kind);
        println!("    {:<28} {}", "guest RAM", dir(&d.dma.host_memory));
        println!("    {:<28} {}", "its own BARs", dir(&d.dma.self_));
        for (peer, v) in &d.dma.peers {
            println!("    {:<28} {}", format!("peer {peer}'s BARs"), dir(v));
        }
        println!(
            "    {:<28} {}",
            "relayed through QEMU",
            dir(&d.dma.client_relay)
        );
        for (peer, v) in &d.inbound.peers {
            println!("    {:<28} {}", format!("inbound from {peer}"), bytes(v));
        }
        println!(
            "    {:<28} {}",
            "trapped CPU MMIO",
            bytes(&d.inbound.cpu_mmio)
        );
    }
    Ok(0)
}

/// `p2plab proof RUN_DIR CASE`: the bypass proof of one P2P case, for a newcomer.
pub fn proof_main(run_dir: &Path, case: &str) -> anyhow::Result<i32> {
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("run.json")).context("run.json")?,
    )?;
    let mut topo: Topology = toml::from_str(run["topology_toml"].as_str().unwrap_or_default())
        .context("topology in run.json")?;
    topo.name = run["topology"].as_str().unwrap_or_default().to_string();
    // Who moved the data where, by the roles the case table gives the case: with an
    // importer, the importer GPU's copy engine into the exporter's VRAM (page-less
    // dma-buf); with an exporter only, the client NVMe into the exporter's dma-buf; else
    // the client NVMe into the provider's BAR. A target behind a dma-buf is page-less.
    let roles = CaseId::from_name(case)
        .with_context(|| format!("{case} is not a guest case (p2plab run --list)"))?
        .case()
        .roles;
    let role = |r: Role| -> anyhow::Result<String> {
        topo.roles
            .get(r)
            .map(str::to_string)
            .with_context(|| format!("topology has no {r} role"))
    };
    let pageless = roles.contains(&Role::Exporter);
    let (client, provider) = if roles.contains(&Role::Importer) {
        (role(Role::Importer)?, role(Role::Exporter)?)
    } else if pageless {
        // A topology without an exporter lends the provider's buffer as the dma-buf.
        let target = role(Role::Exporter).or_else(|_| role(Role::Provider))?;
        (role(Role::Client)?, target)
    } else {
        (role(Role::Client)?, role(Role::Provider)?)
    };
    // The NVMe's guest-RAM reads are its queues and PRP lists (not data); a GPU
    // initiator's guest-RAM reads and writes are its ring and status words.
    let gpu_initiator = roles.contains(&Role::Importer);
    let ktap = std::fs::read_to_string(run_dir.join("results.ktap")).unwrap_or_default();
    let verdict = ktap::parse(&ktap).into_iter().find(|r| r.name == case);
    let cdir = run_dir.join("cases").join(case);
    let delta: Counters = std::fs::read_to_string(cdir.join("counters.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let none = DeviceSnapshot::default();
    let c = delta.device(&client).unwrap_or(&none);
    let p = delta.device(&provider).unwrap_or(&none);
    let peer = c.dma.peers.get(&provider).map_or(0, |d| d.write_bytes);
    let inbound = p.inbound.peers.get(&client).map_or(0, |b| b.write_bytes);
    let ram_data = c.dma.host_memory.write_bytes
        + if gpu_initiator {
            c.dma.host_memory.read_bytes
        } else {
            0
        };
    let relay: u64 = [c, p]
        .iter()
        .map(|d| d.dma.client_relay.read_bytes + d.dma.client_relay.write_bytes)
        .sum();
    let cpu: Option<Value> = std::fs::read_to_string(cdir.join("cpu.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let console = std::fs::read_to_string(run_dir.join("console.log")).unwrap_or_default();
    // The guest's own data-check line, from inside this case's markers.
    let begin = Marker::CaseBegin(case).to_string();
    let end = Marker::CaseEnd(case).to_string();
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
        if gpu_initiator {
            format!("bytes {client} moved through guest RAM")
        } else {
            format!("bytes {client} wrote into guest RAM")
        },
        fmt_bytes(ram_data)
    );
    if let Some(target) = topo.device(&provider) {
        if target.kind == DeviceKind::Gpu {
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
    let u = |v: &Value| v.as_u64().unwrap_or(0);
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
