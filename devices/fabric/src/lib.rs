//! p2plab-fabric: the in-process PCIe switch every device of a lab sits behind.
//!
//! # What it is
//! A [`DmaSpace`] decorator per device ([`Fabric::port`]) that routes each bus address
//! the device issues and counts the bytes per initiator, per target, per direction — the
//! counter contract of DESIGN.md §2, read through one [`Fabric::snapshot`].
//!
//! # Architecture
//! Routing order for a DMA by device D at bus address A (DESIGN.md §2):
//! 1. D's own memory-backed BAR windows (CMB, VRAM) → local copy / `pread` into the
//!    memfd mapping; counted as `dma.self`. Never a message to QEMU (it would loop back
//!    into this very process).
//! 2. A peer's memory-backed BAR window (programmed address, Memory Space Enable set) →
//!    the peer's memfd mapping; counted as `dma.peers.<peer>` on D and
//!    `inbound.peers.<D>` on the peer.
//! 3. Guest RAM the client mapped with an fd → the mapping (`dma.host_memory`).
//! 4. Client maps without fd → `VFIO_USER_DMA_READ/WRITE` relay (`dma.client_relay`).
//! 5. Anything else, including a trapped (register) BAR of any lab device →
//!    [`DmaError::Unmapped`]: the device turns it into a clean error status.
//!
//! A transfer that crosses window boundaries is split; each piece is routed on its own.
//! Bus Master Enable is checked for every route but the device's own memory. What a
//! transfer could not move — no route, Bus Master off, a target that failed — is counted
//! as `dma.faults` (the bytes not moved), so a test can see a device was stopped.
//!
//! Besides the fabric's own counters, each device's snapshot carries `errors`: the
//! device model's counters of guest errors it caught (failed commands by status, bad
//! doorbells, engine faults), read through the source given to
//! [`Fabric::set_error_source`].
//!
//! # What it does not implement
//! An IOMMU, ACS, or ordering between initiators: the lab's topologies have none, and a
//! byte copy into shared memory is the whole "transaction".
//!
//! Fault injection for tests of the suite itself: `P2PLAB_FAULT=peer-via-relay` skips
//! route 2, so peer traffic falls through to the client relay (QEMU forwards it to the
//! peer's BAR mapping). The p2p cases' counter assertions must then fail.

pub use p2plab_counters::{
    BytesSnapshot, Counters, DeviceSnapshot, DirSnapshot, DmaSnapshot, InboundSnapshot,
    WindowSnapshot,
};
use p2plab_memory::{route, BusAddr, DmaError, DmaSpace, MmapRegion, Piece, Pieces};
pub use p2plab_memory::{HostMemory, HostRoute};
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// Index of a device in its fabric.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceId(usize);

pub const MAX_BARS: usize = 6;

#[derive(Default)]
struct Dir {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    ops: AtomicU64,
}

impl Dir {
    fn add(&self, write: bool, n: u64) {
        if write {
            self.write_bytes.fetch_add(n, Relaxed);
        } else {
            self.read_bytes.fetch_add(n, Relaxed);
        }
        self.ops.fetch_add(1, Relaxed);
    }
    fn snap(&self) -> DirSnapshot {
        DirSnapshot {
            read_bytes: self.read_bytes.load(Relaxed),
            write_bytes: self.write_bytes.load(Relaxed),
            ops: self.ops.load(Relaxed),
        }
    }
}

/// Where a device's `errors` counters come from: the device model's counters of guest
/// errors it caught, as `(name, count)` pairs; monotonic over the lab's life.
pub type ErrorSource = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

#[derive(Clone)]
struct Window {
    start: u64,
    len: u64,
    memory: Option<Arc<MmapRegion>>,
}

struct Device {
    name: String,
    kind: String,
    bus_master: AtomicBool,
    /// Memory backing per BAR (set once at setup).
    memory: RwLock<[Option<Arc<MmapRegion>>; MAX_BARS]>,
    /// Programmed window per BAR (None: unprogrammed or Memory Space disabled).
    windows: RwLock<[Option<(u64, u64)>; MAX_BARS]>,
    client: RwLock<Option<Arc<dyn HostMemory>>>,
    host_memory: Dir,
    self_: Dir,
    client_relay: Dir,
    faults: Dir,
    errors: RwLock<Option<ErrorSource>>,
    /// Indexed by the peer's DeviceId (grown on add_device).
    peers: RwLock<Vec<Arc<Dir>>>,
    inbound: RwLock<Vec<Arc<Dir>>>,
    cpu_mmio: Dir,
}

struct Inner {
    devices: RwLock<Vec<Arc<Device>>>,
    /// Every programmed window of every device, for routing (rebuilt on change).
    routes: RwLock<Vec<(DeviceId, u32, Window)>>,
    fault_peer_via_relay: bool,
}

/// The fabric of one lab. Cheap to clone.
#[derive(Clone)]
pub struct Fabric {
    inner: Arc<Inner>,
}

impl Default for Fabric {
    fn default() -> Self {
        Self::new()
    }
}

impl Fabric {
    pub fn new() -> Self {
        let fault = std::env::var("P2PLAB_FAULT")
            .is_ok_and(|v| v.split(',').any(|f| f == "peer-via-relay"));
        if fault {
            log::warn!("fault injection: peer BAR routing disabled (P2PLAB_FAULT=peer-via-relay)");
        }
        Self {
            inner: Arc::new(Inner {
                devices: RwLock::new(Vec::new()),
                routes: RwLock::new(Vec::new()),
                fault_peer_via_relay: fault,
            }),
        }
    }

    /// Add a device; all devices should be added before traffic starts.
    pub fn add_device(&self, name: &str, kind: &str) -> DeviceId {
        let mut devs = write(&self.inner.devices);
        let id = DeviceId(devs.len());
        let dev = Arc::new(Device {
            name: name.to_string(),
            kind: kind.to_string(),
            bus_master: AtomicBool::new(false),
            memory: RwLock::new(Default::default()),
            windows: RwLock::new(Default::default()),
            client: RwLock::new(None),
            host_memory: Dir::default(),
            self_: Dir::default(),
            client_relay: Dir::default(),
            faults: Dir::default(),
            errors: RwLock::new(None),
            peers: RwLock::new(Vec::new()),
            inbound: RwLock::new(Vec::new()),
            cpu_mmio: Dir::default(),
        });
        devs.push(dev);
        for d in devs.iter() {
            let n = devs.len();
            write(&d.peers).resize_with(n, Default::default);
            write(&d.inbound).resize_with(n, Default::default);
        }
        id
    }

    fn dev(&self, id: DeviceId) -> Arc<Device> {
        read(&self.inner.devices)[id.0].clone()
    }

    /// Give a BAR memory backing (its memfd mapping).
    pub fn set_bar_memory(&self, id: DeviceId, bar: usize, region: Arc<MmapRegion>) {
        write(&self.dev(id).memory)[bar] = Some(region);
        self.rebuild_routes();
    }

    /// The guest programmed BAR `bar` at `base` with `len` bytes and Memory Space is
    /// enabled (`Some`), or the window is gone (`None`).
    pub fn set_bar_window(&self, id: DeviceId, bar: usize, window: Option<(u64, u64)>) {
        let dev = self.dev(id);
        let changed = {
            let mut w = write(&dev.windows);
            let changed = w[bar] != window;
            w[bar] = window;
            changed
        };
        if changed {
            log::debug!("{}: BAR{bar} window {:x?}", dev.name, window);
            self.rebuild_routes();
        }
    }

    pub fn set_bus_master(&self, id: DeviceId, enabled: bool) {
        self.dev(id).bus_master.store(enabled, Relaxed);
    }

    /// The client connection of this device (guest RAM maps, relay), or None.
    pub fn set_client(&self, id: DeviceId, client: Option<Arc<dyn HostMemory>>) {
        *write(&self.dev(id).client) = client;
    }

    /// The source of device `id`'s `errors` counters (its model's own counters). It is
    /// called by every [`Fabric::snapshot`]; it must not call back into the fabric.
    pub fn set_error_source(&self, id: DeviceId, source: ErrorSource) {
        *write(&self.dev(id).errors) = Some(source);
    }

    /// Count trapped BAR accesses relayed by QEMU (CPU MMIO).
    pub fn count_cpu_mmio(&self, id: DeviceId, read_bytes: u64, write_bytes: u64) {
        let d = self.dev(id);
        d.cpu_mmio.read_bytes.fetch_add(read_bytes, Relaxed);
        d.cpu_mmio.write_bytes.fetch_add(write_bytes, Relaxed);
    }

    /// The DMA view of device `id` (hand it to the device model).
    pub fn port(&self, id: DeviceId) -> Arc<dyn DmaSpace> {
        Arc::new(Port {
            fabric: self.clone(),
            id,
        })
    }

    fn rebuild_routes(&self) {
        let devs = read(&self.inner.devices);
        let mut routes = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            let mem = read(&d.memory);
            for (bar, w) in read(&d.windows).iter().enumerate() {
                if let Some((start, len)) = *w {
                    routes.push((
                        DeviceId(i),
                        bar as u32,
                        Window {
                            start,
                            len,
                            memory: mem[bar].clone(),
                        },
                    ));
                }
            }
        }
        *write(&self.inner.routes) = routes;
    }

    pub fn snapshot(&self) -> Counters {
        let devs = read(&self.inner.devices);
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        let devices = devs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let peers = read(&d.peers);
                let inbound = read(&d.inbound);
                let mut dma = DmaSnapshot {
                    host_memory: d.host_memory.snap(),
                    self_: d.self_.snap(),
                    client_relay: d.client_relay.snap(),
                    faults: d.faults.snap(),
                    peers: BTreeMap::new(),
                };
                let mut inb = InboundSnapshot {
                    peers: BTreeMap::new(),
                    cpu_mmio: bytes(&d.cpu_mmio),
                };
                for (j, name) in names.iter().enumerate() {
                    if j != i {
                        dma.peers.insert(name.to_string(), peers[j].snap());
                        inb.peers.insert(name.to_string(), bytes(&inbound[j]));
                    }
                }
                let mem = read(&d.memory);
                let bars = read(&d.windows)
                    .iter()
                    .enumerate()
                    .filter_map(|(bar, w)| {
                        w.map(|(start, len)| WindowSnapshot {
                            bar: bar as u32,
                            start,
                            len,
                            memory: mem[bar].is_some(),
                        })
                    })
                    .collect();
                let errors = read(&d.errors)
                    .as_ref()
                    .map(|f| f().into_iter().collect())
                    .unwrap_or_default();
                DeviceSnapshot {
                    name: d.name.clone(),
                    kind: d.kind.clone(),
                    dma,
                    inbound: inb,
                    bars,
                    bus_master: d.bus_master.load(Relaxed),
                    bar_resident_bytes: 0,
                    errors,
                }
            })
            .collect();
        Counters {
            devices,
            process: None,
            error: None,
        }
    }

    /// Find the route for the start of `addr..addr+len` as seen by `id`.
    fn route(
        &self,
        id: DeviceId,
        addr: u64,
        len: u64,
        write: bool,
    ) -> Result<(Route, u64), DmaError> {
        let end = addr
            .checked_add(len)
            .ok_or(DmaError::Overflow { addr, len })?;
        let routes = read(&self.inner.routes);
        let mut next_window = u64::MAX;
        for (dev, bar, w) in routes.iter() {
            let wend = w.start.saturating_add(w.len);
            if addr >= w.start && addr < wend {
                let avail = wend.min(end) - addr;
                let off = addr - w.start;
                let Some(mem) = &w.memory else {
                    log::debug!("DMA into trapped BAR{bar} of device {} at {addr:#x}", dev.0);
                    return Err(DmaError::Unmapped { addr, len });
                };
                if *dev == id {
                    return Ok((Route::Own(mem.clone(), off), avail));
                }
                if self.inner.fault_peer_via_relay {
                    continue;
                }
                return Ok((Route::Peer(*dev, mem.clone(), off), avail));
            }
            if w.start > addr {
                next_window = next_window.min(w.start);
            }
        }
        drop(routes);
        let dev = self.dev(id);
        let client = read(&dev.client)
            .clone()
            .ok_or(DmaError::Unmapped { addr, len })?;
        // A host range never overlaps a BAR window the guest uses, but clip anyway so a
        // transfer that runs into one is routed piecewise.
        let clip = next_window.min(end) - addr;
        let (r, avail) = client.resolve(BusAddr(addr), clip, write)?;
        let avail = avail.min(clip);
        if avail == 0 {
            return Err(DmaError::Unmapped { addr, len });
        }
        Ok((
            match r {
                HostRoute::Mapped { region, offset } => Route::Host(region, offset),
                HostRoute::Relay => Route::Relay(client),
            },
            avail,
        ))
    }

    /// Route and count one transfer piecewise; `op` does the data movement per piece.
    /// A failure counts the bytes not moved as `dma.faults`.
    fn transfer(
        &self,
        id: DeviceId,
        addr: BusAddr,
        len: usize,
        write: bool,
        mut op: impl FnMut(&Route, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let dev = self.dev(id);
        let x = Transfer {
            id,
            addr,
            len,
            write,
        };
        let mut done = 0usize;
        while done < len {
            match self.piece(&dev, &x, done, &mut op) {
                Ok(n) => done += n,
                Err(e) => {
                    dev.faults.add(write, (len - done) as u64);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Routes, moves and counts the piece of transfer `x` that starts `done` bytes in;
    /// returns its length.
    fn piece(
        &self,
        dev: &Device,
        x: &Transfer,
        done: usize,
        op: &mut impl FnMut(&Route, usize, usize) -> Result<(), DmaError>,
    ) -> Result<usize, DmaError> {
        let a = x
            .addr
            .0
            .checked_add(done as u64)
            .ok_or(DmaError::Overflow {
                addr: x.addr.0,
                len: x.len as u64,
            })?;
        let (route, avail) = self.route(x.id, a, (x.len - done) as u64, x.write)?;
        if !matches!(route, Route::Own(..)) && !dev.bus_master.load(Relaxed) {
            return Err(DmaError::BusMasterDisabled);
        }
        let n = usize::try_from(avail)
            .unwrap_or(usize::MAX)
            .min(x.len - done);
        op(&route, done, n)?;
        let n64 = n as u64;
        match &route {
            Route::Own(..) => dev.self_.add(x.write, n64),
            Route::Peer(peer, ..) => {
                read(&dev.peers)[peer.0].add(x.write, n64);
                let target = self.dev(*peer);
                read(&target.inbound)[x.id.0].add(x.write, n64);
            }
            Route::Host(..) => dev.host_memory.add(x.write, n64),
            Route::Relay(..) => dev.client_relay.add(x.write, n64),
        }
        Ok(n)
    }

    /// Every memory-backed window currently decoded, for the CPU witness.
    pub fn memory_windows(&self) -> Vec<(String, u32, u64, u64)> {
        let devs = read(&self.inner.devices);
        read(&self.inner.routes)
            .iter()
            .filter(|(_, _, w)| w.memory.is_some())
            .map(|(d, bar, w)| (devs[d.0].name.clone(), *bar, w.start, w.len))
            .collect()
    }
}

fn bytes(d: &Dir) -> BytesSnapshot {
    BytesSnapshot {
        read_bytes: d.read_bytes.load(Relaxed),
        write_bytes: d.write_bytes.load(Relaxed),
    }
}

fn read<T: ?Sized>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T: ?Sized>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// One transfer a device issued: `len` bytes at `addr`, `write` = device to target.
struct Transfer {
    id: DeviceId,
    addr: BusAddr,
    len: usize,
    write: bool,
}

enum Route {
    Own(Arc<MmapRegion>, u64),
    Peer(DeviceId, Arc<MmapRegion>, u64),
    Host(Arc<MmapRegion>, u64),
    Relay(Arc<dyn HostMemory>),
}

impl Route {
    /// What the route reaches: a mapping (own BAR, peer BAR, guest RAM) or the relay.
    fn piece(&self) -> Piece<'_> {
        match self {
            Route::Own(m, o) | Route::Peer(_, m, o) | Route::Host(m, o) => Piece::Mapped(m, *o),
            Route::Relay(c) => Piece::Relay(c.as_ref()),
        }
    }
}

struct Port {
    fabric: Fabric,
    id: DeviceId,
}

impl Pieces for Port {
    /// Routed and counted piece by piece ([`Fabric::transfer`]).
    fn pieces(
        &self,
        addr: BusAddr,
        len: usize,
        write: bool,
        op: &mut dyn FnMut(Piece<'_>, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        self.fabric
            .transfer(self.id, addr, len, write, |r, at, n| op(r.piece(), at, n))
    }
}

impl DmaSpace for Port {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        route::read(self, addr, buf)
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        route::write(self, addr, data)
    }
    fn write_from_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        route::write_from_file(self, a, f, o, l)
    }
    fn read_to_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        route::read_to_file(self, a, f, o, l)
    }
}

#[cfg(test)]
mod tests;
