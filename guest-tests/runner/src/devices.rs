//! The run configuration and device discovery by role.
//!
//! NVMe controllers (p2plab `nvme` and QEMU's `qemu-nvme`) are found by serial in
//! `/sys/class/nvme/*/serial` (controller numbering is not stable); GPU-kind devices by
//! vendor/device id in `/sys/bus/pci/devices/*/{vendor,device}`.

use std::path::Path;
use std::time::{Duration, Instant};

pub use p2plab_guest_abi::{DevInfo, Role, Roles, RunConfig};

/// Reads the run's configuration (`/etc/p2plab/run.json` by default).
pub fn load(path: &str) -> Result<RunConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

/// A device of the run as the guest sees it.
#[derive(Debug, Clone)]
pub struct Found {
    pub info: DevInfo,
    /// PCI address, e.g. `0000:03:00.0`.
    pub bdf: Option<String>,
    /// NVMe controller (`nvme2`).
    pub ctrl: Option<String>,
    /// First namespace block device (`/dev/nvme2n1`).
    pub ns: Option<String>,
}

pub struct Env {
    pub devices: Vec<Found>,
    pub roles: Roles,
    pub notes: Vec<String>,
}

impl Env {
    /// Find every device of `cfg`, waiting up to `wait` for NVMe controllers to probe.
    pub fn discover(cfg: &RunConfig, wait: Duration) -> Env {
        let deadline = Instant::now() + wait;
        loop {
            let devices: Vec<Found> = cfg.devices.iter().map(find).collect();
            let complete = devices
                .iter()
                .all(|d| d.bdf.is_some() && (!d.info.is_nvme() || d.ns.is_some()));
            if complete || Instant::now() >= deadline {
                let mut notes = vec![];
                for d in &devices {
                    notes.push(format!(
                        "device {} ({}): pci {} {}{}",
                        d.info.name,
                        d.info.kind,
                        d.bdf.as_deref().unwrap_or("NOT FOUND"),
                        d.ctrl.as_deref().unwrap_or(""),
                        d.ns.as_deref().map(|n| format!(" {n}")).unwrap_or_default()
                    ));
                }
                return Env {
                    devices,
                    roles: cfg.roles.clone(),
                    notes,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn device(&self, name: &str) -> Option<&Found> {
        self.devices.iter().find(|d| d.info.name == name)
    }

    /// The device playing `role`, or why there is none.
    pub fn role(&self, role: Role) -> Result<&Found, String> {
        let name = self
            .roles
            .get(role)
            .ok_or_else(|| format!("the topology names no {role}"))?;
        let d = self
            .device(name)
            .ok_or_else(|| format!("{role} '{name}' is not in run.json"))?;
        if d.bdf.is_none() {
            return Err(format!(
                "{role} {name} ({}) not found in the guest",
                d.info.kind
            ));
        }
        Ok(d)
    }
}

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn link_name(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
}

fn find(info: &DevInfo) -> Found {
    let mut f = Found {
        info: info.clone(),
        bdf: None,
        ctrl: None,
        ns: None,
    };
    if info.is_nvme() {
        let Ok(rd) = std::fs::read_dir("/sys/class/nvme") else {
            return f;
        };
        for e in rd.flatten() {
            let ctrl = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            if read_trim(dir.join("serial")).as_deref() != Some(info.serial.trim()) {
                continue;
            }
            f.bdf = link_name(dir.join("device"));
            f.ns = namespace_of(&dir, &ctrl);
            f.ctrl = Some(ctrl);
            break;
        }
    } else if let (Some(v), Some(d)) = (info.vendor, info.device) {
        let Ok(rd) = std::fs::read_dir("/sys/bus/pci/devices") else {
            return f;
        };
        let mut hits: Vec<String> = rd
            .flatten()
            .filter(|e| {
                let p = e.path();
                parse_hex(read_trim(p.join("vendor"))) == Some(v)
                    && parse_hex(read_trim(p.join("device"))) == Some(d)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        hits.sort();
        // Several devices of one kind: the n-th by name order ("gpu0", "gpu1").
        let idx: usize = info
            .name
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0);
        f.bdf = hits.get(idx).or(hits.first()).cloned();
    }
    f
}

fn parse_hex(s: Option<String>) -> Option<u16> {
    u16::from_str_radix(s?.trim_start_matches("0x"), 16).ok()
}

/// The lowest namespace of controller `ctrl`: `nvmeXnY` children (no multipath) or the
/// hidden path `nvmeScXnY` whose head is `/dev/nvmeSnY` (native multipath).
fn namespace_of(dir: &Path, ctrl: &str) -> Option<String> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(u32, String)> = None;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix("nvme") else {
            continue;
        };
        let (head, nsid) = match rest.split_once('n') {
            Some((h, ns)) => (h, ns),
            None => continue,
        };
        let Ok(nsid) = nsid.parse::<u32>() else {
            continue;
        };
        let dev = match head.split_once('c') {
            Some((subsys, c)) if c.parse::<u32>().is_ok() && subsys.parse::<u32>().is_ok() => {
                format!("/dev/nvme{subsys}n{nsid}")
            }
            None if format!("nvme{head}") == ctrl => format!("/dev/{n}"),
            _ => continue,
        };
        if best.as_ref().is_none_or(|(b, _)| nsid < *b) {
            best = Some((nsid, dev));
        }
    }
    best.map(|b| b.1)
}
