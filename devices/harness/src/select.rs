//! Which guest cases a run has, and the guest's `run.json`.
//!
//! The case table is `p2plab_guest_abi::CASES`, shared with the runner: this judges each
//! row's [`When`], [`Role`]s and [`Need`]s against a topology, picks the default cases
//! (every case that applies) or checks the ones named with `--cases`, and builds the
//! [`RunConfig`] the runner reads.

use crate::qemu;
use anyhow::{bail, Context, Result};
use p2plab_guest_abi::CASES;
use p2plab_guest_abi::{ids, Case, CaseId, DevInfo, ExecConfig, Need, Role, RunConfig, When};
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

/// The cases `--cases` asks for on `t`: none given or `all`: every case that applies;
/// `none`: no case (boot only); else the named cases, in order (a named case that seems
/// not to apply runs anyway, with a warning).
pub fn select_cases(want: &[String], t: &Topology) -> Result<Vec<CaseId>> {
    let want: Vec<&str> = want
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if want == ["none"] {
        return Ok(vec![]);
    }
    if want.is_empty() || want == ["all"] {
        return Ok(CASES
            .iter()
            .filter(|c| not_applicable(c, t, false).is_none())
            .map(|c| c.id)
            .collect());
    }
    let mut out = vec![];
    for w in want {
        let c = CaseId::from_name(w).map(CaseId::case).with_context(|| {
            format!(
                "unknown case '{w}' (known: {})",
                CASES.iter().map(Case::name).collect::<Vec<_>>().join(", ")
            )
        })?;
        if c.needs.contains(&Need::ExecCommand) {
            bail!("case '{w}' runs the --exec command: give --exec CMD instead");
        }
        if let Some(why) = not_applicable(c, t, true) {
            eprintln!(
                "p2plab: warning: case {w} may not apply to topology {}: {why}",
                t.name
            );
        }
        out.push(c.id);
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
