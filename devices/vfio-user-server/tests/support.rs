//! Shared test pieces: a tiny device (config space + scratch BAR0 + memfd BAR2) and a
//! raw vfio-user client that speaks the protocol byte by byte.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_user_proto::wire::*;
use vfio_user_proto::*;
use vfio_user_server::{
    Client, Device, DeviceInfo, Errno, IrqInfo, RegionInfo, Server, ServerConfig, SocketTransport,
    SparseArea, Transport,
};
use zerocopy::{FromBytes, IntoBytes};

pub const CONFIG_SIZE: u64 = 4096;
pub const BAR0_SIZE: u64 = 4096;
pub const BAR2_SIZE: u64 = 2 << 20;
pub const MSIX_VECTORS: u32 = 4;

pub type Hook = Box<dyn Fn(&TestDevice, u64, &[u8]) -> Result<(), Errno> + Send + Sync>;

/// Config space bytes (region 7), a scratch BAR0 (trapped) and a memfd BAR2 (mmappable
/// in two sparse areas). Counts resets and connects.
pub struct TestDevice {
    pub config: Mutex<Vec<u8>>,
    pub bar0: Mutex<Vec<u8>>,
    pub bar2: Arc<File>,
    pub resets: AtomicUsize,
    pub connects: AtomicUsize,
    pub disconnects: AtomicUsize,
    pub client: Mutex<Option<Arc<Client>>>,
    /// Called on BAR0 writes (after storing them), e.g. to try a relay on the reader.
    pub bar0_hook: Mutex<Option<Hook>>,
}

impl TestDevice {
    pub fn new() -> Arc<Self> {
        let mut config = vec![0u8; CONFIG_SIZE as usize];
        config[0..4].copy_from_slice(&[0x34, 0x12, 0x78, 0x56]); // vendor 0x1234 device 0x5678
        Arc::new(TestDevice {
            config: Mutex::new(config),
            bar0: Mutex::new(vec![0; BAR0_SIZE as usize]),
            bar2: Arc::new(p2plab_memory::memfd_create("bar2", BAR2_SIZE).unwrap()),
            resets: AtomicUsize::new(0),
            connects: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            client: Mutex::new(None),
            bar0_hook: Mutex::new(None),
        })
    }

    pub fn client(&self) -> Arc<Client> {
        self.client
            .lock()
            .unwrap()
            .clone()
            .expect("no client connected")
    }
}

fn access(mem: &mut [u8], offset: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
    let s = usize::try_from(offset).map_err(|_| Errno::EINVAL)?;
    let e = s.checked_add(len).ok_or(Errno::EINVAL)?;
    if e > mem.len() {
        return Err(Errno::EINVAL);
    }
    Ok(s..e)
}

impl Device for TestDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: PCI_NUM_REGIONS,
            num_irqs: PCI_NUM_IRQS,
        }
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        match index {
            0 => Some(RegionInfo {
                size: BAR0_SIZE,
                flags: rw,
                ..Default::default()
            }),
            2 => Some(RegionInfo {
                size: BAR2_SIZE,
                flags: rw | REGION_INFO_FLAG_MMAP,
                mmap_areas: vec![
                    SparseArea {
                        offset: 0,
                        size: 1 << 20,
                    },
                    SparseArea {
                        offset: 1 << 20,
                        size: 1 << 20,
                    },
                ],
                fd: Some(self.bar2.clone()),
                fd_offset: 0,
            }),
            7 => Some(RegionInfo {
                size: CONFIG_SIZE,
                flags: rw,
                ..Default::default()
            }),
            i if i < PCI_NUM_REGIONS => Some(RegionInfo::default()),
            _ => None,
        }
    }
    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        match index {
            PCI_INTX_IRQ_INDEX => Some(IrqInfo {
                count: 1,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            }),
            PCI_MSIX_IRQ_INDEX => Some(IrqInfo {
                count: MSIX_VECTORS,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE,
            }),
            i if i < PCI_NUM_IRQS => Some(IrqInfo { count: 0, flags: 0 }),
            _ => None,
        }
    }
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut m = match index {
            0 => self.bar0.lock().unwrap(),
            7 => self.config.lock().unwrap(),
            _ => return Err(Errno::EINVAL),
        };
        let r = access(&mut m, offset, buf.len())?;
        buf.copy_from_slice(&m[r]);
        Ok(())
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        {
            let mut m = match index {
                0 => self.bar0.lock().unwrap(),
                7 => self.config.lock().unwrap(),
                _ => return Err(Errno::EINVAL),
            };
            let r = access(&mut m, offset, data.len())?;
            m[r].copy_from_slice(data);
        }
        if index == 0 {
            if let Some(h) = &*self.bar0_hook.lock().unwrap() {
                return h(self, offset, data);
            }
        }
        Ok(())
    }
    fn reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.bar0.lock().unwrap().fill(0);
    }
    fn connected(&self, client: Arc<Client>) {
        self.connects.fetch_add(1, Ordering::SeqCst);
        *self.client.lock().unwrap() = Some(client);
    }
    fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
        *self.client.lock().unwrap() = None;
    }
}

/// A socket path in this test process's own directory.
pub fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfu-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A [`TestDevice`] served on a socket by a spawned accept loop.
pub struct Running {
    pub server: Server,
    pub dev: Arc<TestDevice>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn raw(&self) -> RawClient {
        RawClient::new(Arc::new(SocketTransport::new(
            UnixStream::connect(self.server.path()).unwrap(),
        )))
    }
    pub fn stop(mut self) {
        self.server.shutdown();
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Serve a fresh [`TestDevice`] on `sock_path(name)`.
pub fn serve(name: &str, config: ServerConfig) -> Running {
    let dev = TestDevice::new();
    let server = Server::bind_with_config(sock_path(name), dev.clone(), config).unwrap();
    let thread = Some(server.spawn().unwrap());
    Running {
        server,
        dev,
        thread,
    }
}

#[track_caller]
pub fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for {what}");
}

/// A memfd of `size` bytes created with `MFD_ALLOW_SEALING` (as QEMU's
/// `memory-backend-memfd` creates guest RAM), unlike [`p2plab_memory::memfd_create`].
pub fn sealable_memfd(name: &std::ffi::CStr, size: u64) -> File {
    // SAFETY: name is NUL-terminated; flags are constants.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(size).unwrap();
    f
}

/// A received message.
pub struct Msg {
    pub hdr: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Msg {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(
            !self.hdr.is_error(),
            "{} failed with errno {}",
            self.hdr.command(),
            self.hdr.error
        );
        self
    }
    #[track_caller]
    pub fn errno(&self) -> i32 {
        assert!(
            self.hdr.is_error(),
            "{} unexpectedly succeeded",
            self.hdr.command()
        );
        self.hdr.error as i32
    }
}

/// A byte-level vfio-user client over any transport.
pub struct RawClient {
    pub t: Arc<dyn Transport>,
    next_id: u16,
}

impl RawClient {
    pub fn new(t: Arc<dyn Transport>) -> Self {
        RawClient { t, next_id: 0x100 }
    }

    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        self.t.send(bytes, fds).unwrap();
    }

    pub fn send_flags(
        &mut self,
        cmd: Command,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut h = Header::request(id, cmd, payload.len()).unwrap();
        h.flags |= flags;
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(payload);
        self.send_raw(&b, fds);
        id
    }

    pub fn send(&mut self, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u16 {
        self.send_flags(cmd, 0, payload, fds)
    }

    /// Next message from the server, or None at EOF.
    pub fn recv(&self) -> Option<Msg> {
        let mut fds = Vec::new();
        let mut hb = [0u8; HEADER_SIZE];
        let mut got = 0;
        while got < HEADER_SIZE {
            let n = self.t.recv(&mut hb[got..], &mut fds).ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        let hdr = Header::read_from_bytes(&hb).unwrap();
        let mut payload = vec![0u8; hdr.body_len().unwrap()];
        let mut got = 0;
        while got < payload.len() {
            let n = self.t.recv(&mut payload[got..], &mut fds).ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        Some(Msg { hdr, payload, fds })
    }

    /// Send a request and return its reply (asserting the ids match).
    #[track_caller]
    pub fn call(&mut self, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Msg {
        let id = self.send(cmd, payload, fds);
        let m = self.recv().expect("connection closed");
        assert_eq!(m.hdr.message_type(), MessageType::Reply);
        assert_eq!(m.hdr.id, id);
        assert_eq!(m.hdr.command, cmd.0);
        m
    }

    #[track_caller]
    pub fn version(&mut self, caps: &str) -> Msg {
        let mut p = Version { major: 0, minor: 0 }.as_bytes().to_vec();
        p.extend_from_slice(caps.as_bytes());
        p.push(0);
        self.call(Command::VERSION, &p, &[])
    }

    #[track_caller]
    pub fn handshake(&mut self) -> Capabilities {
        let m = self.version(QEMU_CAPS);
        m.ok();
        let (v, rest) = Version::read_from_prefix(&m.payload).unwrap();
        assert_eq!((v.major, v.minor), (0, 0));
        parse_capabilities(rest).unwrap()
    }

    #[track_caller]
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        flags: u32,
        fd: Option<(BorrowedFd<'_>, u64)>,
    ) -> Msg {
        let m = DmaMap {
            argsz: 32,
            flags,
            offset: fd.map_or(0, |f| f.1),
            iova,
            size,
        };
        match fd {
            Some((f, _)) => self.call(Command::DMA_MAP, m.as_bytes(), &[f]),
            None => self.call(Command::DMA_MAP, m.as_bytes(), &[]),
        }
    }

    #[track_caller]
    pub fn dma_unmap(&mut self, iova: u64, size: u64, flags: u32) -> Msg {
        self.call(
            Command::DMA_UNMAP,
            DmaUnmap {
                argsz: 24,
                flags,
                iova,
                size,
            }
            .as_bytes(),
            &[],
        )
    }

    #[track_caller]
    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Msg {
        self.call(
            Command::REGION_READ,
            RegionAccess {
                offset,
                region,
                count,
            }
            .as_bytes(),
            &[],
        )
    }

    pub fn region_write_payload(region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut p = RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        }
        .as_bytes()
        .to_vec();
        p.extend_from_slice(data);
        p
    }

    #[track_caller]
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Msg {
        self.call(
            Command::REGION_WRITE,
            &Self::region_write_payload(region, offset, data),
            &[],
        )
    }

    #[track_caller]
    pub fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Msg {
        let s = IrqSet {
            argsz: 20,
            flags,
            index,
            start,
            count,
        };
        self.call(Command::DEVICE_SET_IRQS, s.as_bytes(), fds)
    }
}

pub const QEMU_CAPS: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;

/// A pair of connected sockets standing in for an eventfd: the server writes 8 bytes to
/// one end; `fired` reads them from the other.
pub struct FakeEventFd {
    pub server_end: std::os::unix::net::UnixStream,
    pub test_end: std::os::unix::net::UnixStream,
}

impl Default for FakeEventFd {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEventFd {
    pub fn new() -> Self {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        FakeEventFd {
            server_end: a,
            test_end: b,
        }
    }
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.server_end.as_fd()
    }
    /// How many signals arrived since the last call.
    pub fn fired(&self) -> usize {
        use std::io::Read;
        let mut n = 0;
        let mut b = [0u8; 8];
        // Give the server a moment when a signal is in flight from another thread.
        std::thread::sleep(std::time::Duration::from_millis(5));
        while let Ok(8) = (&self.test_end).read(&mut b) {
            assert_eq!(u64::from_ne_bytes(b), 1);
            n += 1;
        }
        n
    }
}
