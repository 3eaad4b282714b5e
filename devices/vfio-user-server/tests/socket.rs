//! Integration over real UNIX sockets: the crates.io `vfio_user` client as an
//! independent driver, plus raw-socket tests for malformed input and relayed DMA.

mod support;

use p2plab_memory::{BusAddr, DmaSpace, InterruptSink};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use support::*;
use vfio_user_proto::wire::*;
use vfio_user_proto::*;
use vfio_user_server::{BindError, Server, ServerConfig, SocketTransport, SOCKET_MODE};
use zerocopy::{FromBytes, IntoBytes};

#[test]
fn vfio_user_crate_client_drives_the_device() {
    let r = serve("crate.sock", ServerConfig::default());
    let mut c = vfio_user::Client::new(r.server.path()).unwrap();
    let bar2 = c.region(2).unwrap();
    assert_eq!(bar2.size, BAR2_SIZE);
    assert_eq!(bar2.sparse_areas.len(), 2);
    assert!(bar2.file_offset.is_some(), "region fd delivered");
    assert_eq!(c.region(7).unwrap().size, CONFIG_SIZE);

    let mut id = [0u8; 4];
    c.region_read(7, 0, &mut id).unwrap();
    assert_eq!(id, [0x34, 0x12, 0x78, 0x56]);
    c.region_write(0, 16, &[0xde, 0xad]).unwrap();
    assert_eq!(&r.dev.bar0.lock().unwrap()[16..18], &[0xde, 0xad]);

    let irq = c.get_irq_info(PCI_MSIX_IRQ_INDEX).unwrap();
    assert_eq!(irq.count, MSIX_VECTORS);
    let e = [FakeEventFd::new(), FakeEventFd::new()];
    c.set_irqs(
        PCI_MSIX_IRQ_INDEX,
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        0,
        2,
        &[e[0].server_end.as_raw_fd(), e[1].server_end.as_raw_fd()],
    )
    .unwrap();
    r.dev.client().irqs().signal(1);
    assert_eq!(e[1].fired(), 1);

    let ram = p2plab_memory::memfd_create("ram", 0x10000).unwrap();
    p2plab_memory::write_all_at(&ram, b"hello", 0x100).unwrap();
    c.dma_map(0, 0x4000_0000, 0x10000, ram.as_raw_fd()).unwrap();
    let dma = r.dev.client().dma().clone();
    let mut b = [0u8; 5];
    dma.read(BusAddr(0x4000_0100), &mut b).unwrap();
    assert_eq!(&b, b"hello");
    c.dma_unmap(0x4000_0000, 0x10000).unwrap();
    assert!(dma.maps().is_empty());

    c.reset().unwrap();
    assert_eq!(r.dev.resets.load(Ordering::SeqCst), 1);

    // Reconnect without restarting the server.
    c.shutdown().unwrap();
    drop(c);
    wait_for("disconnect", || {
        r.dev.disconnects.load(Ordering::SeqCst) == 1
    });
    let mut c2 = vfio_user::Client::new(r.server.path()).unwrap();
    c2.region_read(7, 0, &mut id).unwrap();
    assert_eq!(r.dev.connects.load(Ordering::SeqCst), 2);
    drop(c2);
    r.stop();
}

#[test]
fn stale_socket_is_replaced_and_shutdown_unlinks() {
    let path = sock_path("stale.sock");
    let _ = std::fs::remove_file(&path);
    // What a killed lab leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert_eq!(
        UnixStream::connect(&path).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let dev = TestDevice::new();
    let server = Server::bind(&path, dev).unwrap();
    let t = server.spawn().unwrap();
    let mut c = RawClient::new(Arc::new(SocketTransport::new(
        UnixStream::connect(&path).unwrap(),
    )));
    c.handshake();
    drop(c);
    server.shutdown();
    t.join().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_live_socket_is_never_taken_over() {
    let r = serve("live.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let e = Server::bind(r.server.path(), TestDevice::new()).unwrap_err();
    assert!(matches!(e, BindError::InUse { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("live.sock") && msg.contains("a live process is listening"),
        "{msg}"
    );
    // The running server and its client did not notice.
    assert!(r.server.path().exists());
    c.region_read(7, 0, 4).ok();
    let mut c2 = {
        drop(c);
        r.raw()
    };
    c2.handshake();
    r.stop();
}

#[test]
fn sockets_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let r = serve("mode.sock", ServerConfig::default());
    let mode = std::fs::metadata(r.server.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, SOCKET_MODE);
    assert_eq!(SOCKET_MODE, 0o600);
    r.stop();
}

#[test]
fn bind_refuses_a_regular_file() {
    let path = sock_path("regular.sock");
    std::fs::write(&path, b"x").unwrap();
    let e = Server::bind(&path, TestDevice::new()).unwrap_err();
    assert!(matches!(e, BindError::NotASocket { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"x", "left alone");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn shutdown_disconnects_a_connected_client() {
    let r = serve("shutdown.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let dev = r.dev.clone();
    r.stop();
    assert!(c.recv().is_none());
    assert_eq!(dev.disconnects.load(Ordering::SeqCst), 1);
}

#[test]
fn two_devices_in_one_process() {
    let a = serve("two-a.sock", ServerConfig::default());
    let b = serve("two-b.sock", ServerConfig::default());
    let (mut ca, mut cb) = (a.raw(), b.raw());
    ca.handshake();
    cb.handshake();
    ca.region_write(0, 0, &[0xa]).ok();
    cb.region_write(0, 0, &[0xb]).ok();
    assert_eq!(a.dev.bar0.lock().unwrap()[0], 0xa);
    assert_eq!(b.dev.bar0.lock().unwrap()[0], 0xb);
    a.stop();
    b.stop();
}

#[test]
fn truncated_header_drops_the_client_and_the_next_is_served() {
    let r = serve("trunc.sock", ServerConfig::default());
    {
        let c = r.raw();
        c.send_raw(&[1, 0, 1, 0, 0x20], &[]);
        c.t.shutdown();
        assert!(c.recv().is_none());
    }
    let mut c = r.raw();
    c.handshake();
    assert_eq!(
        r.dev.disconnects.load(Ordering::SeqCst),
        0,
        "no VERSION, no disconnect callback"
    );
    r.stop();
}

#[test]
fn oversized_message_is_consumed_and_rejected() {
    let r = serve(
        "big.sock",
        ServerConfig {
            max_data_xfer_size: 4096,
            ..Default::default()
        },
    );
    let mut c = r.raw();
    c.handshake();
    let big = vec![0u8; 256 * 1024];
    let t = c.t.clone();
    let mut h = Header::request(7, Command::REGION_WRITE, big.len()).unwrap();
    h.flags = FLAG_TYPE_REQUEST;
    let sender = std::thread::spawn(move || {
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(&big);
        t.send(&b, &[]).unwrap();
    });
    let m = c.recv().unwrap();
    assert_eq!((m.hdr.id, m.errno()), (7, libc::E2BIG));
    sender.join().unwrap();
    c.region_read(7, 0, 4).ok();
    r.stop();
}

#[test]
fn size_below_header_is_answered_and_closes() {
    let r = serve("small.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let h = Header {
        id: 3,
        command: 4,
        size: 8,
        flags: 0,
        error: 0,
    };
    c.send_raw(h.as_bytes(), &[]);
    let m = c.recv().unwrap();
    assert_eq!(m.errno(), libc::EINVAL);
    assert!(c.recv().is_none());
    r.stop();
}

#[test]
fn unknown_command_over_socket_keeps_the_stream_in_sync() {
    let r = serve("unknown.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    assert_eq!(
        c.call(Command(4242), &[0xff; 100], &[]).errno(),
        libc::ENOSYS
    );
    let m = c.region_read(7, 0, 2);
    assert_eq!(&m.ok().payload[16..], &[0x34, 0x12]);
    r.stop();
}

#[test]
fn fdless_and_fd_dma_maps_over_socket() {
    let r = serve("maps.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    c.dma_map(0xfffc_0000, 0x4_0000, DMA_MAP_FLAG_READ, None)
        .ok();
    let ram = p2plab_memory::memfd_create("ram", 0x2000).unwrap();
    c.dma_map(
        0x1000,
        0x2000,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        Some((ram.as_fd(), 0)),
    )
    .ok();
    let maps = r.dev.client().dma().maps();
    assert_eq!(maps.len(), 2);
    assert!(maps[0].fd_backed && !maps[1].fd_backed);
    r.stop();
}

#[test]
fn too_many_fds_are_rejected_and_the_stream_stays_in_sync() {
    let r = serve("fds.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let e: Vec<FakeEventFd> = (0..17).map(|_| FakeEventFd::new()).collect();
    let fds: Vec<_> = e.iter().map(|e| e.fd()).collect();
    let m = c.set_irqs(
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        0,
        17,
        &fds,
    );
    assert_eq!(m.errno(), libc::EINVAL);
    assert_eq!(r.dev.client().irqs().eventfd_count(PCI_MSIX_IRQ_INDEX), 0);
    c.region_read(7, 0, 4).ok();
    r.stop();
}

#[test]
fn region_index_out_of_range_over_socket() {
    let r = serve("index.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let q = RegionInfo {
        argsz: 32,
        index: 100,
        ..Default::default()
    };
    assert_eq!(
        c.call(Command::DEVICE_GET_REGION_INFO, q.as_bytes(), &[])
            .errno(),
        libc::EINVAL
    );
    assert_eq!(c.region_read(9, 0, 4).errno(), libc::EINVAL);
    r.stop();
}

#[test]
fn set_irqs_with_missing_fds_over_socket() {
    let r = serve("irqfds.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let e = FakeEventFd::new();
    let m = c.set_irqs(
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        PCI_MSIX_IRQ_INDEX,
        0,
        3,
        &[e.fd()],
    );
    assert_eq!(m.errno(), libc::EINVAL);
    r.stop();
}

#[test]
fn relayed_dma_over_socket_with_an_unmap_crossing_it() {
    let r = serve("relay.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    c.dma_map(
        0x10000,
        0x1000,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        None,
    )
    .ok();
    c.dma_map(0x90000, 0x1000, DMA_MAP_FLAG_READ, None).ok();
    let dma = r.dev.client().dma().clone();
    let worker = std::thread::spawn(move || {
        dma.write(BusAddr(0x10010), b"p2plab").unwrap();
        let mut b = [0u8; 6];
        dma.read(BusAddr(0x10010), &mut b).unwrap();
        b
    });
    let mut mem = vec![0u8; 0x1000];
    // DMA_WRITE
    let w = c.recv().unwrap();
    assert_eq!(w.hdr.command(), Command::DMA_WRITE);
    let (a, _) = DmaAccess::read_from_prefix(&w.payload).unwrap();
    assert_eq!((a.address, a.count), (0x10010, 6));
    assert_eq!(w.hdr.size as usize, 32 + 6);
    mem[0x10..0x16].copy_from_slice(&w.payload[16..22]);
    c.send_raw(w.hdr.reply(0).unwrap().as_bytes(), &[]);
    // DMA_READ, with an UNMAP crossing it before the answer.
    let rd = c.recv().unwrap();
    assert_eq!(rd.hdr.command(), Command::DMA_READ);
    c.dma_unmap(0x90000, 0x1000, 0).ok();
    let (a, _) = DmaAccess::read_from_prefix(&rd.payload).unwrap();
    let n = a.count as usize;
    let mut p = vec![0u8; 16 + n];
    p[..16].copy_from_slice(&rd.payload[..16]);
    p[16..16 + n].copy_from_slice(&mem[0x10..0x10 + n]);
    let mut b = rd.hdr.reply(p.len()).unwrap().as_bytes().to_vec();
    b.extend_from_slice(&p);
    c.send_raw(&b, &[]);
    assert_eq!(&worker.join().unwrap(), b"p2plab");
    r.stop();
}
