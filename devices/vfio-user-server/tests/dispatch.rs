//! Dispatch tests over the in-memory transport: one behaviour per test.

mod support;

use p2plab_memory::HostRoute;
use p2plab_memory::{BusAddr, DmaError, DmaSpace, InterruptSink};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use support::*;
use vfio_user_proto::wire::*;
use vfio_user_proto::*;
use vfio_user_server::{serve_connection, Device, Errno, MemTransport, ServerConfig};
use zerocopy::{FromBytes, IntoBytes};

struct Conn {
    c: RawClient,
    dev: Arc<TestDevice>,
    thread: Option<JoinHandle<()>>,
}

impl Conn {
    fn close(mut self) -> Arc<TestDevice> {
        self.c.t.shutdown();
        self.thread.take().unwrap().join().unwrap();
        self.dev.clone()
    }
}

fn start_with(config: ServerConfig) -> Conn {
    let dev = TestDevice::new();
    let (srv, cli) = MemTransport::pair();
    let d: Arc<dyn Device> = dev.clone();
    let thread = std::thread::spawn(move || serve_connection(d, Arc::new(srv), &config));
    Conn {
        c: RawClient::new(Arc::new(cli)),
        dev,
        thread: Some(thread),
    }
}

fn start() -> Conn {
    let mut c = start_with(ServerConfig::default());
    c.c.handshake();
    c
}

#[test]
fn commands_before_version_fail() {
    let mut s = start_with(ServerConfig::default());
    let m = s.c.call(
        Command::DEVICE_GET_INFO,
        DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .as_bytes(),
        &[],
    );
    assert_eq!(m.errno(), libc::EINVAL);
    s.c.handshake();
    assert_eq!(s.dev.connects.load(Ordering::SeqCst), 1);
}

#[test]
fn version_reply_advertises_limits() {
    let mut s = start_with(ServerConfig::default());
    let caps = s.c.handshake();
    assert_eq!(caps.max_msg_fds, 16);
    assert_eq!(caps.max_data_xfer_size, 8 << 20);
    assert_eq!(caps.pgsizes, 4096);
    assert_eq!(caps.max_dma_maps, 65535);
    assert!(caps.write_multiple);
    assert!(caps.migration.is_none());
}

#[test]
fn version_lowers_max_dma_maps_to_the_clients() {
    let mut s = start_with(ServerConfig::default());
    let m = s.c.version(r#"{"capabilities":{"max_dma_maps":10}}"#);
    let caps = parse_capabilities(&m.ok().payload[4..]).unwrap();
    assert_eq!(caps.max_dma_maps, 10);
}

#[test]
fn version_reply_fits_in_qemus_request() {
    let mut s = start_with(ServerConfig::default());
    let m = s.c.version(QEMU_CAPS);
    assert!((m.hdr.size as usize) <= HEADER_SIZE + 4 + QEMU_CAPS.len() + 1);
}

#[test]
fn second_version_and_bad_major_fail() {
    let mut s = start();
    assert_eq!(s.c.version("{}").errno(), libc::EINVAL);
    let mut t = start_with(ServerConfig::default());
    let p = Version { major: 1, minor: 0 }.as_bytes().to_vec();
    assert_eq!(t.c.call(Command::VERSION, &p, &[]).errno(), libc::ENOTSUP);
}

#[test]
fn malformed_caps_fail() {
    let mut s = start_with(ServerConfig::default());
    assert_eq!(s.c.version("{not json").errno(), libc::EINVAL);
}

#[test]
fn device_get_info() {
    let mut s = start();
    let m = s.c.call(
        Command::DEVICE_GET_INFO,
        DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .as_bytes(),
        &[],
    );
    let d = DeviceInfo::read_from_bytes(&m.ok().payload).unwrap();
    assert_eq!(
        d,
        DeviceInfo {
            argsz: 16,
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5
        }
    );
}

#[test]
fn region_info_without_caps() {
    let mut s = start();
    let q = RegionInfo {
        argsz: 32,
        index: 7,
        ..Default::default()
    };
    let m = s.c.call(Command::DEVICE_GET_REGION_INFO, q.as_bytes(), &[]);
    let r = RegionInfo::read_from_bytes(&m.ok().payload).unwrap();
    assert_eq!(
        (r.argsz, r.size, r.index, r.cap_offset),
        (32, CONFIG_SIZE, 7, 0)
    );
    assert_eq!(r.flags, REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE);
    assert!(m.fds.is_empty());
}

#[test]
fn region_info_argsz_retry_returns_sparse_caps_and_fd() {
    let mut s = start();
    let q = RegionInfo {
        argsz: 32,
        index: 2,
        ..Default::default()
    };
    let m = s.c.call(Command::DEVICE_GET_REGION_INFO, q.as_bytes(), &[]);
    let r = RegionInfo::read_from_bytes(&m.ok().payload).unwrap();
    let needed = 32 + 8 + 8 + 2 * 16;
    assert_eq!(r.argsz, needed);
    assert_eq!(
        r.flags & REGION_INFO_FLAG_CAPS,
        0,
        "no CAPS flag without room for them"
    );
    assert!(m.fds.is_empty());

    let q = RegionInfo { argsz: needed, ..q };
    let m = s.c.call(Command::DEVICE_GET_REGION_INFO, q.as_bytes(), &[]);
    let (r, caps) = RegionInfo::read_from_prefix(&m.ok().payload).unwrap();
    assert_eq!(r.flags & REGION_INFO_FLAG_CAPS, REGION_INFO_FLAG_CAPS);
    assert_eq!(r.flags & REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_MMAP);
    assert_eq!((r.cap_offset, r.size, r.offset), (32, BAR2_SIZE, 0));
    let (h, rest) = CapHeader::read_from_prefix(caps).unwrap();
    assert_eq!(
        (h.id, h.version, h.next),
        (REGION_INFO_CAP_SPARSE_MMAP, 1, 0)
    );
    let (sm, rest) = SparseMmap::read_from_prefix(rest).unwrap();
    assert_eq!(sm.nr_areas, 2);
    let (a1, _) = SparseMmapArea::read_from_prefix(&rest[16..]).unwrap();
    assert_eq!((a1.offset, a1.size), (1 << 20, 1 << 20));
    assert_eq!(m.fds.len(), 1, "exactly one fd: the region's");
}

#[test]
fn region_index_out_of_range_fails() {
    let mut s = start();
    let q = RegionInfo {
        argsz: 32,
        index: 9,
        ..Default::default()
    };
    assert_eq!(
        s.c.call(Command::DEVICE_GET_REGION_INFO, q.as_bytes(), &[])
            .errno(),
        libc::EINVAL
    );
    assert_eq!(s.c.region_read(1000, 0, 4).errno(), libc::EINVAL);
    assert_eq!(s.c.region_write(u32::MAX, 0, &[1]).errno(), libc::EINVAL);
}

#[test]
fn region_read_and_write() {
    let mut s = start();
    let m = s.c.region_read(7, 0, 4);
    assert_eq!(&m.ok().payload[16..], &[0x34, 0x12, 0x78, 0x56]);
    let m = s.c.region_write(0, 8, &[1, 2, 3, 4]);
    assert_eq!(
        RegionAccess::read_from_bytes(&m.ok().payload).unwrap(),
        RegionAccess {
            offset: 8,
            region: 0,
            count: 4
        }
    );
    assert_eq!(&s.c.region_read(0, 8, 4).payload[16..], &[1, 2, 3, 4]);
}

#[test]
fn region_access_out_of_bounds_fails() {
    let mut s = start();
    assert_eq!(s.c.region_read(0, BAR0_SIZE - 2, 4).errno(), libc::EINVAL);
    assert_eq!(s.c.region_read(0, u64::MAX, 4).errno(), libc::EINVAL);
    assert_eq!(s.c.region_read(0, 0, 16 << 20).errno(), libc::E2BIG);
    assert_eq!(
        s.c.region_read(3, 0, 4).errno(),
        libc::EINVAL,
        "empty region"
    );
}

#[test]
fn posted_write_gets_no_reply() {
    let mut s = start();
    s.c.send_flags(
        Command::REGION_WRITE,
        FLAG_NO_REPLY,
        &RawClient::region_write_payload(0, 0, &[9]),
        &[],
    );
    let m = s.c.region_read(0, 0, 1);
    assert_eq!(m.payload[16], 9, "the read's reply is the next message");
}

#[test]
fn region_write_multi() {
    let mut s = start();
    let w = |off: u64, v: u8| WriteOne {
        offset: off,
        region: 0,
        count: 2,
        data: [v, v, 0, 0, 0, 0, 0, 0],
    };
    let mut p = WriteMulti { wr_cnt: 2 }.as_bytes().to_vec();
    p.extend_from_slice(w(0, 7).as_bytes());
    p.extend_from_slice(w(100, 8).as_bytes());
    let m = s.c.call(Command::REGION_WRITE_MULTI, &p, &[]);
    assert_eq!(
        WriteMulti::read_from_bytes(&m.ok().payload).unwrap().wr_cnt,
        2
    );
    assert_eq!(&s.c.region_read(0, 0, 2).payload[16..], &[7, 7]);
    assert_eq!(&s.c.region_read(0, 100, 2).payload[16..], &[8, 8]);
}

#[test]
fn device_reset_calls_the_device() {
    let mut s = start();
    s.c.call(Command::DEVICE_RESET, &[], &[]).ok();
    assert_eq!(s.dev.resets.load(Ordering::SeqCst), 1);
}

#[test]
fn unknown_command_fails_and_the_next_message_works() {
    let mut s = start();
    assert_eq!(
        s.c.call(Command(77), &[1, 2, 3, 4, 5], &[]).errno(),
        libc::ENOSYS
    );
    assert_eq!(
        s.c.call(Command::DIRTY_PAGES, &[0; 8], &[]).errno(),
        libc::ENOTSUP
    );
    s.c.region_read(7, 0, 4).ok();
}

#[test]
fn irq_info() {
    let mut s = start();
    let m = s.c.call(
        Command::DEVICE_GET_IRQ_INFO,
        IrqInfo {
            argsz: 16,
            index: 2,
            ..Default::default()
        }
        .as_bytes(),
        &[],
    );
    let i = IrqInfo::read_from_bytes(&m.ok().payload).unwrap();
    assert_eq!((i.index, i.count), (2, MSIX_VECTORS));
    let bad = IrqInfo {
        argsz: 16,
        index: 5,
        ..Default::default()
    };
    assert_eq!(
        s.c.call(Command::DEVICE_GET_IRQ_INFO, bad.as_bytes(), &[])
            .errno(),
        libc::EINVAL
    );
}

const EVENTFD_TRIGGER: u32 = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;

#[test]
fn msix_eventfds_arrive_in_chunks_and_signal() {
    let mut s = start();
    let e: Vec<FakeEventFd> = (0..4).map(|_| FakeEventFd::new()).collect();
    s.c.set_irqs(
        EVENTFD_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        0,
        2,
        &[e[0].fd(), e[1].fd()],
    )
    .ok();
    s.c.set_irqs(
        EVENTFD_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        2,
        2,
        &[e[2].fd(), e[3].fd()],
    )
    .ok();
    let irqs = s.dev.client().irqs().clone();
    assert_eq!(irqs.eventfd_count(PCI_MSIX_IRQ_INDEX), 4);
    irqs.signal(3);
    irqs.signal(3);
    assert_eq!(e[3].fired(), 2);
    assert_eq!(e[0].fired(), 0);
}

#[test]
fn set_irqs_with_missing_fds_fails() {
    let mut s = start();
    let e = FakeEventFd::new();
    assert_eq!(
        s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 0, 2, &[e.fd()])
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 3, 2, &[e.fd(), e.fd()])
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.set_irqs(
            IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            1,
            &[]
        )
        .errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.set_irqs(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            2,
            0,
            1,
            &[e.fd()]
        )
        .errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.set_irqs(EVENTFD_TRIGGER, 9, 0, 1, &[e.fd()]).errno(),
        libc::EINVAL
    );
}

#[test]
fn eventfd_chunk_without_fds_unassigns_and_count_zero_disables() {
    let mut s = start();
    let e: Vec<FakeEventFd> = (0..2).map(|_| FakeEventFd::new()).collect();
    s.c.set_irqs(
        EVENTFD_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        0,
        2,
        &[e[0].fd(), e[1].fd()],
    )
    .ok();
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 1, 1, &[])
        .ok();
    let irqs = s.dev.client().irqs().clone();
    assert!(irqs.has_eventfd(PCI_MSIX_IRQ_INDEX, 0));
    assert!(!irqs.has_eventfd(PCI_MSIX_IRQ_INDEX, 1));
    assert!(irqs.msix_enabled());
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 0, 0, &[])
        .ok();
    assert_eq!(irqs.eventfd_count(PCI_MSIX_IRQ_INDEX), 0);
    assert!(
        !irqs.msix_enabled(),
        "MSI-X off: the device's INTx/MSI masks apply"
    );
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 0, 1, &[e[0].fd()])
        .ok();
    s.c.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        0,
        0,
        &[],
    )
    .ok();
    assert_eq!(irqs.eventfd_count(PCI_MSIX_IRQ_INDEX), 0);
}

#[test]
fn client_trigger_and_mask_unmask() {
    let mut s = start();
    let e = FakeEventFd::new();
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 1, 1, &[e.fd()])
        .ok();
    s.c.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        1,
        1,
        &[],
    )
    .ok();
    assert_eq!(e.fired(), 1);
    let mut p = IrqSet {
        argsz: 22,
        flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 2,
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(&[0, 1]);
    s.c.call(Command::DEVICE_SET_IRQS, &p, &[]).ok();
    assert_eq!(e.fired(), 1);
    s.c.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        PCI_MSIX_IRQ_INDEX,
        1,
        1,
        &[],
    )
    .ok();
    s.dev.client().irqs().signal(1);
    assert_eq!(e.fired(), 0, "masked: pending");
    s.c.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        PCI_MSIX_IRQ_INDEX,
        1,
        1,
        &[],
    )
    .ok();
    assert_eq!(e.fired(), 1, "pending delivered on unmask");
}

#[test]
fn signal_falls_back_to_intx_which_automasks() {
    let mut s = start();
    let e = FakeEventFd::new();
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_INTX_IRQ_INDEX, 0, 1, &[e.fd()])
        .ok();
    let irqs = s.dev.client().irqs().clone();
    irqs.signal(2);
    irqs.signal(2);
    assert_eq!(e.fired(), 1, "second signal held by the automask");
    s.c.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        PCI_INTX_IRQ_INDEX,
        0,
        1,
        &[],
    )
    .ok();
    assert_eq!(e.fired(), 1, "pending INTx delivered on unmask (EOI)");
}

#[test]
fn dma_map_with_fd_is_accessed_directly() {
    let mut s = start();
    let ram = p2plab_memory::memfd_create("ram", 0x10000).unwrap();
    p2plab_memory::write_all_at(&ram, b"guest", 0x3000).unwrap();
    s.c.dma_map(
        0x10_0000,
        0x8000,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        Some((ram.as_fd(), 0x2000)),
    )
    .ok();
    let dma = s.dev.client().dma().clone();
    let mut b = [0u8; 5];
    dma.read(BusAddr(0x10_1000), &mut b).unwrap();
    assert_eq!(&b, b"guest");
    dma.write(BusAddr(0x10_7ffe), &[1, 2]).unwrap();
    let mut f = [0u8; 2];
    p2plab_memory::read_exact_at(&ram, &mut f, 0x9ffe).unwrap();
    assert_eq!(f, [1, 2]);
    assert!(matches!(
        dma.read(BusAddr(0x10_7fff), &mut [0; 2]),
        Err(DmaError::Unmapped { .. })
    ));
    let (r, n) = dma.resolve(0x10_7000, 0x10000, false).unwrap();
    assert!(matches!(r, HostRoute::Mapped { offset: 0x7000, .. }));
    assert_eq!(n, 0x1000);
}

#[test]
fn dma_map_with_unaligned_fd_offset() {
    let mut s = start();
    let ram = p2plab_memory::memfd_create("ram", 0x10000).unwrap();
    p2plab_memory::write_all_at(&ram, b"x", 0x1234).unwrap();
    s.c.dma_map(
        0x5000,
        0x1000,
        DMA_MAP_FLAG_READ,
        Some((ram.as_fd(), 0x1234)),
    )
    .ok();
    let mut b = [0u8; 1];
    s.dev.client().dma().read(BusAddr(0x5000), &mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn read_only_map_rejects_device_writes() {
    let mut s = start();
    let ram = p2plab_memory::memfd_create("ram", 0x1000).unwrap();
    s.c.dma_map(0x1000, 0x1000, DMA_MAP_FLAG_READ, Some((ram.as_fd(), 0)))
        .ok();
    let dma = s.dev.client().dma().clone();
    assert_eq!(
        dma.write(BusAddr(0x1000), &[1]),
        Err(DmaError::ReadOnly { addr: 0x1000 })
    );
}

#[test]
fn dma_map_without_fd_is_a_relay_range() {
    let mut s = start();
    s.c.dma_map(0xfffc_0000, 0x4_0000, DMA_MAP_FLAG_READ, None)
        .ok();
    let dma = s.dev.client().dma().clone();
    let (r, n) = dma.resolve(0xfffc_0010, 16, false).unwrap();
    assert!(matches!(r, HostRoute::Relay));
    assert_eq!(n, 16);
    assert!(!dma.maps()[0].fd_backed);
}

#[test]
fn overlapping_dma_map_fails_with_eexist() {
    let mut s = start();
    s.c.dma_map(0x1000, 0x2000, DMA_MAP_FLAG_READ, None).ok();
    assert_eq!(
        s.c.dma_map(0x2000, 0x1000, DMA_MAP_FLAG_READ, None).errno(),
        libc::EEXIST
    );
    assert_eq!(
        s.c.dma_map(0x0, 0x1001, DMA_MAP_FLAG_READ, None).errno(),
        libc::EEXIST
    );
    s.c.dma_map(0x3000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    s.c.dma_map(0x0, 0x1000, DMA_MAP_FLAG_READ, None).ok();
}

#[test]
fn bad_dma_maps_fail() {
    let mut s = start();
    assert_eq!(
        s.c.dma_map(0x1000, 0, DMA_MAP_FLAG_READ, None).errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.dma_map(u64::MAX - 0xfff, 0x2000, DMA_MAP_FLAG_READ, None)
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.dma_map(0x1000, 0x1000, 0x80, None).errno(),
        libc::EINVAL
    );
    let a = p2plab_memory::memfd_create("a", 0x1000).unwrap();
    let m = DmaMap {
        argsz: 32,
        flags: DMA_MAP_FLAG_READ,
        offset: 0,
        iova: 0,
        size: 0x1000,
    };
    assert_eq!(
        s.c.call(Command::DMA_MAP, m.as_bytes(), &[a.as_fd(), a.as_fd()])
            .errno(),
        libc::EINVAL
    );
}

/// Regression (soak): a map reaching past the end of its memfd was mmapped, and the
/// first device DMA there killed the whole process with SIGBUS.
#[test]
fn dma_map_beyond_the_end_of_its_fd_fails() {
    let mut s = start();
    let ram = p2plab_memory::memfd_create("ram", 0x2000).unwrap();
    let rw = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
    for (size, offset) in [
        (0x3000, 0),
        (0x1000, 0x1001),
        (0x1000, 0x2000),
        (1, u64::MAX),
    ] {
        assert_eq!(
            s.c.dma_map(0x10_0000, size, rw, Some((ram.as_fd(), offset)))
                .errno(),
            libc::EINVAL,
            "size {size:#x} at fd offset {offset:#x}"
        );
    }
    assert!(s.dev.client().dma().maps().is_empty());
    // Exactly up to the end is fine, and the last byte is reachable.
    s.c.dma_map(0x10_0000, 0x1000, rw, Some((ram.as_fd(), 0x1000)))
        .ok();
    let mut b = [0u8; 1];
    s.dev
        .client()
        .dma()
        .read(BusAddr(0x10_0fff), &mut b)
        .unwrap();
}

#[test]
fn dma_map_count_is_limited() {
    let mut s = start_with(ServerConfig {
        max_dma_maps: 2,
        ..Default::default()
    });
    s.c.handshake();
    s.c.dma_map(0x1000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    s.c.dma_map(0x2000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    assert_eq!(
        s.c.dma_map(0x3000, 0x1000, DMA_MAP_FLAG_READ, None).errno(),
        libc::ENOSPC
    );
}

#[test]
fn dma_unmap_must_match_exactly() {
    let mut s = start();
    s.c.dma_map(0x1000, 0x2000, DMA_MAP_FLAG_READ, None).ok();
    assert_eq!(s.c.dma_unmap(0x1000, 0x1000, 0).errno(), libc::EINVAL);
    assert_eq!(s.c.dma_unmap(0x2000, 0x1000, 0).errno(), libc::EINVAL);
    let m = s.c.dma_unmap(0x1000, 0x2000, 0);
    assert_eq!(
        DmaUnmap::read_from_bytes(&m.ok().payload).unwrap(),
        DmaUnmap {
            argsz: 24,
            flags: 0,
            iova: 0x1000,
            size: 0x2000
        }
    );
    assert!(s.dev.client().dma().maps().is_empty());
}

#[test]
fn dma_unmap_all() {
    let mut s = start();
    s.c.dma_map(0x1000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    s.c.dma_map(0x8000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    assert_eq!(
        s.c.dma_unmap(0x1000, 0, DMA_UNMAP_FLAG_ALL).errno(),
        libc::EINVAL
    );
    assert_eq!(
        s.c.dma_unmap(0, 0, 1 << 2).errno(),
        libc::EINVAL,
        "bit 2 is VADDR, not ALL"
    );
    assert_eq!(
        s.c.dma_unmap(0, 0, DMA_UNMAP_FLAG_GET_DIRTY_BITMAP).errno(),
        libc::ENOTSUP
    );
    s.c.dma_unmap(0, 0, DMA_UNMAP_FLAG_ALL).ok();
    assert!(s.dev.client().dma().maps().is_empty());
}

#[test]
fn unmap_waits_for_in_flight_users() {
    let mut s = start();
    let ram = p2plab_memory::memfd_create("ram", 0x1000).unwrap();
    s.c.dma_map(0x1000, 0x1000, DMA_MAP_FLAG_READ, Some((ram.as_fd(), 0)))
        .ok();
    let (r, _) = s.dev.client().dma().resolve(0x1000, 1, false).unwrap();
    let user = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(r);
    });
    let t0 = std::time::Instant::now();
    s.c.dma_unmap(0x1000, 0x1000, 0).ok();
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(90),
        "unmap replied before the user finished"
    );
    user.join().unwrap();
}

/// The test acts as QEMU 11.1: answers the server's DMA_READ from `mem` (the request's
/// 16-byte prefix echoed, data at payload offset 16).
fn answer_dma_read(c: &RawClient, m: &Msg, mem: &[u8], base: u64) {
    assert_eq!(m.hdr.command(), Command::DMA_READ);
    assert_eq!(m.payload.len(), DmaAccess::SIZE);
    let (a, _) = DmaAccess::read_from_prefix(&m.payload).unwrap();
    let off = (a.address - base) as usize;
    let n = a.count as usize;
    let mut p = vec![0u8; 16 + n];
    p[..16].copy_from_slice(&m.payload);
    p[16..16 + n].copy_from_slice(&mem[off..off + n]);
    let h = m.hdr.reply(p.len()).unwrap();
    let mut b = h.as_bytes().to_vec();
    b.extend_from_slice(&p);
    c.send_raw(&b, &[]);
}

#[test]
fn relay_read_and_write_round_trip_in_chunks() {
    let mut s = start_with(ServerConfig {
        max_data_xfer_size: 4096,
        ..Default::default()
    });
    s.c.handshake();
    s.c.dma_map(
        0x10000,
        0x4000,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        None,
    )
    .ok();
    let dma = s.dev.client().dma().clone();
    let worker = std::thread::spawn(move || {
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        dma.write(BusAddr(0x10100), &data).unwrap();
        let mut back = vec![0u8; 6000];
        dma.read(BusAddr(0x10100), &mut back).unwrap();
        assert_eq!(back, data);
    });
    // Guest memory as the "client" sees it.
    let mut mem = vec![0u8; 0x4000];
    let mut writes = 0;
    let mut reads = 0;
    while reads < 2 {
        let m = s.c.recv().unwrap();
        assert_eq!(m.hdr.message_type(), MessageType::Request);
        match m.hdr.command() {
            Command::DMA_WRITE => {
                // QEMU 11.1: u64 count, `count <= size - 32`, data at offset 16.
                let (a, _) = DmaAccess::read_from_prefix(&m.payload).unwrap();
                let n = a.count as usize;
                assert!(n <= 4096);
                assert_eq!(m.payload.len(), 16 + n);
                let off = (a.address - 0x10000) as usize;
                mem[off..off + n].copy_from_slice(&m.payload[16..16 + n]);
                // Its reply echoes the 16-byte prefix without the data.
                let mut b = m.hdr.reply(16).unwrap().as_bytes().to_vec();
                b.extend_from_slice(&m.payload[..16]);
                s.c.send_raw(&b, &[]);
                writes += 1;
            }
            Command::DMA_READ => {
                answer_dma_read(&s.c, &m, &mem, 0x10000);
                reads += 1;
            }
            c => panic!("unexpected {c}"),
        }
    }
    assert_eq!(writes, 2);
    worker.join().unwrap();
}

/// QEMU 11.1 cuts a DMA_READ reply bigger than its socket buffer short (and loses the
/// stream), so reads go in `max_dma_read` chunks while writes use `max_data_xfer_size`.
#[test]
fn relay_reads_are_capped_by_max_dma_read_and_writes_are_not() {
    let mut s = start_with(ServerConfig {
        max_data_xfer_size: 1 << 20,
        ..Default::default()
    });
    assert_eq!(ServerConfig::default().max_dma_read, 64 * 1024);
    s.c.handshake();
    let len = 200 * 1024;
    s.c.dma_map(
        0x100000,
        len as u64,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        None,
    )
    .ok();
    let dma = s.dev.client().dma().clone();
    let worker = std::thread::spawn(move || {
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 7) as u8).collect();
        dma.write(BusAddr(0x100000), &data).unwrap();
        let mut back = vec![0u8; len];
        dma.read(BusAddr(0x100000), &mut back).unwrap();
        assert_eq!(back, data);
    });
    let mut mem = vec![0u8; len];
    let w = s.c.recv().unwrap();
    assert_eq!(w.hdr.command(), Command::DMA_WRITE);
    let (a, _) = DmaAccess::read_from_prefix(&w.payload).unwrap();
    assert_eq!((a.address, a.count as usize), (0x100000, len));
    mem.copy_from_slice(&w.payload[16..]);
    let mut b = w.hdr.reply(16).unwrap().as_bytes().to_vec();
    b.extend_from_slice(&w.payload[..16]);
    s.c.send_raw(&b, &[]);
    let mut counts = Vec::new();
    while counts.iter().sum::<usize>() < len {
        let m = s.c.recv().unwrap();
        let (a, _) = DmaAccess::read_from_prefix(&m.payload).unwrap();
        counts.push(a.count as usize);
        answer_dma_read(&s.c, &m, &mem, 0x100000);
    }
    assert_eq!(counts, [65536, 65536, 65536, 8192]);
    worker.join().unwrap();
}

#[test]
fn relay_error_reply_becomes_dma_error() {
    let mut s = start();
    s.c.dma_map(0x10000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    let dma = s.dev.client().dma().clone();
    let worker = std::thread::spawn(move || dma.read(BusAddr(0x10000), &mut [0u8; 8]));
    let m = s.c.recv().unwrap();
    s.c.send_raw(m.hdr.error_reply(libc::EFAULT as u32).as_bytes(), &[]);
    assert!(matches!(worker.join().unwrap(), Err(DmaError::Relay(_))));
}

#[test]
fn unmap_crossing_an_outstanding_dma_read_is_served() {
    let mut s = start();
    s.c.dma_map(0x10000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    s.c.dma_map(0x20000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    let dma = s.dev.client().dma().clone();
    let worker = std::thread::spawn(move || {
        let mut b = [0u8; 4];
        dma.read(BusAddr(0x10000), &mut b).map(|_| b)
    });
    let req = s.c.recv().unwrap();
    assert_eq!(req.hdr.command(), Command::DMA_READ);
    // QEMU sends an unmap before answering: the server must keep serving.
    s.c.dma_unmap(0x20000, 0x1000, 0).ok();
    answer_dma_read(&s.c, &req, &[5, 6, 7, 8], 0x10000);
    assert_eq!(worker.join().unwrap().unwrap(), [5, 6, 7, 8]);
}

#[test]
fn relay_from_the_reader_thread_fails_instead_of_deadlocking() {
    let mut s = start();
    s.c.dma_map(0x10000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    *s.dev.bar0_hook.lock().unwrap() = Some(Box::new(|d: &TestDevice, _, _| {
        let r = d.client().dma().read(BusAddr(0x10000), &mut [0u8; 4]);
        assert!(matches!(r, Err(DmaError::Relay(_))));
        Err(Errno::EIO)
    }));
    assert_eq!(s.c.region_write(0, 0, &[1]).errno(), libc::EIO);
}

#[test]
fn relay_times_out_when_the_client_does_not_answer() {
    let mut s = start_with(ServerConfig {
        relay_timeout: std::time::Duration::from_millis(50),
        ..Default::default()
    });
    s.c.handshake();
    s.c.dma_map(0x10000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    let dma = s.dev.client().dma().clone();
    assert!(matches!(
        dma.read(BusAddr(0x10000), &mut [0u8; 4]),
        Err(DmaError::Relay(_))
    ));
    // The late reply is dropped and the connection stays usable.
    let m = s.c.recv().unwrap();
    answer_dma_read(&s.c, &m, &[0; 4], 0x10000);
    s.c.region_read(7, 0, 4).ok();
}

#[test]
fn disconnect_drops_maps_and_fds_and_fails_relays() {
    let mut s = start();
    let e = FakeEventFd::new();
    s.c.dma_map(0x10000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    s.c.set_irqs(EVENTFD_TRIGGER, PCI_MSIX_IRQ_INDEX, 0, 1, &[e.fd()])
        .ok();
    let client = s.dev.client();
    let dma = client.dma().clone();
    let worker = std::thread::spawn(move || dma.read(BusAddr(0x10000), &mut [0u8; 4]));
    let _req = s.c.recv().unwrap();
    let dev = s.close();
    assert!(matches!(worker.join().unwrap(), Err(DmaError::Relay(_))));
    assert_eq!(dev.disconnects.load(Ordering::SeqCst), 1);
    assert!(!client.is_connected());
    assert!(client.dma().maps().is_empty());
    assert_eq!(client.irqs().eventfd_count(PCI_MSIX_IRQ_INDEX), 0);
    client.irqs().signal(0);
    assert_eq!(e.fired(), 0);
}

#[test]
fn close_without_version_does_not_report_a_disconnect() {
    let s = start_with(ServerConfig::default());
    let dev = s.close();
    assert_eq!(dev.connects.load(Ordering::SeqCst), 0);
    assert_eq!(dev.disconnects.load(Ordering::SeqCst), 0);
}
