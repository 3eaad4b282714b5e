use super::*;
use p2plab_memory::memfd_create;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

const MIB: u64 = 1 << 20;
const RAM_BASE: u64 = 0;
const RAM_LEN: u64 = 16 * MIB;
const RELAY_BASE: u64 = 0xfffc_0000;
const GPU_BAR: u64 = 0x80_0000_0000;
const CMB_BAR: u64 = 0x81_0000_0000;

/// A client with fd-backed RAM at 0..16 MiB and a relayed range at RELAY_BASE.
struct FakeClient {
    ram: Arc<MmapRegion>,
    /// The RAM map is there (`unmap_ram` takes it away, as a DMA_UNMAP would).
    ram_mapped: AtomicBool,
    /// The RAM map takes device writes.
    ram_writable: AtomicBool,
    generation: Arc<AtomicU64>,
    relayed: Mutex<Vec<(bool, u64, usize)>>,
    relay_mem: Mutex<Vec<u8>>,
}

impl FakeClient {
    fn new() -> Arc<Self> {
        let f = memfd_create("ram", RAM_LEN).unwrap();
        Arc::new(Self {
            ram: Arc::new(MmapRegion::new(Arc::new(f), 0, RAM_LEN as usize, true).unwrap()),
            ram_mapped: AtomicBool::new(true),
            ram_writable: AtomicBool::new(true),
            generation: Arc::default(),
            relayed: Mutex::default(),
            relay_mem: Mutex::new(vec![0; 0x40000]),
        })
    }

    /// The RAM map goes (or comes back), as the client's maps change.
    fn map_ram(&self, mapped: bool) {
        self.ram_mapped.store(mapped, Relaxed);
        self.generation.fetch_add(1, Release);
    }

    fn in_ram(&self, addr: u64) -> bool {
        self.ram_mapped.load(Relaxed) && addr < RAM_BASE + RAM_LEN
    }
}

impl HostMemory for FakeClient {
    fn resolve(&self, addr: BusAddr, len: u64, write: bool) -> Result<(HostRoute, u64), DmaError> {
        let addr = addr.0;
        if self.in_ram(addr) {
            if write && !self.ram_writable.load(Relaxed) {
                return Err(DmaError::ReadOnly { addr });
            }
            Ok((
                HostRoute::Mapped {
                    region: self.ram.clone(),
                    offset: addr,
                },
                len.min(RAM_LEN - addr),
            ))
        } else if (RELAY_BASE..RELAY_BASE + 0x40000).contains(&addr) {
            Ok((HostRoute::Relay, len.min(RELAY_BASE + 0x40000 - addr)))
        } else {
            Err(DmaError::Unmapped { addr, len })
        }
    }
    fn map_at(&self, addr: BusAddr) -> Option<HostMap> {
        let (start, len, route) = if self.in_ram(addr.0) {
            let region = self.ram.clone();
            (RAM_BASE, RAM_LEN, HostRoute::Mapped { region, offset: 0 })
        } else if (RELAY_BASE..RELAY_BASE + 0x40000).contains(&addr.0) {
            (RELAY_BASE, 0x40000, HostRoute::Relay)
        } else {
            return None;
        };
        Some(HostMap {
            start,
            len,
            readable: true,
            writable: start != RAM_BASE || self.ram_writable.load(Relaxed),
            route,
        })
    }
    fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }
    fn relay_read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        let addr = addr.0;
        self.relayed.lock().unwrap().push((false, addr, buf.len()));
        let o = (addr - RELAY_BASE) as usize;
        buf.copy_from_slice(&self.relay_mem.lock().unwrap()[o..o + buf.len()]);
        Ok(())
    }
    fn relay_write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        let addr = addr.0;
        self.relayed.lock().unwrap().push((true, addr, data.len()));
        let o = (addr - RELAY_BASE) as usize;
        self.relay_mem.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

struct Lab {
    fabric: Fabric,
    nvme: DeviceId,
    gpu: DeviceId,
    cmb: Arc<MmapRegion>,
    vram: Arc<MmapRegion>,
    client: Arc<FakeClient>,
}

fn mem(len: u64) -> Arc<MmapRegion> {
    let f = memfd_create("bar", len).unwrap();
    Arc::new(MmapRegion::new(Arc::new(f), 0, len as usize, true).unwrap())
}

fn lab() -> Lab {
    let fabric = Fabric::new();
    let nvme = fabric.add_device("nvme0", "nvme");
    let gpu = fabric.add_device("gpu0", "gpu");
    let cmb = mem(4 * MIB);
    let vram = mem(8 * MIB);
    fabric.set_bar_memory(nvme, 2, cmb.clone());
    fabric.set_bar_memory(gpu, 2, vram.clone());
    fabric.set_bar_window(nvme, 0, Some((0x9000_0000, 0x4000)));
    fabric.set_bar_window(nvme, 2, Some((CMB_BAR, 4 * MIB)));
    fabric.set_bar_window(gpu, 2, Some((GPU_BAR, 8 * MIB)));
    let client = FakeClient::new();
    fabric.set_client(nvme, Some(client.clone()));
    fabric.set_client(gpu, Some(client.clone()));
    fabric.set_bus_master(nvme, true);
    fabric.set_bus_master(gpu, true);
    Lab {
        fabric,
        nvme,
        gpu,
        cmb,
        vram,
        client,
    }
}

fn dev<'a>(c: &'a Counters, name: &str) -> &'a DeviceSnapshot {
    c.devices.iter().find(|d| d.name == name).unwrap()
}

#[test]
fn peer_write_lands_in_peer_memory_and_counts_both_sides() {
    let l = lab();
    let port = l.fabric.port(l.nvme);
    port.write(BusAddr(GPU_BAR + 4096), &[0xab; 8192]).unwrap();
    let mut b = [0u8; 8192];
    l.vram.read(4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xab));
    let c = l.fabric.snapshot();
    assert_eq!(dev(&c, "nvme0").dma.peers["gpu0"].write_bytes, 8192);
    assert_eq!(dev(&c, "gpu0").inbound.peers["nvme0"].write_bytes, 8192);
    assert_eq!(dev(&c, "nvme0").dma.host_memory, DirSnapshot::default());
    assert_eq!(dev(&c, "nvme0").dma.client_relay, DirSnapshot::default());
}

#[test]
fn own_bar_is_self_and_needs_no_bus_master() {
    let l = lab();
    l.fabric.set_bus_master(l.nvme, false);
    let port = l.fabric.port(l.nvme);
    port.write(BusAddr(CMB_BAR), b"sqe!").unwrap();
    let mut b = [0u8; 4];
    port.read(BusAddr(CMB_BAR), &mut b).unwrap();
    assert_eq!(&b, b"sqe!");
    let c = l.fabric.snapshot();
    assert_eq!(
        dev(&c, "nvme0").dma.self_,
        DirSnapshot {
            read_bytes: 4,
            write_bytes: 4,
            ops: 2
        }
    );
    assert_eq!(
        port.write(BusAddr(0x1000), b"x"),
        Err(DmaError::BusMasterDisabled)
    );
}

#[test]
fn guest_ram_is_host_memory_and_relay_is_client_relay() {
    let l = lab();
    let port = l.fabric.port(l.gpu);
    port.write(BusAddr(0x2000), &[7; 100]).unwrap();
    port.write(BusAddr(RELAY_BASE + 16), &[9; 10]).unwrap();
    let mut b = [0u8; 10];
    port.read(BusAddr(RELAY_BASE + 16), &mut b).unwrap();
    assert_eq!(b, [9; 10]);
    let c = l.fabric.snapshot();
    let g = dev(&c, "gpu0");
    assert_eq!(g.dma.host_memory.write_bytes, 100);
    assert_eq!(
        g.dma.client_relay,
        DirSnapshot {
            read_bytes: 10,
            write_bytes: 10,
            ops: 2
        }
    );
    assert_eq!(l.client.relayed.lock().unwrap().len(), 2);
}

#[test]
fn trapped_bars_and_holes_are_errors() {
    let l = lab();
    let port = l.fabric.port(l.gpu);
    assert!(matches!(
        port.write(BusAddr(0x9000_0000), &[1]),
        Err(DmaError::Unmapped { .. })
    ));
    assert!(matches!(
        port.write(BusAddr(0x7000_0000_0000), &[1]),
        Err(DmaError::Unmapped { .. })
    ));
    assert!(matches!(
        port.write(BusAddr(u64::MAX), &[1, 2]),
        Err(DmaError::Overflow { .. })
    ));
    let mut b = [0u8; 16];
    // Runs off the end of the VRAM window into nothing.
    assert!(port.read(BusAddr(GPU_BAR + 8 * MIB - 8), &mut b).is_err());
}

#[test]
fn failed_transfers_count_the_bytes_not_moved_as_faults() {
    let l = lab();
    let port = l.fabric.port(l.gpu);
    assert!(port.write(BusAddr(0x7000_0000_0000), &[1; 100]).is_err());
    // 8 bytes inside the VRAM window are read, the 24 past its end are not.
    let mut b = [0u8; 32];
    assert!(port.read(BusAddr(GPU_BAR + 8 * MIB - 8), &mut b).is_err());
    l.fabric.set_bus_master(l.gpu, false);
    assert_eq!(
        port.write(BusAddr(0x1000), &[1; 10]),
        Err(DmaError::BusMasterDisabled)
    );
    let c = l.fabric.snapshot();
    let g = dev(&c, "gpu0");
    assert_eq!(
        g.dma.faults,
        DirSnapshot {
            read_bytes: 24,
            write_bytes: 110,
            ops: 3
        }
    );
    assert_eq!(
        g.dma.self_.read_bytes, 8,
        "the part inside the window moved"
    );
    assert_eq!(g.dma.host_memory, DirSnapshot::default());
    assert_eq!(dev(&c, "nvme0").dma.faults, DirSnapshot::default());
}

#[test]
fn snapshots_carry_each_device_s_error_counters() {
    let l = lab();
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = n.clone();
    l.fabric.set_error_source(
        l.nvme,
        Box::new(move || vec![("doorbell_invalid_value".into(), seen.load(Relaxed))]),
    );
    n.store(3, Relaxed);
    let v = serde_json::to_value(l.fabric.snapshot()).unwrap();
    assert_eq!(v["devices"][0]["errors"]["doorbell_invalid_value"], 3);
    assert_eq!(v["devices"][1]["errors"], serde_json::json!({}));
}

#[test]
fn disabled_window_is_not_routed() {
    let l = lab();
    l.fabric.set_bar_window(l.gpu, 2, None);
    let port = l.fabric.port(l.nvme);
    assert!(port.write(BusAddr(GPU_BAR), &[1]).is_err());
    assert_eq!(dev(&l.fabric.snapshot(), "gpu0").bars.len(), 0);
}

#[test]
fn no_client_means_no_guest_ram() {
    let l = lab();
    l.fabric.set_client(l.nvme, None);
    assert!(l.fabric.port(l.nvme).write(BusAddr(0x1000), &[1]).is_err());
}

#[test]
fn file_transfers_are_zero_copy_into_peer_and_split_at_windows() {
    let l = lab();
    let f = memfd_create("ns", 16 * MIB).unwrap();
    p2plab_memory::write_all_at(&f, &vec![0x5a; 2 * MIB as usize], 0).unwrap();
    let port = l.fabric.port(l.nvme);
    port.write_from_file(BusAddr(GPU_BAR), &f, 0, 2 * MIB as usize)
        .unwrap();
    let mut b = vec![0u8; 2 * MIB as usize];
    l.vram.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    // From the CMB back to the file: self reads.
    l.cmb.write(0, &[0x11; 4096]).unwrap();
    port.read_to_file(BusAddr(CMB_BAR), &f, 8 * MIB, 4096)
        .unwrap();
    let mut b = [0u8; 4096];
    p2plab_memory::read_exact_at(&f, &mut b, 8 * MIB).unwrap();
    assert!(b.iter().all(|&x| x == 0x11));
    let c = l.fabric.snapshot();
    assert_eq!(dev(&c, "nvme0").dma.peers["gpu0"].write_bytes, 2 * MIB);
    assert_eq!(dev(&c, "nvme0").dma.self_.read_bytes, 4096);
}

#[test]
fn snapshot_matches_the_counter_contract() {
    let l = lab();
    let v = serde_json::to_value(l.fabric.snapshot()).unwrap();
    let d = &v["devices"][0];
    assert_eq!(d["name"], "nvme0");
    for k in ["host_memory", "self", "client_relay", "faults"] {
        assert!(d["dma"][k]["read_bytes"].is_u64(), "{k}");
    }
    assert!(d["dma"]["peers"]["gpu0"]["ops"].is_u64());
    assert!(d["inbound"]["peers"]["gpu0"]["write_bytes"].is_u64());
    assert!(d["inbound"]["cpu_mmio"]["read_bytes"].is_u64());
}

#[test]
fn concurrent_traffic_counts_exactly() {
    let l = lab();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let port = l.fabric.port(l.nvme);
            std::thread::spawn(move || {
                for j in 0..100u64 {
                    port.write(BusAddr(GPU_BAR + (i * 100 + j) * 64), &[1; 64])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = l.fabric.snapshot();
    assert_eq!(
        dev(&c, "nvme0").dma.peers["gpu0"],
        DirSnapshot {
            read_bytes: 0,
            write_bytes: 400 * 64,
            ops: 400
        }
    );
}

#[test]
fn cached_routes_follow_a_moved_window() {
    let l = lab();
    let port = l.fabric.port(l.nvme);
    for _ in 0..3 {
        port.write(BusAddr(GPU_BAR + 64), &[1; 64]).unwrap();
    }
    const MOVED: u64 = 0x90_0000_0000;
    l.fabric.set_bar_window(l.gpu, 2, Some((MOVED, 8 * MIB)));
    assert!(matches!(
        port.write(BusAddr(GPU_BAR + 64), &[2; 64]),
        Err(DmaError::Unmapped { .. })
    ));
    port.write(BusAddr(MOVED + 128), &[3; 64]).unwrap();
    let mut b = [0u8; 64];
    l.vram.read(64, &mut b).unwrap();
    assert_eq!(b, [1; 64], "the write to the old address went nowhere");
    l.vram.read(128, &mut b).unwrap();
    assert_eq!(b, [3; 64]);
    let c = l.fabric.snapshot();
    assert_eq!(dev(&c, "nvme0").dma.peers["gpu0"].write_bytes, 4 * 64);
    assert_eq!(dev(&c, "gpu0").inbound.peers["nvme0"].write_bytes, 4 * 64);
    assert_eq!(dev(&c, "nvme0").dma.faults.write_bytes, 64);
}

#[test]
fn cached_routes_follow_the_client_s_maps() {
    let l = lab();
    let port = l.fabric.port(l.gpu);
    let mut b = [0u8; 8];
    for _ in 0..3 {
        port.read(BusAddr(0x3000), &mut b).unwrap();
    }
    l.client.map_ram(false);
    assert!(matches!(
        port.read(BusAddr(0x3000), &mut b),
        Err(DmaError::Unmapped { .. })
    ));
    l.client.map_ram(true);
    port.read(BusAddr(0x3000), &mut b).unwrap();
    // A different client: its maps, not the old one's.
    l.fabric.set_client(l.gpu, None);
    assert!(port.read(BusAddr(0x3000), &mut b).is_err());
    let g = l.fabric.snapshot();
    let g = dev(&g, "gpu0");
    assert_eq!(g.dma.host_memory.read_bytes, 4 * 8);
    assert_eq!(g.dma.faults.read_bytes, 2 * 8);
}

#[test]
fn cached_routes_keep_permissions_and_bus_master() {
    let l = lab();
    l.client.ram_writable.store(false, Relaxed);
    l.client.map_ram(true);
    let port = l.fabric.port(l.gpu);
    let mut b = [0u8; 8];
    port.read(BusAddr(0x5000), &mut b).unwrap();
    port.read(BusAddr(0x5000), &mut b).unwrap();
    assert_eq!(
        port.write(BusAddr(0x5000), &b),
        Err(DmaError::ReadOnly { addr: 0x5000 })
    );
    l.fabric.set_bus_master(l.gpu, false);
    assert_eq!(
        port.read(BusAddr(0x5000), &mut b),
        Err(DmaError::BusMasterDisabled)
    );
    // Its own BAR needs no bus master, cached or not.
    let own = l.fabric.port(l.gpu);
    own.write(BusAddr(GPU_BAR), &[1]).unwrap();
    own.write(BusAddr(GPU_BAR), &[1]).unwrap();
}

#[test]
fn cached_routes_hold_no_mapping_alive() {
    let l = lab();
    let port = l.fabric.port(l.nvme);
    let mut b = [0u8; 8];
    for a in [0x1000, 0x2000, GPU_BAR, CMB_BAR, RELAY_BASE] {
        port.read(BusAddr(a), &mut b).unwrap();
        port.read(BusAddr(a), &mut b).unwrap();
    }
    assert_eq!(Arc::strong_count(&l.client.ram), 1);
    let client: Arc<dyn HostMemory> = l.client.clone();
    l.fabric.set_client(l.nvme, None);
    l.fabric.set_client(l.gpu, None);
    assert_eq!(Arc::strong_count(&client), 2, "the lab's and this one");
}

#[test]
fn a_range_between_windows_stops_at_the_next_window() {
    // RAM reaches up to RAM_LEN; a window placed inside it takes its addresses from
    // the host route cached below it.
    let l = lab();
    let port = l.fabric.port(l.nvme);
    let mut b = [0u8; 8];
    port.read(BusAddr(0x1000), &mut b).unwrap();
    l.fabric
        .set_bar_window(l.gpu, 2, Some((0x80_0000, 8 * MIB)));
    port.write(BusAddr(0x80_0000), &[4; 8]).unwrap();
    port.write(BusAddr(0x1000), &[5; 8]).unwrap();
    // A transfer across the window's start: RAM, then VRAM.
    port.write(BusAddr(0x80_0000 - 8), &[6; 16]).unwrap();
    let mut v = [0u8; 8];
    l.vram.read(0, &mut v).unwrap();
    assert_eq!(v, [6; 8]);
    let c = l.fabric.snapshot();
    let n = dev(&c, "nvme0");
    assert_eq!(n.dma.peers["gpu0"].write_bytes, 16);
    assert_eq!(n.dma.host_memory.write_bytes, 16);
}

#[test]
fn a_shared_port_counts_every_byte_while_its_routes_change() {
    // Four threads on one port (one cache) write to the GPU's BAR and to RAM while a
    // fifth moves the window away and back and unmaps and remaps the RAM: every byte is
    // counted exactly once, as moved (peer on both ends, or host memory) or as a fault.
    let l = Arc::new(lab());
    let port = l.fabric.port(l.nvme);
    const WRITES: u64 = 2000;
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (l, stop) = (l.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let away = n.is_multiple_of(2);
                l.fabric
                    .set_bar_window(l.gpu, 2, (!away).then_some((GPU_BAR, 8 * MIB)));
                l.client.map_ram(!away);
                n += 1;
                std::thread::yield_now();
            }
            l.fabric.set_bar_window(l.gpu, 2, Some((GPU_BAR, 8 * MIB)));
            l.client.map_ram(true);
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|i| {
            let port = port.clone();
            std::thread::spawn(move || {
                for j in 0..WRITES {
                    let off = (i * WRITES + j) % 1024 * 64;
                    let a = if j.is_multiple_of(2) {
                        GPU_BAR + off
                    } else {
                        off
                    };
                    let _ = port.write(BusAddr(a), &[0x5a; 64]);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Relaxed);
    churn.join().unwrap();
    let c = l.fabric.snapshot();
    let n = dev(&c, "nvme0");
    let moved = n.dma.peers["gpu0"].write_bytes + n.dma.host_memory.write_bytes;
    assert_eq!(moved + n.dma.faults.write_bytes, 4 * WRITES * 64);
    assert_eq!(
        n.dma.peers["gpu0"].write_bytes,
        dev(&c, "gpu0").inbound.peers["nvme0"].write_bytes
    );
    assert_eq!(n.dma.self_, DirSnapshot::default());
    assert_eq!(n.dma.client_relay, DirSnapshot::default());
}
