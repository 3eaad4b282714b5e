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
//! Each port caches the ranges it reached (a window, or a client map between windows)
//! while the fabric's windows and the client's maps stay unchanged (generation
//! counters), so a device polling its rings skips the routing; it counts the same bytes
//! and checks Bus Master Enable and the map's permissions on every access (a 4-byte
//! read of guest RAM: ~75 ns instead of ~310 ns on this project's 2-core machine).
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
pub use p2plab_memory::{HostMap, HostMemory, HostRoute};
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, RwLock, Weak};

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
    /// Bumped after every change to `routes` or to a device's client: a port's
    /// [`RouteCache`] is valid while it holds the current value.
    generation: AtomicU64,
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
                generation: AtomicU64::new(0),
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
        self.inner.generation.fetch_add(1, Release);
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
            dev: self.dev(id),
            cache: Mutex::default(),
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
        self.inner.generation.fetch_add(1, Release);
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
    /// A failure counts the bytes not moved as `dma.faults`. Pieces inside a range in
    /// `cache` skip the routing; the others are routed here and their ranges cached.
    fn transfer(
        &self,
        port: &Port,
        addr: BusAddr,
        len: usize,
        write: bool,
        mut op: impl FnMut(Piece<'_>, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let dev = &port.dev;
        let x = Transfer {
            id: port.id,
            addr,
            len,
            write,
        };
        let mut done = 0usize;
        while done < len {
            let moved = match port.cached(&x, done) {
                Some(hit) => hit.transfer(dev, &x, done, &mut op),
                None => {
                    let before = port.snapshot_generations(self, dev);
                    let n = self.piece(dev, &x, done, &mut |r, at, n| op(r.piece(), at, n));
                    if n.is_ok() {
                        port.fill(self, dev, &x, done, before);
                    }
                    n
                }
            };
            match moved {
                Ok(n) => done += n,
                Err(e) => {
                    dev.faults.add(write, (len - done) as u64);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The range around `a` that device `id` reaches one way (one window, or one client
    /// map between windows), or None where the fabric routes nothing (the slow path
    /// gives the error) or under fault injection.
    fn cache_entry(&self, id: DeviceId, dev: &Device, a: u64) -> Option<Cached> {
        let routes = read(&self.inner.routes);
        let (mut lo, mut hi) = (0u64, u64::MAX);
        let mut found = None;
        for (i, (_, _, w)) in routes.iter().enumerate() {
            let wend = w.start.saturating_add(w.len);
            if found.is_none() && a >= w.start && a < wend {
                found = Some(i);
                lo = lo.max(w.start);
                hi = hi.min(wend);
            } else if wend <= a {
                lo = lo.max(wend);
            } else if w.start > a {
                hi = hi.min(w.start);
            }
            // A later window that also holds `a` overlaps the first one, which routes
            // every address of it inside the range.
        }
        if let Some(i) = found {
            let (peer, _, w) = &routes[i];
            let mem = Arc::downgrade(w.memory.as_ref()?);
            let off = lo - w.start;
            let to = if *peer == id {
                CachedTo::Own(mem, off)
            } else if self.inner.fault_peer_via_relay {
                return None;
            } else {
                let ours = read(&dev.peers)[peer.0].clone();
                let theirs = read(&self.dev(*peer).inbound)[id.0].clone();
                CachedTo::Peer(mem, off, ours, theirs)
            };
            return Some(Cached {
                lo,
                hi,
                readable: true,
                writable: true,
                to,
            });
        }
        drop(routes);
        let client = read(&dev.client).clone()?;
        let m = client.map_at(BusAddr(a))?;
        let lo = lo.max(m.start);
        let hi = hi.min(m.start.saturating_add(m.len));
        let to = match m.route {
            HostRoute::Mapped { region, offset } => {
                CachedTo::Host(Arc::downgrade(&region), offset + (lo - m.start))
            }
            HostRoute::Relay => CachedTo::Relay(Arc::downgrade(&client)),
        };
        Some(Cached {
            lo,
            hi,
            readable: m.readable,
            writable: m.writable,
            to,
        })
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
    dev: Arc<Device>,
    cache: Mutex<RouteCache>,
}

/// The ranges a device reached lately, each one a window or one client map between
/// windows (every address in it is routed the same way), so a device polling its queues
/// skips the routing (locks, window scan, map lookup) on each access. Valid while the
/// fabric's and the client's generations stay as read before the entries were made.
/// Mappings are held weakly: a client removing a map waits for its users, not for us.
#[derive(Default)]
struct RouteCache {
    fabric: u64,
    client: Option<(Arc<AtomicU64>, u64)>,
    entries: Vec<Cached>,
    next: usize,
}

/// Entries a [`RouteCache`] keeps (a device's rings, data buffers, its own BAR, a peer).
const CACHED_ROUTES: usize = 8;

struct Cached {
    /// The bus range `lo..hi`.
    lo: u64,
    hi: u64,
    readable: bool,
    writable: bool,
    to: CachedTo,
}

/// Where a cached range leads; offsets are those of `lo`.
enum CachedTo {
    Own(Weak<MmapRegion>, u64),
    /// A peer's mapping, and the counters of the pair (ours, the peer's inbound).
    Peer(Weak<MmapRegion>, u64, Arc<Dir>, Arc<Dir>),
    Host(Weak<MmapRegion>, u64),
    Relay(Weak<dyn HostMemory>),
}

/// A cache hit, taken out of the lock: what the piece reaches and how far.
struct Hit {
    to: HitTo,
    /// Offset of the piece's first byte in the mapping.
    off: u64,
    avail: u64,
}

enum HitTo {
    Own(Arc<MmapRegion>),
    Peer(Arc<MmapRegion>, Arc<Dir>, Arc<Dir>),
    Host(Arc<MmapRegion>),
    Relay(Arc<dyn HostMemory>),
}

/// The generations a cache entry is made under, read before the routing.
#[derive(Clone)]
struct Generations {
    fabric: u64,
    client: Option<(Arc<AtomicU64>, u64)>,
}

impl Hit {
    /// Moves and counts the piece of `x` that starts `done` bytes in; its length.
    fn transfer(
        self,
        dev: &Device,
        x: &Transfer,
        done: usize,
        op: &mut impl FnMut(Piece<'_>, usize, usize) -> Result<(), DmaError>,
    ) -> Result<usize, DmaError> {
        let n = usize::try_from(self.avail)
            .unwrap_or(usize::MAX)
            .min(x.len - done);
        let n64 = n as u64;
        match &self.to {
            HitTo::Own(m) => {
                op(Piece::Mapped(m, self.off), done, n)?;
                dev.self_.add(x.write, n64);
            }
            HitTo::Peer(m, ours, theirs) => {
                op(Piece::Mapped(m, self.off), done, n)?;
                ours.add(x.write, n64);
                theirs.add(x.write, n64);
            }
            HitTo::Host(m) => {
                op(Piece::Mapped(m, self.off), done, n)?;
                dev.host_memory.add(x.write, n64);
            }
            HitTo::Relay(c) => {
                op(Piece::Relay(c.as_ref()), done, n)?;
                dev.client_relay.add(x.write, n64);
            }
        }
        Ok(n)
    }
}

impl Port {
    /// The cached route of the piece of `x` at `done`, if one is valid and allows the
    /// access (anything else takes the slow path, which also gives the errors).
    fn cached(&self, x: &Transfer, done: usize) -> Option<Hit> {
        let a = x.addr.0.checked_add(done as u64)?;
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let stale = c.fabric != self.fabric.inner.generation.load(Acquire)
            || c.client
                .as_ref()
                .is_some_and(|(g, v)| g.load(Acquire) != *v);
        if stale {
            c.entries.clear();
            return None;
        }
        let e = c.entries.iter().find(|e| e.lo <= a && a < e.hi)?;
        if !(if x.write { e.writable } else { e.readable }) {
            return None;
        }
        let bus_master = || self.dev.bus_master.load(Relaxed);
        let (to, base) = match &e.to {
            CachedTo::Own(m, o) => (HitTo::Own(m.upgrade()?), *o),
            CachedTo::Peer(m, o, ours, theirs) if bus_master() => {
                (HitTo::Peer(m.upgrade()?, ours.clone(), theirs.clone()), *o)
            }
            CachedTo::Host(m, o) if bus_master() => (HitTo::Host(m.upgrade()?), *o),
            CachedTo::Relay(client) if bus_master() => (HitTo::Relay(client.upgrade()?), 0),
            _ => return None,
        };
        Some(Hit {
            to,
            off: base + (a - e.lo),
            avail: e.hi - a,
        })
    }

    /// The generations to make an entry under, read before its routing.
    fn snapshot_generations(&self, fabric: &Fabric, dev: &Device) -> Generations {
        let f = fabric.inner.generation.load(Acquire);
        let client = read(&dev.client).as_ref().map(|c| {
            let g = c.generation();
            let v = g.load(Acquire);
            (g, v)
        });
        Generations { fabric: f, client }
    }

    /// Cache the range the piece of `x` at `done` was routed through.
    fn fill(&self, fabric: &Fabric, dev: &Device, x: &Transfer, done: usize, g: Generations) {
        let Some(a) = x.addr.0.checked_add(done as u64) else {
            return;
        };
        let Some(entry) = fabric.cache_entry(self.id, dev, a) else {
            return;
        };
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let same = c.fabric == g.fabric
            && match (&c.client, &g.client) {
                (None, None) => true,
                (Some((a, va)), Some((b, vb))) => Arc::ptr_eq(a, b) && va == vb,
                _ => false,
            };
        if !same {
            c.entries.clear();
            c.fabric = g.fabric;
            c.client = g.client;
        }
        if c.entries.len() < CACHED_ROUTES {
            c.entries.push(entry);
        } else {
            let i = c.next % CACHED_ROUTES;
            c.entries[i] = entry;
            c.next = i + 1;
        }
    }
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
        self.fabric.transfer(self, addr, len, write, op)
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
