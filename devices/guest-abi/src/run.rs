//! `/etc/p2plab/run.json`: what one guest run is asked to do.
//!
//! The host (`p2plab run`) builds a [`RunConfig`] from the topology and the selected
//! cases and writes it into the run's initramfs layer at [`RUN_JSON_PATH`]; the runner
//! reads it there, finds each device ([`DevInfo`]) in sysfs and resolves [`Role`]s to
//! devices through [`Roles`]. The topology file's `[roles]` table is the same
//! [`Roles`], and its `kind` the same [`DeviceKind`].

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::cases::CaseId;

/// Where the host puts the run's configuration and the runner reads it.
pub const RUN_JSON_PATH: &str = "/etc/p2plab/run.json";

/// One guest run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The cases to run, in order ([`CaseId::Exec`] last when `exec` is set).
    #[serde(default)]
    pub cases: Vec<CaseId>,
    /// Every device of the topology.
    #[serde(default)]
    pub devices: Vec<DevInfo>,
    /// Which device plays which role.
    #[serde(default)]
    pub roles: Roles,
    /// `p2plab run --exec`: the command the [`CaseId::Exec`] case runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecConfig>,
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// p2plab's NVMe controller (vfio-user).
    Nvme,
    /// p2plab's GPU-like device (vfio-user).
    Gpu,
    /// QEMU's built-in NVMe controller (the baseline).
    QemuNvme,
}

impl DeviceKind {
    /// The topology's and run.json's word for it (`qemu-nvme`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Nvme => "nvme",
            DeviceKind::Gpu => "gpu",
            DeviceKind::QemuNvme => "qemu-nvme",
        }
    }
    /// Served by p2plab (vfio-user) rather than built into QEMU.
    pub fn is_p2plab(self) -> bool {
        !matches!(self, DeviceKind::QemuNvme)
    }
    /// An NVMe controller, p2plab's or QEMU's.
    pub fn is_nvme(self) -> bool {
        matches!(self, DeviceKind::Nvme | DeviceKind::QemuNvme)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// A device of the run, as the guest needs to find and check it. Fields that do not
/// apply to the device's kind stay at their defaults (and out of the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevInfo {
    /// The topology's name (`nvme0`): counters, sockets and roles use it.
    pub name: String,
    pub kind: DeviceKind,
    /// NVMe: the controller's serial (how the guest finds it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// GPU: PCI vendor id (how the guest finds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<u16>,
    /// GPU: PCI device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u16>,
    /// NVMe: CMB bytes the topology configured (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cmb_size: u64,
    /// GPU: BAR2 ("VRAM") bytes the topology configured (0 = not given).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vram_size: u64,
    /// GPU: does the module publish p2pmem (struct pages) for it?
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub p2pmem: bool,
}

impl DevInfo {
    /// An NVMe controller, p2plab's or QEMU's.
    pub fn is_nvme(&self) -> bool {
        self.kind.is_nvme()
    }
}

/// A part a device plays in the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The NVMe controller whose namespace the P2P cases read and write.
    Client,
    /// The device whose p2pmem is the buffer.
    Provider,
    /// A second NVMe controller (nvme-nvme-copy: client namespace → peer CMB → peer
    /// namespace).
    Peer,
    /// Page-less cases: the GPU that imports a dma-buf (its copy engine DMAs).
    Importer,
    /// Page-less cases: the GPU whose VRAM is exported as that dma-buf.
    Exporter,
}

impl Role {
    /// The topology's and run.json's word for it (`client`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Provider => "provider",
            Role::Peer => "peer",
            Role::Importer => "importer",
            Role::Exporter => "exporter",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which device (by name) plays each [`Role`]: the topology's `[roles]` table and
/// run.json's `roles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub client: Option<String>,
    pub provider: Option<String>,
    pub peer: Option<String>,
    pub importer: Option<String>,
    pub exporter: Option<String>,
}

impl Roles {
    /// The device playing `role`, if the topology names one.
    pub fn get(&self, role: Role) -> Option<&str> {
        match role {
            Role::Client => self.client.as_deref(),
            Role::Provider => self.provider.as_deref(),
            Role::Peer => self.peer.as_deref(),
            Role::Importer => self.importer.as_deref(),
            Role::Exporter => self.exporter.as_deref(),
        }
    }
}

/// A developer's command (`p2plab run --exec CMD [--userland]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecConfig {
    pub command: String,
    /// Run it with bash in the toolroot userland mounted at /userland.
    #[serde(default)]
    pub userland: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_json_round_trips_with_only_the_fields_of_each_kind() {
        let cfg = RunConfig {
            cases: vec![CaseId::P2pRead, CaseId::Exec],
            devices: vec![
                DevInfo {
                    name: "nvme0".into(),
                    kind: DeviceKind::Nvme,
                    serial: "P2PLAB-NVME0".into(),
                    vendor: None,
                    device: None,
                    cmb_size: 128 << 20,
                    vram_size: 0,
                    p2pmem: true,
                },
                DevInfo {
                    name: "gpu1".into(),
                    kind: DeviceKind::Gpu,
                    serial: String::new(),
                    vendor: Some(crate::ids::VENDOR_ID),
                    device: Some(crate::ids::GPU_DEVICE_ID),
                    cmb_size: 0,
                    vram_size: 1 << 30,
                    p2pmem: false,
                },
            ],
            roles: Roles {
                client: Some("nvme0".into()),
                exporter: Some("gpu1".into()),
                ..Roles::default()
            },
            exec: Some(ExecConfig {
                command: "true".into(),
                userland: false,
            }),
        };
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["cases"], serde_json::json!(["p2p-read", "exec"]));
        assert_eq!(
            v["devices"][0],
            serde_json::json!({"name": "nvme0", "kind": "nvme", "serial": "P2PLAB-NVME0", "cmb_size": 134217728})
        );
        assert_eq!(
            v["devices"][1],
            serde_json::json!({"name": "gpu1", "kind": "gpu", "vendor": 0x2b2b, "device": 1, "vram_size": 1073741824, "p2pmem": false})
        );
        assert_eq!(v["roles"]["provider"], serde_json::Value::Null);
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn roles_resolve_by_role() {
        let r = Roles {
            peer: Some("nvme1".into()),
            ..Roles::default()
        };
        assert_eq!(r.get(Role::Peer), Some("nvme1"));
        assert_eq!(r.get(Role::Client), None);
        assert_eq!(Role::Importer.to_string(), "importer");
    }
}
