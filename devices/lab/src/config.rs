//! Topology files (`qemu-configs/*.toml`): which devices a lab has, where they sit in
//! the PCIe hierarchy, and the guest machine around them.
//!
//! Schema (every key except `device[].name`/`device[].kind` is optional):
//! ```toml
//! description = "nvme0 + gpu0 below one PCIe switch (the default)"
//! [machine]
//! cpu = "max"            # QEMU -cpu model ("EPYC" whitelists the host bridge for P2P);
//!                        # under TCG the harness adds ",-erms,-fsrm" unless named here
//! smp = 2                # vCPUs
//! memory = "2G"          # guest RAM (always memory-backend-memfd,share=on)
//! phys_bits = 40         # guest physical address bits (>= log2(largest BAR) + 1)
//! extra_args = []        # appended to the QEMU command line verbatim
//! cmdline = ""           # appended to the guest kernel command line
//! [roles]
//! client = "nvme0"       # the NVMe whose namespace p2p cases read/write
//! provider = "gpu0"      # the device whose p2pmem is the buffer
//! peer = "nvme1"         # optional second NVMe (nvme-nvme-copy: client ns → peer CMB → peer ns)
//! importer = "gpu0"      # page-less cases: the GPU whose copy engine DMAs into an imported dma-buf
//! exporter = "gpu1"      # page-less cases: the GPU whose VRAM is exported as that dma-buf
//! [[device]]
//! name = "nvme0"         # unique; also the counter and socket name
//! kind = "nvme"          # "nvme" | "gpu" (p2plab devices) | "qemu-nvme" (QEMU built-in)
//! port = "switch"        # "switch": below the one emulated switch; "root": own root port
//! serial = "P2PLAB0001"  # NVMe serial (default: derived from name)
//! cmb_size = "128M"      # NVMe Controller Memory Buffer (2 MiB multiple; "0" = none)
//! namespaces = [{ size = "1G", lba_size = 512, file = "nvme0n1.img" }]
//! io_queues = 4          # max I/O queue pairs the controller grants
//! vram_size = "1G"       # GPU BAR2 size (power of two)
//! p2pmem_size = "1G"     # how much of VRAM the guest module publishes as p2pmem
//! p2pmem = false         # GPU: publish no p2pmem at all (no struct pages; page-less dma-buf only)
//! qemu_options = ""      # extra properties for -device (qemu-nvme only), e.g. "x-max-bounce-buffer-size=2M"
//! ```
//! Relative `file` paths are relative to the run directory; missing files are created
//! sparse at their size.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read topology {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("topology {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("topology {path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// A byte size written as a number or a string with a K/M/G/T suffix (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parse "64M", "1G", "4096", "2MiB".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("bad size '{s}'"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' overflows"))
}

/// A device's `kind` and the `[roles]` table are the guest run's own words
/// (`p2plab-guest-abi`): the host writes them into the guest's run.json unchanged.
pub use p2plab_guest_abi::{DeviceKind, Roles};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Port {
    #[default]
    Switch,
    Root,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub size: ByteSize,
    #[serde(default = "default_lba")]
    pub lba_size: u32,
    pub file: Option<PathBuf>,
}

fn default_lba() -> u32 {
    512
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub name: String,
    pub kind: DeviceKind,
    #[serde(default)]
    pub port: Port,
    pub serial: Option<String>,
    pub cmb_size: Option<ByteSize>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    pub io_queues: Option<u16>,
    pub vram_size: Option<ByteSize>,
    pub p2pmem_size: Option<ByteSize>,
    /// GPU: whether the guest module publishes p2pmem (struct pages) at all.
    pub p2pmem: Option<bool>,
    #[serde(default)]
    pub qemu_options: String,
}

pub const DEFAULT_CMB: u64 = 128 << 20;
pub const DEFAULT_NS: u64 = 1 << 30;
pub const DEFAULT_VRAM: u64 = 1 << 30;

impl DeviceConfig {
    pub fn serial(&self) -> String {
        self.serial
            .clone()
            .unwrap_or_else(|| format!("P2PLAB-{}", self.name.to_uppercase()))
    }
    pub fn cmb_size(&self) -> u64 {
        self.cmb_size.map_or(DEFAULT_CMB, |s| s.0)
    }
    pub fn vram_size(&self) -> u64 {
        self.vram_size.map_or(DEFAULT_VRAM, |s| s.0)
    }
    /// Does the guest module publish p2pmem for this GPU (default yes)?
    pub fn publishes_p2pmem(&self) -> bool {
        self.p2pmem.unwrap_or(true)
    }
    pub fn p2pmem_size(&self) -> u64 {
        self.p2pmem_size
            .map_or(self.vram_size().min(1 << 30), |s| s.0)
    }
    /// Namespaces, with the default (one 1 GiB namespace, 512 B LBAs) when none is given.
    pub fn namespaces(&self) -> Vec<NamespaceConfig> {
        if self.namespaces.is_empty() {
            vec![NamespaceConfig {
                size: ByteSize(DEFAULT_NS),
                lba_size: 512,
                file: None,
            }]
        } else {
            self.namespaces.clone()
        }
    }
    /// Backing file of namespace `i` (1-based nsid = i + 1), resolved against `run_dir`.
    pub fn namespace_file(&self, i: usize, run_dir: &Path) -> PathBuf {
        let ns = self.namespaces();
        match ns.get(i).and_then(|n| n.file.clone()) {
            Some(f) if f.is_absolute() => f,
            Some(f) => run_dir.join(f),
            None => run_dir.join(format!("{}n{}.img", self.name, i + 1)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    #[serde(default = "default_cpu")]
    pub cpu: String,
    #[serde(default = "default_smp")]
    pub smp: u32,
    #[serde(default = "default_mem")]
    pub memory: ByteSize,
    pub phys_bits: Option<u32>,
    #[serde(default)]
    pub extra_args: Vec<String>,
    #[serde(default)]
    pub cmdline: String,
}

fn default_cpu() -> String {
    "max".into()
}
fn default_smp() -> u32 {
    2
}
fn default_mem() -> ByteSize {
    ByteSize(2 << 30)
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            cpu: default_cpu(),
            smp: default_smp(),
            memory: default_mem(),
            phys_bits: None,
            extra_args: vec![],
            cmdline: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub machine: MachineConfig,
    #[serde(default)]
    pub roles: Roles,
    #[serde(rename = "device", default)]
    pub devices: Vec<DeviceConfig>,
    /// File stem ("switch" for qemu-configs/switch.toml); set by `load`.
    #[serde(skip)]
    pub name: String,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut t: Topology = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        t.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        t.validate().map_err(|msg| ConfigError::Invalid {
            path: path.into(),
            msg,
        })?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for d in &self.devices {
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "device name '{}' must be non-empty [A-Za-z0-9_-]",
                    d.name
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("device name '{}' is used twice", d.name));
            }
            match d.kind {
                DeviceKind::Nvme | DeviceKind::QemuNvme => {
                    let cmb = d.cmb_size();
                    if cmb != 0 && (cmb % (2 << 20) != 0 || !cmb.is_power_of_two()) {
                        return Err(format!("{}: cmb_size must be a power of two and a multiple of 2 MiB (Linux skips other CMBs)", d.name));
                    }
                    for ns in d.namespaces() {
                        if ns.lba_size != 512 && ns.lba_size != 4096 {
                            return Err(format!("{}: lba_size must be 512 or 4096", d.name));
                        }
                        if ns.size.0 == 0 || ns.size.0 % u64::from(ns.lba_size) != 0 {
                            return Err(format!(
                                "{}: namespace size must be a non-zero multiple of lba_size",
                                d.name
                            ));
                        }
                    }
                }
                DeviceKind::Gpu => {
                    let v = d.vram_size();
                    if !v.is_power_of_two() || v < (1 << 20) {
                        return Err(format!(
                            "{}: vram_size must be a power of two >= 1M",
                            d.name
                        ));
                    }
                    if d.p2pmem_size() > v {
                        return Err(format!("{}: p2pmem_size exceeds vram_size", d.name));
                    }
                }
            }
        }
        for (role, name) in [
            ("client", &self.roles.client),
            ("provider", &self.roles.provider),
            ("peer", &self.roles.peer),
            ("importer", &self.roles.importer),
            ("exporter", &self.roles.exporter),
        ] {
            if let Some(n) = name {
                if !names.contains(n.as_str()) {
                    return Err(format!("roles.{role} names unknown device '{n}'"));
                }
            }
        }
        for (role, name) in [
            ("importer", &self.roles.importer),
            ("exporter", &self.roles.exporter),
        ] {
            if let Some(d) = name.as_deref().and_then(|n| self.device(n)) {
                if d.kind != DeviceKind::Gpu {
                    return Err(format!("roles.{role}: {} is not a gpu", d.name));
                }
            }
        }
        for d in &self.devices {
            if d.p2pmem.is_some() && d.kind != DeviceKind::Gpu {
                return Err(format!("{}: p2pmem is a gpu setting", d.name));
            }
        }
        Ok(())
    }

    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("128G").unwrap(), 128 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn shipped_topologies_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu-configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Topology::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no topology in {}", dir.display());
    }

    #[test]
    fn rejects_bad_cmb_and_roles() {
        let t: Topology =
            toml::from_str("[[device]]\nname='a'\nkind='nvme'\ncmb_size='3M'\n").unwrap();
        assert!(t.validate().unwrap_err().contains("cmb_size"));
        let t: Topology = toml::from_str("[roles]\nclient='x'\n").unwrap();
        assert!(t.validate().unwrap_err().contains("unknown device"));
    }

    #[test]
    fn pageless_roles_and_p2pmem_are_gpu_settings() {
        let t: Topology =
            toml::from_str("[roles]\nexporter='n'\n[[device]]\nname='n'\nkind='nvme'\n").unwrap();
        assert!(t
            .validate()
            .unwrap_err()
            .contains("roles.exporter: n is not a gpu"));
        let t: Topology =
            toml::from_str("[[device]]\nname='n'\nkind='nvme'\np2pmem=false\n").unwrap();
        assert!(t
            .validate()
            .unwrap_err()
            .contains("p2pmem is a gpu setting"));
        let t = Topology::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu-configs/two-gpu.toml"),
        )
        .unwrap();
        let gpu1 = t.device("gpu1").unwrap();
        assert!(!gpu1.publishes_p2pmem() && t.device("gpu0").unwrap().publishes_p2pmem());
    }
}
