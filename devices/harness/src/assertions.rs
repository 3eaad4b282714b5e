//! Host-side assertions: what each case's counter delta must show.
//!
//! `check(case, topology, delta)` returns one message per failed expectation, naming the
//! counter, the expected and the seen value. A case without rules passes on the guest's
//! verdict alone. A rule applies only where every role device its paths name is a p2plab
//! device (QEMU's built-in NVMe has no counters).

use p2plab_counters::{CounterPath, Counters, DeviceSnapshot};
use p2plab_guest_abi::CaseId;
use p2plab_lab::config::Topology;
use serde_json::Value;

/// What a counter must be. Paths are [`CounterPath`]s; `{client}`,
/// `{provider}`, `{peer}`, `{importer}` and `{exporter}` are replaced by the topology's
/// role devices.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    Eq(&'static str, i64),
    AtLeast(&'static str, i64),
    AtMost(&'static str, i64),
}

impl Expect {
    /// The path (or witness field) the expectation is about.
    pub fn path(self) -> &'static str {
        match self {
            Expect::Eq(p, _) | Expect::AtLeast(p, _) | Expect::AtMost(p, _) => p,
        }
    }

    /// `Err("expected >= 64, seen 3")` unless `seen` satisfies it (`None`: not counted).
    pub fn check(self, seen: Option<i64>) -> Result<(), String> {
        let (ok, want) = match self {
            Expect::Eq(_, v) => (seen == Some(v), format!("== {v}")),
            Expect::AtLeast(_, v) => (seen.is_some_and(|s| s >= v), format!(">= {v}")),
            Expect::AtMost(_, v) => (seen.is_some_and(|s| s <= v), format!("<= {v}")),
        };
        match (ok, seen) {
            (true, _) => Ok(()),
            (false, Some(s)) => Err(format!("expected {want}, seen {s}")),
            (false, None) => Err(format!("expected {want}, seen nothing")),
        }
    }
}

pub struct Rule {
    pub case: CaseId,
    pub expect: &'static [Expect],
}

const NV_MIB: i64 = 1 << 20;

/// The counter rules, by case.
pub const RULES: &[Rule] = &[
    // NVMe-side cases (guest-tests/runner/src/cases/nvme.rs).
    Rule {
        case: CaseId::CmbRead,
        expect: &[
            Expect::AtLeast("devices[{client}].dma.self.write_bytes", 64 * NV_MIB),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB - 1),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::SqsInCmb,
        expect: &[
            // 1000 reads (+ the staging writes): one 64-byte SQE each, fetched from the CMB.
            Expect::AtLeast("devices[{client}].dma.self.read_bytes", 64 * 1000),
            Expect::Eq("devices[{client}].dma.self.write_bytes", 0),
            Expect::AtLeast("devices[{client}].dma.host_memory.write_bytes", 1000 * 4096),
        ],
    },
    Rule {
        case: CaseId::VendorLog,
        expect: &[Expect::AtLeast(
            "devices[{client}].dma.host_memory.write_bytes",
            8 * NV_MIB,
        )],
    },
    Rule {
        case: CaseId::FioVerify,
        expect: &[
            // Two 64 MiB write passes from RAM and two verify passes back into RAM.
            Expect::AtLeast("devices[{client}].dma.host_memory.read_bytes", 128 * NV_MIB),
            Expect::AtLeast(
                "devices[{client}].dma.host_memory.write_bytes",
                128 * NV_MIB,
            ),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    // FLR of the client (guest-tests/runner/src/cases/pci.rs): once reset and rebound the
    // controller reaches guest RAM and its own CMB directly again (its BAR windows came
    // back), so nothing is relayed; the 4 MiB write read RAM, the read-back wrote it.
    Rule {
        case: CaseId::FlrReset,
        expect: &[
            Expect::AtLeast("devices[{client}].dma.host_memory.read_bytes", 4 * NV_MIB),
            Expect::AtLeast("devices[{client}].dma.host_memory.write_bytes", 4 * NV_MIB),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::NvmeNvmeCopy,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{peer}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB),
            Expect::AtLeast("devices[{peer}].dma.self.read_bytes", 64 * NV_MIB),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::P2pRefused,
        expect: &[Expect::Eq(
            "devices[{client}].dma.peers.{provider}.write_bytes",
            0,
        )],
    },
    Rule {
        case: CaseId::P2pHostBridge,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtLeast(
                "devices[{provider}].inbound.peers.{client}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    // GPU-side cases (guest-tests/runner/src/cases/{p2p,gpu,uring}.rs), 64 MiB each.
    // NVMe -> provider BAR: every data byte went to the peer, none to guest RAM or the relay.
    Rule {
        case: CaseId::P2pRead,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB - 1),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    // Provider BAR -> NVMe: the data came from the peer, not from RAM; the read-back (and
    // nothing else) landed in RAM.
    Rule {
        case: CaseId::P2pWrite,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.read_bytes",
                64 * NV_MIB,
            ),
            Expect::Eq("devices[{client}].dma.peers.{provider}.write_bytes", 0),
            Expect::AtMost("devices[{client}].dma.host_memory.read_bytes", NV_MIB - 1),
            Expect::AtLeast("devices[{client}].dma.host_memory.write_bytes", 64 * NV_MIB),
            Expect::AtMost(
                "devices[{client}].dma.host_memory.write_bytes",
                65 * NV_MIB - 1,
            ),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    // GPU copy engine: RAM -> VRAM A (self) -> client CMB (peer) -> VRAM B (self) -> RAM.
    Rule {
        case: CaseId::CopyEngine,
        expect: &[
            Expect::AtLeast(
                "devices[{provider}].dma.host_memory.read_bytes",
                64 * NV_MIB,
            ),
            Expect::AtLeast(
                "devices[{provider}].dma.host_memory.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtLeast(
                "devices[{provider}].dma.peers.{client}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtLeast(
                "devices[{provider}].dma.peers.{client}.read_bytes",
                64 * NV_MIB,
            ),
            Expect::AtLeast("devices[{provider}].dma.self.read_bytes", 128 * NV_MIB),
            Expect::AtLeast("devices[{provider}].dma.self.write_bytes", 128 * NV_MIB),
            Expect::Eq("devices[{provider}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{provider}].dma.client_relay.write_bytes", 0),
        ],
    },
    // io_uring: READ ns -> p2pmem X, WRITE X -> ns, READ ns -> p2pmem Y; only the staging
    // of the pattern (RAM -> ns) touches guest RAM.
    Rule {
        case: CaseId::IoUringP2p,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.write_bytes",
                128 * NV_MIB,
            ),
            Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.read_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB - 1),
            Expect::AtMost(
                "devices[{client}].dma.host_memory.read_bytes",
                65 * NV_MIB - 1,
            ),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    // The CPU moved the data, no device did (the checksum engine reads VRAM locally).
    Rule {
        case: CaseId::CpuCopy,
        expect: &[
            Expect::Eq("devices[{provider}].dma.self.write_bytes", 0),
            Expect::Eq("devices[{provider}].dma.host_memory.read_bytes", 0),
            Expect::Eq("devices[{provider}].inbound.peers.{client}.write_bytes", 0),
        ],
    },
    // Page-less (dma-buf) cases on two-gpu: the importer's copy engine writes into the
    // exporter's VRAM through the imported mapping; guest RAM carries only the ring.
    Rule {
        case: CaseId::DmabufPeerCopy,
        expect: &[
            Expect::AtLeast(
                "devices[{importer}].dma.peers.{exporter}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{importer}].dma.host_memory.read_bytes", NV_MIB - 1),
            Expect::AtMost(
                "devices[{importer}].dma.host_memory.write_bytes",
                NV_MIB - 1,
            ),
            Expect::Eq("devices[{importer}].dma.client_relay.write_bytes", 0),
            Expect::Eq("devices[{exporter}].dma.host_memory.read_bytes", 0),
        ],
    },
    // Two 4 MiB copies (before and after an invalidation); the one after the revoke
    // moves nothing.
    Rule {
        case: CaseId::DmabufRevoke,
        expect: &[
            Expect::Eq(
                "devices[{importer}].dma.peers.{exporter}.write_bytes",
                8 * NV_MIB,
            ),
            Expect::Eq("devices[{importer}].dma.client_relay.write_bytes", 0),
        ],
    },
    // Block I/O into a dma-buf (the io_uring series; SKIPped cases are not checked):
    // the NVMe DMAs straight into the exporter's VRAM, guest RAM carries no data.
    Rule {
        case: CaseId::UringDmabufRead,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{exporter}.write_bytes",
                64 * NV_MIB,
            ),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", NV_MIB - 1),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::UringDmabufWrite,
        expect: &[
            Expect::AtLeast(
                "devices[{client}].dma.peers.{exporter}.read_bytes",
                64 * NV_MIB,
            ),
            Expect::Eq("devices[{client}].dma.client_relay.read_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::UringDmabufRefused,
        expect: &[Expect::Eq(
            "devices[{client}].dma.peers.{provider}.write_bytes",
            0,
        )],
    },
    // The hostile group (guest-tests/runner/src/cases/hostile*): every attack the guest
    // made shows in the device's error counters, and what it made the device write
    // stayed inside the guest's targets.
    Rule {
        case: CaseId::HostileNvmeRegs,
        expect: &[
            Expect::AtLeast("devices[{client}].errors.fatal_enable", 1),
            Expect::AtLeast("devices[{client}].errors.doorbell_invalid_value", 2),
            Expect::AtLeast("devices[{client}].errors.doorbell_invalid_register", 2),
            Expect::AtLeast("devices[{client}].errors.cmb_address_invalid", 1),
            // One per attack, plus the driver's own at the rebind.
            Expect::AtLeast("devices[{client}].errors.controller_resets", 6),
            // Identify sent to the address CMBMSC.CBA named went to RAM, not the CMB.
            Expect::Eq("devices[{client}].dma.self.write_bytes", 0),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::HostileNvmeDma,
        expect: &[
            Expect::AtLeast("devices[{client}].errors.status_data_transfer_error", 3),
            Expect::AtLeast("devices[{client}].errors.status_prp_offset_invalid", 4),
            Expect::AtLeast(
                "devices[{client}].errors.status_invalid_number_of_sgl_descriptors",
                1,
            ),
            Expect::AtLeast(
                "devices[{client}].errors.status_invalid_use_of_controller_memory_buffer",
                2,
            ),
            Expect::AtLeast(
                "devices[{client}].errors.status_invalid_queue_identifier",
                3,
            ),
            Expect::AtLeast(
                "devices[{client}].errors.status_completion_queue_invalid",
                1,
            ),
            Expect::AtLeast("devices[{client}].errors.status_invalid_queue_size", 1),
            Expect::AtLeast("devices[{client}].errors.status_lba_out_of_range", 1),
            Expect::AtLeast("devices[{client}].errors.fatal_cq_post", 1),
            Expect::AtLeast("devices[{client}].errors.fatal_enable", 1),
            Expect::AtLeast("devices[{client}].errors.fatal_sq_fetch", 1),
            Expect::AtLeast(
                "devices[{client}].errors.status_invalid_field_in_command",
                2,
            ),
            Expect::AtLeast(
                "devices[{client}].errors.status_invalid_namespace_or_format",
                1,
            ),
            Expect::AtLeast("devices[{client}].errors.status_invalid_command_opcode", 1),
            // The unmapped data pointers, list, CQ and SQ: stopped by the fabric at their
            // first page (the read's and the write's 4 KiB), not carried out elsewhere.
            Expect::AtLeast("devices[{client}].dma.faults.write_bytes", 4096),
            Expect::AtLeast("devices[{client}].dma.faults.read_bytes", 4096),
            Expect::AtLeast("devices[{client}].dma.faults.ops", 5),
            // Nothing in its own CMB; guest RAM got the targets' data only: the reads
            // that succeeded (the staging read-back 1 MiB, 384 KiB of raw reads) and the
            // rebind's probe, not the 1 MiB reads refused for their PRPs.
            Expect::Eq("devices[{client}].dma.self.write_bytes", 0),
            Expect::AtMost("devices[{client}].dma.host_memory.write_bytes", 2 * NV_MIB),
            Expect::Eq("devices[{client}].dma.client_relay.write_bytes", 0),
        ],
    },
    Rule {
        case: CaseId::HostileGpuCe,
        expect: &[
            Expect::AtLeast("devices[{provider}].errors.ce_error_src_fault", 4),
            Expect::AtLeast("devices[{provider}].errors.ce_error_dst_fault", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_error_vram_range", 2),
            Expect::AtLeast("devices[{provider}].errors.ce_error_length", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_error_overflow", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_error_flags", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_halt_fetch_fault", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_halt_bad_ring", 1),
            Expect::AtLeast("devices[{provider}].errors.ce_halt_bad_tail", 1),
            Expect::AtLeast("devices[{provider}].errors.ck_error_range", 1),
            // Wild source and destination, the three rewritten slots, the ring in BAR0.
            Expect::AtLeast("devices[{provider}].dma.faults.ops", 6),
            Expect::AtLeast("devices[{provider}].dma.faults.read_bytes", 4 * 4096),
            Expect::AtLeast("devices[{provider}].dma.faults.write_bytes", 4096),
            // Ring and buffers were in VRAM: the engine never touched guest RAM.
            Expect::Eq("devices[{provider}].dma.host_memory.read_bytes", 0),
            Expect::Eq("devices[{provider}].dma.host_memory.write_bytes", 0),
            Expect::Eq("devices[{provider}].dma.client_relay.write_bytes", 0),
        ],
    },
    // The client's CMB BAR follows the VRAM BAR on switch: the copies running past the
    // VRAM end must not have reached it.
    Rule {
        case: CaseId::HostileGpuCe,
        expect: &[
            Expect::Eq("devices[{provider}].dma.peers.{client}.write_bytes", 0),
            Expect::Eq("devices[{provider}].dma.peers.{client}.read_bytes", 0),
        ],
    },
];

/// Two counters of a case's delta that must be equal (e.g. what one device wrote to a
/// peer and what the peer saw arrive). Same path syntax and conditions as [`Rule`].
pub struct SameRule {
    pub case: CaseId,
    pub a: &'static str,
    pub b: &'static str,
}

pub const SAME_RULES: &[SameRule] = &[
    SameRule {
        case: CaseId::NvmeNvmeCopy,
        a: "devices[{peer}].inbound.peers.{client}.write_bytes",
        b: "devices[{client}].dma.peers.{peer}.write_bytes",
    },
    // What the initiator sent to a peer is what the peer saw arrive.
    SameRule {
        case: CaseId::P2pRead,
        a: "devices[{provider}].inbound.peers.{client}.write_bytes",
        b: "devices[{client}].dma.peers.{provider}.write_bytes",
    },
    SameRule {
        case: CaseId::P2pWrite,
        a: "devices[{provider}].inbound.peers.{client}.read_bytes",
        b: "devices[{client}].dma.peers.{provider}.read_bytes",
    },
    SameRule {
        case: CaseId::CopyEngine,
        a: "devices[{client}].inbound.peers.{provider}.write_bytes",
        b: "devices[{provider}].dma.peers.{client}.write_bytes",
    },
    SameRule {
        case: CaseId::CopyEngine,
        a: "devices[{client}].inbound.peers.{provider}.read_bytes",
        b: "devices[{provider}].dma.peers.{client}.read_bytes",
    },
    SameRule {
        case: CaseId::IoUringP2p,
        a: "devices[{provider}].inbound.peers.{client}.write_bytes",
        b: "devices[{client}].dma.peers.{provider}.write_bytes",
    },
    SameRule {
        case: CaseId::IoUringP2p,
        a: "devices[{provider}].inbound.peers.{client}.read_bytes",
        b: "devices[{client}].dma.peers.{provider}.read_bytes",
    },
    SameRule {
        case: CaseId::UringDmabufRead,
        a: "devices[{exporter}].inbound.peers.{client}.write_bytes",
        b: "devices[{client}].dma.peers.{exporter}.write_bytes",
    },
    SameRule {
        case: CaseId::UringDmabufWrite,
        a: "devices[{exporter}].inbound.peers.{client}.read_bytes",
        b: "devices[{client}].dma.peers.{exporter}.read_bytes",
    },
    SameRule {
        case: CaseId::DmabufPeerCopy,
        a: "devices[{exporter}].inbound.peers.{importer}.write_bytes",
        b: "devices[{importer}].dma.peers.{exporter}.write_bytes",
    },
    SameRule {
        case: CaseId::DmabufRevoke,
        a: "devices[{exporter}].inbound.peers.{importer}.write_bytes",
        b: "devices[{importer}].dma.peers.{exporter}.write_bytes",
    },
    SameRule {
        case: CaseId::DmabufUnbind,
        a: "devices[{exporter}].inbound.peers.{importer}.write_bytes",
        b: "devices[{importer}].dma.peers.{exporter}.write_bytes",
    },
];

/// The counter at `path` (roles substituted) in `c`: `Ok(None)` if the snapshot has no
/// such device or peer, `Err` if `path` is not a counter path at all (a misspelt rule).
fn counter(c: &Counters, path: &str) -> Result<Option<i64>, String> {
    let p: CounterPath = path.parse().map_err(|e| format!("{e}"))?;
    Ok(c.get(&p).map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
}

pub fn check(case: &str, topo: &Topology, delta: &Counters) -> Vec<String> {
    let mut f = check_rules(RULES, case, topo, delta);
    f.extend(check_same(SAME_RULES, case, topo, delta));
    f
}

fn subst_roles(topo: &Topology, p: &str) -> String {
    p.replace("{client}", topo.roles.client.as_deref().unwrap_or("?"))
        .replace("{provider}", topo.roles.provider.as_deref().unwrap_or("?"))
        .replace("{peer}", topo.roles.peer.as_deref().unwrap_or("?"))
        .replace("{importer}", topo.roles.importer.as_deref().unwrap_or("?"))
        .replace("{exporter}", topo.roles.exporter.as_deref().unwrap_or("?"))
}

fn check_same(rules: &[SameRule], case: &str, topo: &Topology, delta: &Counters) -> Vec<String> {
    let p2plab = |r: &Option<String>| {
        r.as_deref()
            .and_then(|n| topo.device(n))
            .is_none_or(|d| d.kind.is_p2plab())
    };
    if !(p2plab(&topo.roles.client) && p2plab(&topo.roles.provider) && p2plab(&topo.roles.peer)) {
        return vec![];
    }
    let mut fails = vec![];
    for r in rules.iter().filter(|r| r.case.name() == case) {
        let (a, b) = (subst_roles(topo, r.a), subst_roles(topo, r.b));
        match (counter(delta, &a), counter(delta, &b)) {
            (Ok(Some(x)), Ok(Some(y))) if x == y => {}
            (Err(e), _) | (_, Err(e)) => fails.push(e),
            (Ok(x), Ok(y)) => fails.push(format!(
                "counter {a}: expected == {b} ({}), seen {}",
                fmt_opt(y),
                fmt_opt(x)
            )),
        }
    }
    fails
}

/// Counter snapshots the guest reported during a case (JSON lines, e.g. the NVMe vendor
/// log page 0xC0 it read with `nvme get-log`) must lie between the host's snapshots at
/// the case's begin and end: every numeric leaf of every device, counters only grow.
/// A report that is not JSON, or names a device the host does not have, fails.
pub fn check_reported(begin: &Counters, end: &Counters, reports: &[String]) -> Vec<String> {
    let mut fails = vec![];
    for (k, text) in reports.iter().enumerate() {
        let v: Counters = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                fails.push(format!(
                    "reported counters #{k}: not the counter contract ({e})"
                ));
                continue;
            }
        };
        if v.devices.is_empty() {
            fails.push(format!("reported counters #{k}: no devices"));
        }
        for d in &v.devices {
            if begin.device(&d.name).is_none() {
                fails.push(format!(
                    "reported counters #{k}: device {} is not one of the host's",
                    d.name
                ));
            }
        }
        let known = v.devices.iter().filter(|d| begin.device(&d.name).is_some());
        for (path, seen) in known.flat_map(DeviceSnapshot::leaves) {
            match (begin.get(&path), end.get(&path)) {
                (Some(lo), Some(hi)) if lo <= seen && seen <= hi => {}
                (Some(lo), Some(hi)) => fails.push(format!("reported counter {path}: expected {lo}..={hi} (host at case begin..end), seen {seen}")),
                _ => fails.push(format!("reported counter {path}: the host has no such counter")),
            }
        }
    }
    fails
}

fn fmt_opt(v: Option<i64>) -> String {
    v.map_or_else(|| "nothing (no such counter)".into(), |v| v.to_string())
}

/// The role placeholders a path names (`{client}` …).
const ROLES: &[&str] = &[
    "{client}",
    "{provider}",
    "{peer}",
    "{importer}",
    "{exporter}",
];

/// Every role device `paths` name is a p2plab device (which counts).
fn roles_are_p2plab<'a>(topo: &Topology, paths: impl IntoIterator<Item = &'a str>) -> bool {
    paths.into_iter().all(|p| {
        ROLES.iter().filter(|r| p.contains(**r)).all(|r| {
            let name = subst_roles(topo, r);
            topo.device(&name).is_some_and(|d| d.kind.is_p2plab())
        })
    })
}

fn check_rules(rules: &[Rule], case: &str, topo: &Topology, delta: &Counters) -> Vec<String> {
    let mut fails = vec![];
    for r in rules.iter().filter(|r| r.case.name() == case) {
        if !roles_are_p2plab(topo, r.expect.iter().map(|e| e.path())) {
            continue;
        }
        for e in r.expect {
            let path = subst_roles(topo, e.path());
            let seen = match counter(delta, &path) {
                Ok(seen) => seen,
                Err(e) => {
                    fails.push(e);
                    continue;
                }
            };
            if let Err(why) = e.check(seen) {
                let why = why.replace("seen nothing", "seen nothing (no such counter)");
                fails.push(format!("counter {path}: {why}"));
            }
        }
    }
    fails
}

/// When a CPU witness rule applies (by the kind of the role device it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuWhen {
    /// The provider is a p2plab GPU-kind device (VRAM in BAR 2).
    ProviderIsGpu,
    /// The provider is any p2plab device (its BAR 2 memory: VRAM or an NVMe CMB).
    ProviderIsP2plab,
    /// The topology names an exporter (the page-less cases' target GPU).
    HasExporter,
}

/// What the CPU witness must show for one window of a case's `cpu.json` (runs with
/// `--cpu-witness` only). `expect` paths are the window's fields: `loads`, `stores`,
/// `load_bytes`, `store_bytes`, `io_accesses`.
pub struct CpuRule {
    pub case: CaseId,
    pub when: CpuWhen,
    /// Device name, or a role placeholder (`{provider}`, `{exporter}` …).
    pub device: &'static str,
    pub bar: u32,
    pub expect: &'static [Expect],
}

const MIB: i64 = 1 << 20;

pub const CPU_RULES: &[CpuRule] = &[
    // The NVMe→VRAM read and its data check (checksum engine) leave the CPU out of VRAM.
    CpuRule {
        case: CaseId::P2pRead,
        when: CpuWhen::ProviderIsGpu,
        device: "{provider}",
        bar: 2,
        expect: &[Expect::Eq("loads", 0), Expect::Eq("stores", 0)],
    },
    // Page-less: the copy and its check (both checksum engines) leave the CPU out of the
    // exporter's VRAM.
    CpuRule {
        case: CaseId::DmabufPeerCopy,
        when: CpuWhen::HasExporter,
        device: "{exporter}",
        bar: 2,
        expect: &[Expect::Eq("loads", 0), Expect::Eq("stores", 0)],
    },
    CpuRule {
        case: CaseId::UringDmabufRead,
        when: CpuWhen::HasExporter,
        device: "{exporter}",
        bar: 2,
        expect: &[Expect::Eq("loads", 0), Expect::Eq("stores", 0)],
    },
    // The contrast: the CPU copies a 64 MiB pattern into p2pmem and reads it back.
    CpuRule {
        case: CaseId::CpuCopy,
        when: CpuWhen::ProviderIsP2plab,
        device: "{provider}",
        bar: 2,
        expect: &[
            Expect::AtLeast("store_bytes", 64 * MIB),
            Expect::AtLeast("load_bytes", 64 * MIB),
        ],
    },
];

/// Check a case's `cpu.json` (`{"ranges": [{"device", "bar", ...}]}`) against `CPU_RULES`.
pub fn check_cpu(case: &str, topo: &Topology, cpu: &Value) -> Vec<String> {
    check_cpu_rules(CPU_RULES, case, topo, cpu)
}

fn check_cpu_rules(rules: &[CpuRule], case: &str, topo: &Topology, cpu: &Value) -> Vec<String> {
    let provider = topo.roles.provider.as_deref().and_then(|n| topo.device(n));
    let mut fails = vec![];
    for r in rules.iter().filter(|r| r.case.name() == case) {
        let applies = match r.when {
            CpuWhen::ProviderIsGpu => {
                provider.is_some_and(|d| d.kind == p2plab_lab::config::DeviceKind::Gpu)
            }
            CpuWhen::ProviderIsP2plab => provider.is_some_and(|d| d.kind.is_p2plab()),
            CpuWhen::HasExporter => topo.roles.exporter.is_some(),
        };
        if !applies {
            continue;
        }
        let device = subst_roles(topo, r.device);
        let window = cpu.get("ranges").and_then(Value::as_array).and_then(|rs| {
            rs.iter().find(|w| {
                w.get("device").and_then(Value::as_str) == Some(&device)
                    && w.get("bar").and_then(Value::as_u64) == Some(u64::from(r.bar))
            })
        });
        for e in r.expect {
            let seen = window.and_then(|w| w.get(e.path())).and_then(Value::as_i64);
            if let Err(why) = e.check(seen) {
                let why = why.replace("seen nothing", "seen nothing (window not witnessed)");
                fails.push(format!("cpu {device} bar {} {}: {why}", r.bar, e.path()));
            }
        }
    }
    fails
}

#[cfg(test)]
mod cpu_tests {
    use super::*;
    use serde_json::json;

    fn topo(provider_kind: &str) -> Topology {
        toml::from_str(&format!(
            "[roles]\nclient='nvme0'\nprovider='p0'\n[[device]]\nname='nvme0'\nkind='nvme'\n[[device]]\nname='p0'\nkind='{provider_kind}'\n"
        ))
        .unwrap()
    }

    fn cpu(loads: i64, stores: i64, load_bytes: i64, store_bytes: i64) -> Value {
        json!({"ranges": [
            {"device": "nvme0", "bar": 2, "start": 1, "len": 1, "loads": 7, "stores": 7, "load_bytes": 56, "store_bytes": 56},
            {"device": "p0", "bar": 2, "start": 4096, "len": 4096, "loads": loads, "stores": stores,
             "load_bytes": load_bytes, "store_bytes": store_bytes}]})
    }

    #[test]
    fn p2p_read_wants_no_cpu_access_to_gpu_vram() {
        assert!(check_cpu("p2p-read", &topo("gpu"), &cpu(0, 0, 0, 0)).is_empty());
        assert_eq!(
            check_cpu("p2p-read", &topo("gpu"), &cpu(3, 0, 24, 0)),
            vec!["cpu p0 bar 2 loads: expected == 0, seen 3".to_string()]
        );
        // Only when the provider is a GPU (an NVMe CMB provider may be read by the CPU).
        assert!(check_cpu("p2p-read", &topo("nvme"), &cpu(3, 3, 24, 24)).is_empty());
        // A window the witness did not record fails, naming it.
        assert_eq!(
            check_cpu("p2p-read", &topo("gpu"), &Value::Null),
            vec![
                "cpu p0 bar 2 loads: expected == 0, seen nothing (window not witnessed)"
                    .to_string(),
                "cpu p0 bar 2 stores: expected == 0, seen nothing (window not witnessed)"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn cpu_copy_wants_the_bytes_both_ways() {
        let m = 64 * MIB;
        assert!(check_cpu("cpu-copy", &topo("gpu"), &cpu(m / 8, m / 8, m, m)).is_empty());
        assert!(check_cpu("cpu-copy", &topo("nvme"), &cpu(m / 8, m / 8, m, m)).is_empty());
        assert_eq!(
            check_cpu("cpu-copy", &topo("gpu"), &cpu(1, 1, 8, m)),
            vec![format!("cpu p0 bar 2 load_bytes: expected >= {m}, seen 8")]
        );
        // Not on a provider p2plab does not serve (no window to witness).
        assert!(check_cpu("cpu-copy", &topo("qemu-nvme"), &Value::Null).is_empty());
        assert!(check_cpu("other", &topo("gpu"), &Value::Null).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A counters document from (partial) JSON: missing counters read as 0.
    fn c(v: Value) -> Counters {
        serde_json::from_value(v).expect("counter contract")
    }

    fn topo() -> Topology {
        let mut t: Topology = toml::from_str(
            "[roles]\nclient='nvme0'\nprovider='gpu0'\n[[device]]\nname='nvme0'\nkind='nvme'\n[[device]]\nname='gpu0'\nkind='gpu'\n",
        )
        .unwrap();
        t.name = "t".into();
        t
    }

    #[test]
    fn every_rule_names_a_real_counter() {
        let t: Topology = toml::from_str(
            "[roles]\nclient='a'\nprovider='b'\npeer='c'\nimporter='d'\nexporter='e'\n",
        )
        .unwrap();
        let paths = RULES
            .iter()
            .flat_map(|r| r.expect.iter().map(|e| e.path()))
            .chain(SAME_RULES.iter().flat_map(|r| [r.a, r.b]));
        for p in paths {
            let p = subst_roles(&t, p);
            assert!(p.parse::<CounterPath>().is_ok(), "{p}");
        }
        // A misspelt rule fails its case, naming the path, instead of never matching.
        const BAD: &[Rule] = &[Rule {
            case: CaseId::P2pRead,
            expect: &[Expect::AtLeast(
                "devices[{client}].dma.peer.{provider}.write_bytes",
                1,
            )],
        }];
        let f = check_rules(BAD, "p2p-read", &topo(), &Counters::default());
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("not a counter path"), "{f:?}");
    }

    #[test]
    fn rules_apply_only_where_the_named_roles_count() {
        let mut q: Topology = toml::from_str(
            "[roles]\nclient='q0'\nprovider='q1'\n[[device]]\nname='q0'\nkind='qemu-nvme'\n[[device]]\nname='q1'\nkind='qemu-nvme'\n",
        )
        .unwrap();
        q.name = "q".into();
        let none = Counters::default();
        assert!(check("p2p-read", &q, &none).is_empty());
        assert!(!check("p2p-read", &topo(), &none).is_empty());
    }

    #[test]
    fn failure_names_counter_expected_and_seen() {
        const R: &[Rule] = &[Rule {
            case: CaseId::P2pRead,
            expect: &[Expect::AtLeast(
                "devices[{client}].dma.peers.{provider}.write_bytes",
                64,
            )],
        }];
        let d = c(
            json!({"devices": [{"name": "nvme0", "kind": "nvme", "dma": {"peers": {"gpu0": {"write_bytes": 3}}}}]}),
        );
        let f = check_rules(R, "p2p-read", &topo(), &d);
        assert_eq!(
            f,
            vec![
                "counter devices[nvme0].dma.peers.gpu0.write_bytes: expected >= 64, seen 3"
                    .to_string()
            ]
        );
        assert!(check_rules(R, "other", &topo(), &d).is_empty());
    }

    /// The GPU's delta over hostile-gpu-ce as a switch run measured it.
    fn hostile_gpu_delta() -> Value {
        json!({"devices": [{"name": "gpu0", "kind": "gpu",
            "dma": {"client_relay": {"ops": 0, "read_bytes": 0, "write_bytes": 0},
                    "faults": {"ops": 6, "read_bytes": 16416, "write_bytes": 4096},
                    "host_memory": {"ops": 0, "read_bytes": 0, "write_bytes": 0},
                    "peers": {"nvme0": {"ops": 0, "read_bytes": 0, "write_bytes": 0}},
                    "self": {"ops": 37, "read_bytes": 1122848, "write_bytes": 1118360}},
            "errors": {"ce_descriptor_errors": 10, "ce_error_dst_fault": 1, "ce_error_flags": 1,
                       "ce_error_length": 1, "ce_error_overflow": 1, "ce_error_src_fault": 4,
                       "ce_error_vram_range": 2, "ce_halt_bad_ring": 1, "ce_halt_bad_tail": 1,
                       "ce_halt_fetch_fault": 1, "ce_halt_writeback_fault": 0, "ce_halts": 3,
                       "ck_error_range": 1, "ck_error_read": 0, "ck_errors": 1}},
            {"name": "nvme0", "kind": "nvme"}]})
    }

    #[test]
    fn hostile_rules_pass_a_caught_attack_and_fail_a_leak_or_a_silent_device() {
        let ok = hostile_gpu_delta();
        assert_eq!(
            check("hostile-gpu-ce", &topo(), &c(ok.clone())),
            Vec::<String>::new()
        );
        // The copy past the VRAM end carried into the next BAR (nvme0's CMB).
        let mut leak = ok.clone();
        leak["devices"][0]["dma"]["peers"]["nvme0"]["write_bytes"] = json!(983040);
        assert_eq!(
            check("hostile-gpu-ce", &topo(), &c(leak)),
            vec![
                "counter devices[gpu0].dma.peers.nvme0.write_bytes: expected == 0, seen 983040"
                    .to_string()
            ]
        );
        // A device without error counters (or one that never noticed) fails every one.
        let mut silent = ok;
        silent["devices"][0]["errors"] = json!({});
        let f = check("hostile-gpu-ce", &topo(), &c(silent));
        assert_eq!(f.len(), 10, "{f:?}");
        assert!(f[0].contains("errors.ce_error_src_fault: expected >= 4, seen nothing"));
    }

    #[test]
    fn reported_counters_must_lie_between_the_host_snapshots() {
        let json = |w: i64| json!({"devices": [{"name": "nvme0", "kind": "nvme", "dma": {"host_memory": {"write_bytes": w}}}]});
        let snap = |w: i64| c(json(w));
        let rep = |w: i64| json(w).to_string();
        assert!(check_reported(&snap(10), &snap(20), &[rep(15)]).is_empty());
        assert_eq!(
            check_reported(&snap(10), &snap(20), &[rep(25)]),
            vec!["reported counter devices[nvme0].dma.host_memory.write_bytes: expected 10..=20 (host at case begin..end), seen 25".to_string()]
        );
        assert_eq!(check_reported(&snap(10), &snap(20), &["{".into()]).len(), 1);
        let other =
            json!({"devices": [{"name": "nvme9", "kind": "nvme", "dma": {"self": {"read_bytes": 1}}}]}).to_string();
        assert_eq!(check_reported(&snap(10), &snap(20), &[other]).len(), 1);
    }

    #[test]
    fn same_rules_compare_two_counters_with_the_peer_role() {
        let mut t: Topology = toml::from_str(
            "[roles]\nclient='nvme0'\nprovider='gpu0'\npeer='nvme1'\n[[device]]\nname='nvme0'\nkind='nvme'\n[[device]]\nname='nvme1'\nkind='nvme'\n[[device]]\nname='gpu0'\nkind='gpu'\n",
        )
        .unwrap();
        t.name = "t".into();
        let d = |sent: i64, seen: i64| {
            c(json!({"devices": [
                {"name": "nvme0", "kind": "nvme", "dma": {"peers": {"nvme1": {"write_bytes": sent}}}},
                {"name": "nvme1", "kind": "nvme", "inbound": {"peers": {"nvme0": {"write_bytes": seen}}}}]}))
        };
        assert!(check_same(SAME_RULES, "nvme-nvme-copy", &t, &d(64, 64)).is_empty());
        assert_eq!(
            check_same(SAME_RULES, "nvme-nvme-copy", &t, &d(64, 60)),
            vec!["counter devices[nvme1].inbound.peers.nvme0.write_bytes: expected == devices[nvme0].dma.peers.nvme1.write_bytes (64), seen 60".to_string()]
        );
        assert!(check_same(SAME_RULES, "cmb-read", &t, &d(64, 60)).is_empty());
    }

    #[test]
    fn p2p_read_rules_pass_the_bypass_and_fail_a_ram_detour() {
        let m = 64 * NV_MIB;
        let dir = |r: i64, w: i64| json!({"read_bytes": r, "write_bytes": w, "ops": 1});
        let delta = |peer: i64, ram: i64, seen: i64| {
            c(json!({"devices": [
                {"name": "nvme0", "kind": "nvme", "dma": {"host_memory": dir(m, ram), "self": dir(0, 0), "client_relay": dir(0, 0), "peers": {"gpu0": dir(0, peer)}},
                 "inbound": {"peers": {"gpu0": dir(0, 0)}}},
                {"name": "gpu0", "kind": "gpu", "dma": {"host_memory": dir(0, 0), "self": dir(0, 0), "client_relay": dir(0, 0), "peers": {"nvme0": dir(0, 0)}},
                 "inbound": {"peers": {"nvme0": dir(0, seen)}}}]}))
        };
        assert!(check("p2p-read", &topo(), &delta(m, 1024, m)).is_empty());
        assert_eq!(
            check("p2p-read", &topo(), &delta(0, m, 0)),
            vec![
                format!(
                    "counter devices[nvme0].dma.peers.gpu0.write_bytes: expected >= {m}, seen 0"
                ),
                format!(
                    "counter devices[nvme0].dma.host_memory.write_bytes: expected <= {}, seen {m}",
                    NV_MIB - 1
                ),
            ]
        );
        assert_eq!(
            check("p2p-read", &topo(), &delta(m, 0, m - 4096)),
            vec![format!("counter devices[gpu0].inbound.peers.nvme0.write_bytes: expected == devices[nvme0].dma.peers.gpu0.write_bytes ({m}), seen {}", m - 4096)]
        );
    }
}
