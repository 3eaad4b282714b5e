//! p2plab-counters: the counter contract of DESIGN.md §2, as types.
//!
//! # What it is
//! [`Counters`] is what a lab reports: one [`DeviceSnapshot`] per device (what it moved
//! by DMA, per route and direction; what arrived at it from peers and from CPU MMIO; its
//! decoded BAR windows; host memory behind its memory BARs) and the lab process's
//! resident set. The same type is written by the fabric and the lab (`counters.json`,
//! the control socket's `stats`, the NVMe vendor log page 0xC0), read back by the harness
//! (per-case deltas, assertions, summary, proof, bench), so the JSON shape is defined in
//! exactly one place.
//!
//! A [`CounterPath`] names one numeric counter (`devices[nvme0].dma.peers.gpu0.write_bytes`):
//! parsed, not matched as a string, so a misspelt path in an assertion is an error
//! ([`PathError`]) instead of a counter that silently never moves.
//!
//! Reading is lenient where it cannot mislead: a counter missing from a document reads
//! as 0 (a device that never used a route), so older or partial documents parse.
//!
//! # What it does not implement
//! Counting itself (the fabric's atomics) and the rules over counters (the harness).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bytes and operations in both directions (one DMA route of one initiator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirSnapshot {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub ops: u64,
}

/// Bytes in both directions (inbound counters have no op count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BytesSnapshot {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// What a device moved as bus master, per route (DESIGN.md §2 routing order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DmaSnapshot {
    /// Guest RAM the client mapped with an fd.
    pub host_memory: DirSnapshot,
    /// The device's own memory BARs (CMB, VRAM).
    #[serde(rename = "self")]
    pub self_: DirSnapshot,
    /// Peer devices' memory BARs, by peer name.
    pub peers: BTreeMap<String, DirSnapshot>,
    /// Guest memory reached through `VFIO_USER_DMA_READ/WRITE` messages.
    pub client_relay: DirSnapshot,
    /// Transfers that failed (no route, Bus Master off, the target failed): the bytes
    /// that were not moved, one op per failed transfer.
    pub faults: DirSnapshot,
}

/// What arrived at a device's BARs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundSnapshot {
    /// Peer DMA into this device's memory BARs, by initiator name.
    pub peers: BTreeMap<String, BytesSnapshot>,
    /// Trapped CPU accesses (register BARs, and memory BARs QEMU did not map).
    pub cpu_mmio: BytesSnapshot,
}

/// A BAR window as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    pub bar: u32,
    pub start: u64,
    pub len: u64,
    /// Memory-backed (CMB, VRAM) rather than trapped registers.
    pub memory: bool,
}

/// One device's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub name: String,
    /// `nvme` or `gpu`.
    pub kind: String,
    #[serde(default)]
    pub dma: DmaSnapshot,
    #[serde(default)]
    pub inbound: InboundSnapshot,
    #[serde(default)]
    pub bars: Vec<WindowSnapshot>,
    #[serde(default)]
    pub bus_master: bool,
    /// Host memory actually backing the memory BARs (a sparse VRAM costs only what was
    /// touched). Filled in by the lab; the fabric does not know the files.
    #[serde(default)]
    pub bar_resident_bytes: u64,
    /// The device model's own counters of guest errors it caught (failed commands by
    /// status, bad doorbells, engine faults), by name; monotonic.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
}

/// The lab process as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    pub rss_bytes: u64,
}

/// The counter contract: one object per device, and the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub devices: Vec<DeviceSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSnapshot>,
    /// Set instead of counters when the lab could not be read (a remote lab's control
    /// socket did not answer): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DirSnapshot {
    fn since(&self, b: &DirSnapshot) -> DirSnapshot {
        DirSnapshot {
            read_bytes: self.read_bytes.saturating_sub(b.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(b.write_bytes),
            ops: self.ops.saturating_sub(b.ops),
        }
    }
    fn get(&self, f: Field) -> Option<u64> {
        Some(match f {
            Field::ReadBytes => self.read_bytes,
            Field::WriteBytes => self.write_bytes,
            Field::Ops => self.ops,
        })
    }
}

impl BytesSnapshot {
    fn since(&self, b: &BytesSnapshot) -> BytesSnapshot {
        BytesSnapshot {
            read_bytes: self.read_bytes.saturating_sub(b.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(b.write_bytes),
        }
    }
    fn get(&self, f: Field) -> Option<u64> {
        match f {
            Field::ReadBytes => Some(self.read_bytes),
            Field::WriteBytes => Some(self.write_bytes),
            Field::Ops => None,
        }
    }
}

fn map_since<T: Default>(
    end: &BTreeMap<String, T>,
    begin: &BTreeMap<String, T>,
    since: impl Fn(&T, &T) -> T,
) -> BTreeMap<String, T> {
    let zero = T::default();
    end.iter()
        .map(|(k, e)| (k.clone(), since(e, begin.get(k).unwrap_or(&zero))))
        .collect()
}

impl DeviceSnapshot {
    /// `self − begin` for every counter (a counter missing from `begin` counts from 0;
    /// one that went backwards, which only a restarted lab can do, reads 0). Names,
    /// kinds, windows and the bus-master bit are `self`'s; `bar_resident_bytes` is a
    /// level, not a count, and is kept as it is at the end.
    pub fn since(&self, begin: &DeviceSnapshot) -> DeviceSnapshot {
        let (d, b) = (&self.dma, &begin.dma);
        DeviceSnapshot {
            name: self.name.clone(),
            kind: self.kind.clone(),
            dma: DmaSnapshot {
                host_memory: d.host_memory.since(&b.host_memory),
                self_: d.self_.since(&b.self_),
                peers: map_since(&d.peers, &b.peers, DirSnapshot::since),
                client_relay: d.client_relay.since(&b.client_relay),
                faults: d.faults.since(&b.faults),
            },
            inbound: InboundSnapshot {
                peers: map_since(
                    &self.inbound.peers,
                    &begin.inbound.peers,
                    BytesSnapshot::since,
                ),
                cpu_mmio: self.inbound.cpu_mmio.since(&begin.inbound.cpu_mmio),
            },
            bars: self.bars.clone(),
            bus_master: self.bus_master,
            bar_resident_bytes: self.bar_resident_bytes,
            errors: map_since(&self.errors, &begin.errors, |e, b| e.saturating_sub(*b)),
        }
    }

    /// Every counter of this device (the numbers that only grow) with its path; levels
    /// such as `bar_resident_bytes` are not among them.
    pub fn leaves(&self) -> Vec<(CounterPath, u64)> {
        let dev = |counter| CounterPath::Device {
            device: self.name.clone(),
            counter,
        };
        let mut out = vec![];
        let dirs = [Field::ReadBytes, Field::WriteBytes, Field::Ops];
        let routes = [
            (DmaRoute::HostMemory, &self.dma.host_memory),
            (DmaRoute::SelfBars, &self.dma.self_),
            (DmaRoute::ClientRelay, &self.dma.client_relay),
            (DmaRoute::Faults, &self.dma.faults),
        ];
        let peers = self
            .dma
            .peers
            .iter()
            .map(|(p, s)| (DmaRoute::Peer(p.clone()), s));
        for (route, s) in routes.into_iter().chain(peers) {
            for f in dirs {
                out.push((dev(Counter::Dma(route.clone(), f)), s.get(f).unwrap_or(0)));
            }
        }
        let inbound = std::iter::once((Inbound::CpuMmio, &self.inbound.cpu_mmio)).chain(
            self.inbound
                .peers
                .iter()
                .map(|(p, s)| (Inbound::Peer(p.clone()), s)),
        );
        for (from, s) in inbound {
            for f in [Field::ReadBytes, Field::WriteBytes] {
                out.push((
                    dev(Counter::Inbound(from.clone(), f)),
                    s.get(f).unwrap_or(0),
                ));
            }
        }
        for (name, v) in &self.errors {
            out.push((dev(Counter::Error(name.clone())), *v));
        }
        out
    }

    fn get(&self, c: &Counter) -> Option<u64> {
        match c {
            Counter::Dma(route, f) => match route {
                DmaRoute::HostMemory => self.dma.host_memory.get(*f),
                DmaRoute::SelfBars => self.dma.self_.get(*f),
                DmaRoute::ClientRelay => self.dma.client_relay.get(*f),
                DmaRoute::Faults => self.dma.faults.get(*f),
                DmaRoute::Peer(p) => self.dma.peers.get(p)?.get(*f),
            },
            Counter::Inbound(from, f) => match from {
                Inbound::CpuMmio => self.inbound.cpu_mmio.get(*f),
                Inbound::Peer(p) => self.inbound.peers.get(p)?.get(*f),
            },
            Counter::BarResidentBytes => Some(self.bar_resident_bytes),
            Counter::Error(name) => self.errors.get(name).copied(),
        }
    }
}

impl Counters {
    /// The device named `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceSnapshot> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// `self − begin`, devices matched by name ([`DeviceSnapshot::since`]); the process
    /// section is `self`'s (a level).
    pub fn since(&self, begin: &Counters) -> Counters {
        let zero = DeviceSnapshot::default();
        Counters {
            devices: self
                .devices
                .iter()
                .map(|d| d.since(begin.device(&d.name).unwrap_or(&zero)))
                .collect(),
            process: self.process,
            error: self.error.clone().or_else(|| begin.error.clone()),
        }
    }

    /// The value of one counter; `None` when the device, peer or field does not exist.
    pub fn get(&self, path: &CounterPath) -> Option<u64> {
        match path {
            CounterPath::Device { device, counter } => self.device(device)?.get(counter),
            CounterPath::ProcessRss => self.process.map(|p| p.rss_bytes),
        }
    }

    /// Every counter (the numbers that only grow) of every device, with its path.
    pub fn leaves(&self) -> Vec<(CounterPath, u64)> {
        self.devices
            .iter()
            .flat_map(DeviceSnapshot::leaves)
            .collect()
    }
}

/// One direction field of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    ReadBytes,
    WriteBytes,
    Ops,
}

/// A DMA route of an initiator (`dma.<route>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DmaRoute {
    HostMemory,
    /// `dma.self`
    SelfBars,
    Peer(String),
    ClientRelay,
    /// `dma.faults`: what failed transfers did not move (not a route, but counted alike).
    Faults,
}

/// Where inbound traffic came from (`inbound.<from>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Inbound {
    CpuMmio,
    Peer(String),
}

/// One counter of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Counter {
    Dma(DmaRoute, Field),
    Inbound(Inbound, Field),
    BarResidentBytes,
    /// `errors.<name>`: one of the device model's error counters.
    Error(String),
}

/// A numeric counter of a snapshot, written like
/// `devices[nvme0].dma.peers.gpu0.write_bytes` or `process.rss_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CounterPath {
    Device { device: String, counter: Counter },
    ProcessRss,
}

/// Why a counter path does not parse.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("not a counter path: {path:?} ({why})")]
pub struct PathError {
    pub path: String,
    pub why: &'static str,
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "read_bytes" => Field::ReadBytes,
            "write_bytes" => Field::WriteBytes,
            "ops" => Field::Ops,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Field::ReadBytes => "read_bytes",
            Field::WriteBytes => "write_bytes",
            Field::Ops => "ops",
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl std::str::FromStr for CounterPath {
    type Err = PathError;
    fn from_str(path: &str) -> Result<CounterPath, PathError> {
        let err = |why| PathError {
            path: path.to_string(),
            why,
        };
        if path == "process.rss_bytes" {
            return Ok(CounterPath::ProcessRss);
        }
        let rest = path
            .strip_prefix("devices[")
            .ok_or_else(|| err("starts with neither devices[NAME] nor process"))?;
        let (device, rest) = rest
            .split_once("].")
            .ok_or_else(|| err("devices[NAME] is not followed by a counter"))?;
        if !is_name(device) {
            return Err(err("device name"));
        }
        let segs: Vec<&str> = rest.split('.').collect();
        let field = |s: &str| {
            Field::parse(s).ok_or_else(|| err("field is not read_bytes, write_bytes or ops"))
        };
        let counter = match segs.as_slice() {
            ["bar_resident_bytes"] => Counter::BarResidentBytes,
            ["errors", name] if is_name(name) => Counter::Error(name.to_string()),
            ["dma", "peers", peer, f] if is_name(peer) => {
                Counter::Dma(DmaRoute::Peer(peer.to_string()), field(f)?)
            }
            ["dma", route, f] => {
                let route = match *route {
                    "host_memory" => DmaRoute::HostMemory,
                    "self" => DmaRoute::SelfBars,
                    "client_relay" => DmaRoute::ClientRelay,
                    "faults" => DmaRoute::Faults,
                    _ => return Err(err(
                        "dma route is not host_memory, self, peers.NAME, client_relay or faults",
                    )),
                };
                Counter::Dma(route, field(f)?)
            }
            ["inbound", "peers", peer, f] if is_name(peer) => {
                let f = field(f)?;
                if f == Field::Ops {
                    return Err(err("inbound counters have no ops"));
                }
                Counter::Inbound(Inbound::Peer(peer.to_string()), f)
            }
            ["inbound", "cpu_mmio", f] => {
                let f = field(f)?;
                if f == Field::Ops {
                    return Err(err("inbound counters have no ops"));
                }
                Counter::Inbound(Inbound::CpuMmio, f)
            }
            _ => return Err(err("no such counter")),
        };
        Ok(CounterPath::Device {
            device: device.to_string(),
            counter,
        })
    }
}

impl fmt::Display for CounterPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (device, counter) = match self {
            CounterPath::ProcessRss => return f.write_str("process.rss_bytes"),
            CounterPath::Device { device, counter } => (device, counter),
        };
        write!(f, "devices[{device}].")?;
        match counter {
            Counter::BarResidentBytes => f.write_str("bar_resident_bytes"),
            Counter::Error(name) => write!(f, "errors.{name}"),
            Counter::Dma(route, field) => {
                let route = match route {
                    DmaRoute::HostMemory => "host_memory".to_string(),
                    DmaRoute::SelfBars => "self".to_string(),
                    DmaRoute::ClientRelay => "client_relay".to_string(),
                    DmaRoute::Faults => "faults".to_string(),
                    DmaRoute::Peer(p) => format!("peers.{p}"),
                };
                write!(f, "dma.{route}.{}", field.as_str())
            }
            Counter::Inbound(from, field) => {
                let from = match from {
                    Inbound::CpuMmio => "cpu_mmio".to_string(),
                    Inbound::Peer(p) => format!("peers.{p}"),
                };
                write!(f, "inbound.{from}.{}", field.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests;
