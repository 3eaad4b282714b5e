//! Which guest cases a run has, and the guest's `run.json`.
//!
//! The case table is `p2plab_guest_abi::CASES`, shared with the runner: this judges each
//! row's [`When`], [`Role`]s and [`Need`]s against a topology, picks the default cases
//! (every case that applies) or checks the ones named with `--cases`, and builds the
//! [`RunConfig`] the runner reads.

use crate::qemu;
use anyhow::{bail, Context, Result};
use p2plab_guest_abi::CASES;
use p2plab_guest_abi::{
    ids, Case, CaseId, DevInfo, ExecConfig, Group, Need, Role, RunConfig, When,
};
use p2plab_lab::config::{DeviceConfig, DeviceKind, Port, Topology};

/// Why case `c` does not apply to topology `t` (None: it does). `named`: the case was
/// asked for by name (a [`Need::OnRequest`] case applies only then).
pub fn not_applicable(c: &Case, t: &Topology, named: bool) -> Option<String> {
    if let Some(r) = c.roles.iter().find(|r| t.roles.get(**r).is_none()) {
        return Some(format!("needs roles.{r}"));
    }
    if let Some(n) = c.needs.iter().find(|n| !need_met(**n, t, named)) {
        return Some(format!("needs {n}"));
    }
    match (c.when, qemu::p2p_allowed(t)) {
        (When::P2pAllowed, Some(false)) => Some("P2P is refused on this topology".into()),
        (When::P2pRefused, Some(true)) => Some("P2P is allowed on this topology".into()),
        _ => None,
    }
}

fn need_met(n: Need, t: &Topology, named: bool) -> bool {
    let role_dev = |r: Role| -> Option<&DeviceConfig> { t.device(t.roles.get(r)?) };
    match n {
        Need::P2plabClient => role_dev(Role::Client).is_some_and(|d| d.kind == DeviceKind::Nvme),
        Need::ClientCmb => {
            role_dev(Role::Client).is_some_and(|d| d.kind != DeviceKind::Gpu && d.cmb_size() > 0)
        }
        Need::P2plabPeer => {
            role_dev(Role::Peer).is_some_and(|d| d.kind == DeviceKind::Nvme && d.cmb_size() > 0)
        }
        Need::RootPorts => match (role_dev(Role::Client), role_dev(Role::Provider)) {
            (Some(c), Some(p)) => c.port == Port::Root || p.port == Port::Root,
            _ => false,
        },
        Need::P2plabDevice => t.devices.iter().any(|d| d.kind.is_p2plab()),
        Need::GpuProvider => role_dev(Role::Provider).is_some_and(|d| d.kind == DeviceKind::Gpu),
        // Benchmarks run only when named (`--cases bench`, `p2plab bench`).
        Need::OnRequest => named,
        // Added by `--exec CMD` alone.
        Need::ExecCommand => false,
    }
}

/// The cases `--cases` asks for on `t`, a list of words run in the order given: `all`
/// (every case that applies; also what no word means), a group (`hostile`: those of its
/// cases that apply, in table order; the others are named on stderr) or a case name; a
/// case named twice runs once, at its first place. `none` alone: no case (boot only). A
/// case named by itself that seems not to apply runs anyway, with a warning.
pub fn select_cases(want: &[String], t: &Topology) -> Result<Vec<CaseId>> {
    let want: Vec<&str> = want
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if want == ["none"] {
        return Ok(vec![]);
    }
    let defaults = || {
        CASES
            .iter()
            .filter(|c| not_applicable(c, t, false).is_none())
            .map(|c| c.id)
    };
    if want.is_empty() {
        return Ok(defaults().collect());
    }
    let mut out: Vec<CaseId> = vec![];
    for w in want {
        let ids: Vec<CaseId> = if w == "all" {
            defaults().collect()
        } else if let Some(g) = Group::from_name(w) {
            let (fit, unfit): (Vec<CaseId>, Vec<CaseId>) = g
                .cases()
                .partition(|c| not_applicable(c.case(), t, true).is_none());
            for c in unfit {
                let why = not_applicable(c.case(), t, true).unwrap_or_default();
                eprintln!(
                    "p2plab: note: group {g}: case {c} does not apply to topology {}: {why}",
                    t.name
                );
            }
            fit
        } else {
            let c = CaseId::from_name(w).map(CaseId::case).with_context(|| {
                format!(
                    "unknown case '{w}' (known: all, none, {}, {})",
                    Group::ALL
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    CASES.iter().map(Case::name).collect::<Vec<_>>().join(", ")
                )
            })?;
            if c.needs.contains(&Need::ExecCommand) {
                bail!("case '{w}' runs the --exec command: give --exec CMD instead");
            }
            vec![c.id]
        };
        for id in ids {
            if out.contains(&id) {
                continue;
            }
            if w != "all" && Group::from_name(w).is_none() {
                if let Some(why) = not_applicable(id.case(), t, true) {
                    eprintln!(
                        "p2plab: warning: case {id} may not apply to topology {}: {why}",
                        t.name
                    );
                }
            }
            out.push(id);
        }
    }
    Ok(out)
}

/// What the guest needs to know of device `d` to find and check it.
fn dev_info(d: &DeviceConfig) -> DevInfo {
    let mut info = DevInfo {
        name: d.name.clone(),
        kind: d.kind,
        serial: String::new(),
        vendor: None,
        device: None,
        cmb_size: 0,
        vram_size: 0,
        p2pmem: true,
    };
    match d.kind {
        DeviceKind::Nvme | DeviceKind::QemuNvme => {
            info.serial = d.serial();
            info.cmb_size = d.cmb_size();
        }
        DeviceKind::Gpu => {
            info.vendor = Some(ids::VENDOR_ID);
            info.device = Some(ids::GPU_DEVICE_ID);
            info.vram_size = d.vram_size();
            info.p2pmem = d.publishes_p2pmem();
        }
    }
    info
}

/// The guest's run configuration (written at
/// [`RUN_JSON_PATH`](p2plab_guest_abi::run::RUN_JSON_PATH)).
pub fn guest_run(t: &Topology, cases: &[CaseId], exec: Option<ExecConfig>) -> RunConfig {
    RunConfig {
        cases: cases.to_vec(),
        devices: t.devices.iter().map(dev_info).collect(),
        roles: t.roles.clone(),
        exec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(s: &str) -> Topology {
        let t: Topology = toml::from_str(s).unwrap();
        t.validate().unwrap();
        t
    }

    fn case(when: When) -> Case {
        Case {
            id: CaseId::P2pRead,
            description: "",
            when,
            roles: &[Role::Client, Role::Provider],
            tools: &[],
            needs: &[],
            group: None,
        }
    }

    #[test]
    fn applicability_follows_the_topology_rules() {
        let sw = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='qemu-nvme'\n[[device]]\nname='b'\nkind='qemu-nvme'\n");
        let rp = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='qemu-nvme'\nport='root'\n[[device]]\nname='b'\nkind='qemu-nvme'\nport='root'\n");
        let epyc = topo("[machine]\ncpu='EPYC'\n[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='nvme'\nport='root'\n[[device]]\nname='b'\nkind='gpu'\nport='root'\n");
        assert!(not_applicable(&case(When::P2pAllowed), &sw, false).is_none());
        assert!(not_applicable(&case(When::P2pRefused), &sw, false).is_some());
        assert!(not_applicable(&case(When::P2pRefused), &rp, false).is_none());
        assert!(not_applicable(&case(When::P2pAllowed), &epyc, false).is_none());
        let none = topo("[[device]]\nname='a'\nkind='nvme'\n");
        assert!(not_applicable(&case(When::Any), &none, false)
            .unwrap()
            .contains("roles.client"));
    }

    #[test]
    fn on_request_and_exec_cases_are_never_defaults() {
        let sw = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='nvme'\n[[device]]\nname='b'\nkind='gpu'\n");
        let all = select_cases(&[], &sw).unwrap();
        assert!(all.contains(&CaseId::P2pRead));
        assert!(!all.contains(&CaseId::Bench) && !all.contains(&CaseId::Exec));
        assert_eq!(
            not_applicable(CaseId::Bench.case(), &sw, false).as_deref(),
            Some("needs on-request")
        );
        assert!(not_applicable(CaseId::Bench.case(), &sw, true).is_none());
        assert_eq!(
            select_cases(&["bench".into()], &sw).unwrap(),
            [CaseId::Bench]
        );
        assert!(select_cases(&["exec".into()], &sw).is_err());
        assert!(select_cases(&["no-such-case".into()], &sw).is_err());
    }

    #[test]
    fn groups_and_all_combine_in_the_order_given() {
        let sw = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='nvme'\n[[device]]\nname='b'\nkind='gpu'\n");
        let all = select_cases(&[], &sw).unwrap();
        assert!(
            Group::Hostile.cases().all(|c| !all.contains(&c)),
            "not defaults"
        );
        let hostile: Vec<CaseId> = Group::Hostile.cases().collect();
        assert_eq!(select_cases(&["hostile".into()], &sw).unwrap(), hostile);
        // The suite's switch row: the group first, then every default case after it.
        let both = select_cases(&["hostile".into(), "all".into()], &sw).unwrap();
        assert_eq!(both[..hostile.len()], hostile[..]);
        assert_eq!(both[hostile.len()..], all[..]);
        // A case named twice runs once, at its first place.
        assert_eq!(
            select_cases(&["p2p-read".into(), "all".into(), "p2p-read".into()], &sw)
                .unwrap()
                .iter()
                .filter(|c| **c == CaseId::P2pRead)
                .count(),
            1
        );
        assert_eq!(
            select_cases(&["nvme-identify".into(), "hostile".into()], &sw).unwrap()[0],
            CaseId::NvmeIdentify
        );
        // A group brings only its cases that apply: QEMU's NVMe has no raw attacks.
        let qemu = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='qemu-nvme'\n[[device]]\nname='b'\nkind='gpu'\n");
        assert_eq!(
            select_cases(&["hostile".into()], &qemu).unwrap(),
            [CaseId::HostileGpuCe]
        );
    }

    #[test]
    fn the_guest_gets_each_kind_s_own_fields() {
        let t = topo("[roles]\nclient='nvme0'\nprovider='gpu0'\n[[device]]\nname='nvme0'\nkind='nvme'\n[[device]]\nname='gpu0'\nkind='gpu'\np2pmem=false\n");
        let r = guest_run(&t, &[CaseId::NvmeIdentify], None);
        assert_eq!(r.devices[0].serial, "P2PLAB-NVME0");
        assert_eq!(r.devices[0].vendor, None);
        assert_eq!(
            (
                r.devices[1].vendor,
                r.devices[1].device,
                r.devices[1].p2pmem
            ),
            (Some(0x2b2b), Some(0x0001), false)
        );
        assert_eq!(r.roles.get(Role::Provider), Some("gpu0"));
    }
}
