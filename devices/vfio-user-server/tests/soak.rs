//! Deterministic randomized soak of the dispatch loop: thousands of random and mutated
//! client messages over [`MemTransport`], each batch followed by a DEVICE_GET_INFO probe
//! whose reply must come back correct (the stream stays in sync), with device-side DMA
//! into whatever the client mapped (no SIGBUS), and a server thread that never panics.
//!
//! Every message is framed correctly (its header size matches the bytes sent): a client
//! that lies about the size desynchronizes any stream-based protocol. Sizes below the
//! header size are checked separately (error reply, then the connection closes).
//!
//! Reproduce a failure with `SOAK_SEED=<seed> cargo test -p vfio-user-server --test soak`.

mod support;

use p2plab_memory::HostRoute;
use p2plab_memory::{BusAddr, DmaSpace};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use vfio_user_proto::wire::*;
use vfio_user_proto::*;
use vfio_user_server::{serve_connection, Device, MemTransport, ServerConfig};
use zerocopy::{FromBytes, IntoBytes};

/// xorshift64*: tiny, deterministic, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// A "interesting" 64-bit value: boundaries, small, page-ish, or fully random.
    fn u64(&mut self) -> u64 {
        match self.below(8) {
            0 => self.pick(&[0, 1, 0xfff, 0x1000, u64::MAX, u64::MAX - 0xfff, 1 << 63]),
            1 => self.below(0x20),
            2 => self.below(0x10) << 12,
            3 => self.below(0x1_0000),
            4 => self.below(1 << 20),
            5 => u64::MAX - self.below(0x2000),
            _ => self.next(),
        }
    }
    fn u32(&mut self) -> u32 {
        match self.below(6) {
            0 => self.pick(&[0, 1, 4, 8, 16, 0xfff, 0x1000, u32::MAX, u32::MAX - 3]),
            1 => self.below(0x20) as u32,
            2 => self.below(0x1_0000) as u32,
            _ => self.next() as u32,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The fds the soak hands to the server: a small guest-RAM memfd and real eventfds.
struct Fds {
    ram: OwnedFd,
    events: Vec<OwnedFd>,
}

const RAM_SIZE: u64 = 0x1_0000;

impl Fds {
    fn new() -> Self {
        let ram = OwnedFd::from(p2plab_memory::memfd_create("soak-ram", RAM_SIZE).unwrap());
        let events = (0..4)
            .map(|_| {
                // SAFETY: eventfd returns a fresh fd or -1 (checked).
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
                // SAFETY: fd is a fresh descriptor owned by nobody else.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .collect();
        Fds { ram, events }
    }

    /// 0..=5 fds: mostly none, sometimes eventfds, sometimes the memfd.
    fn some(&self, rng: &mut Rng) -> Vec<BorrowedFd<'_>> {
        let n = match rng.below(10) {
            0..=5 => 0,
            6 | 7 => 1,
            _ => rng.below(6) as usize,
        };
        (0..n)
            .map(|_| {
                if rng.chance(30) {
                    self.ram.as_fd()
                } else {
                    self.events[rng.below(4) as usize].as_fd()
                }
            })
            .collect()
    }
}

/// One generated message: command, header flags, payload, fds.
struct Gen<'f> {
    cmd: Command,
    flags: u32,
    payload: Vec<u8>,
    fds: Vec<BorrowedFd<'f>>,
}

fn region_index(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => rng.u32(),
        _ => rng.pick(&[0, 1, 2, 7, 8, 9]),
    }
}

fn region_offset(rng: &mut Rng) -> u64 {
    if rng.chance(70) {
        rng.below(BAR0_SIZE + 16)
    } else {
        rng.u64()
    }
}

fn access_count(rng: &mut Rng) -> u32 {
    if rng.chance(80) {
        rng.pick(&[0, 1, 2, 4, 8, 16, 64, 4096])
    } else {
        rng.u32()
    }
}

/// `maps`: (iova, size) of DMA_MAPs sent so far, so some unmaps match one exactly.
fn gen_message<'f>(rng: &mut Rng, fds: &'f Fds, maps: &mut Vec<(u64, u64)>) -> Gen<'f> {
    let mut fd_list = Vec::new();
    let (cmd, mut payload) = match rng.below(13) {
        0 => {
            let mut p = Version {
                major: rng.below(2) as u16,
                minor: rng.next() as u16,
            }
            .as_bytes()
            .to_vec();
            let caps: &[&[u8]] = &[
                b"",
                b"{}",
                b"{\"capabilities\":{\"max_msg_fds\":-1}}",
                b"{\"capabilities\":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}",
                b"{\"capabilities\":{\"max_dma_maps\":1e999}}",
                b"\xff\xfe{",
            ];
            p.extend_from_slice(rng.pick(caps));
            if rng.chance(50) {
                p.push(0);
            }
            (Command::VERSION, p)
        }
        1 => {
            let fd_backed = rng.chance(50);
            let iova = if rng.chance(70) {
                rng.below(0x40) << 12
            } else {
                rng.u64()
            };
            let size = if rng.chance(70) {
                (rng.below(0x12) << 12) + rng.pick(&[0, 0, 1, 0x800])
            } else {
                rng.u64()
            };
            let offset = if rng.chance(70) {
                rng.below(0x12) << 12
            } else {
                rng.u64()
            };
            let m = DmaMap {
                argsz: if rng.chance(90) { 32 } else { rng.u32() },
                flags: if rng.chance(85) {
                    rng.below(4) as u32
                } else {
                    rng.u32()
                },
                offset,
                iova,
                size,
            };
            if fd_backed {
                fd_list.push(fds.ram.as_fd());
            }
            maps.push((iova, size));
            (Command::DMA_MAP, m.as_bytes().to_vec())
        }
        2 if !maps.is_empty() && rng.chance(50) => {
            let (iova, size) = maps.swap_remove(rng.below(maps.len() as u64) as usize);
            let u = DmaUnmap {
                argsz: 24,
                flags: 0,
                iova,
                size,
            };
            (Command::DMA_UNMAP, u.as_bytes().to_vec())
        }
        2 => {
            let u = DmaUnmap {
                argsz: if rng.chance(90) { 24 } else { rng.u32() },
                flags: {
                    let r = rng.u32();
                    rng.pick(&[0, 0, 0, DMA_UNMAP_FLAG_ALL, 1, 3, r])
                },
                iova: if rng.chance(70) {
                    rng.below(0x40) << 12
                } else {
                    rng.u64()
                },
                size: if rng.chance(70) {
                    rng.below(0x12) << 12
                } else {
                    rng.u64()
                },
            };
            (Command::DMA_UNMAP, u.as_bytes().to_vec())
        }
        3 => {
            let d = DeviceInfo {
                argsz: rng.u32(),
                flags: rng.u32(),
                num_regions: rng.u32(),
                num_irqs: rng.u32(),
            };
            (Command::DEVICE_GET_INFO, d.as_bytes().to_vec())
        }
        4 => {
            let r = RegionInfo {
                argsz: {
                    let r = rng.u32();
                    rng.pick(&[0, 16, 32, 48, 80, 0x1000, r])
                },
                index: region_index(rng),
                ..Default::default()
            };
            (Command::DEVICE_GET_REGION_INFO, r.as_bytes().to_vec())
        }
        5 => {
            let i = IrqInfo {
                argsz: {
                    let r = rng.u32();
                    rng.pick(&[16, 16, 0, r])
                },
                index: if rng.chance(80) {
                    rng.below(7) as u32
                } else {
                    rng.u32()
                },
                ..Default::default()
            };
            (Command::DEVICE_GET_IRQ_INFO, i.as_bytes().to_vec())
        }
        6 => {
            let (r1, r2) = (rng.u32(), rng.u32());
            let data = rng.pick(&[
                IRQ_SET_DATA_NONE,
                IRQ_SET_DATA_BOOL,
                IRQ_SET_DATA_EVENTFD,
                r1 & IRQ_SET_DATA_TYPE_MASK,
            ]);
            let action = rng.pick(&[
                IRQ_SET_ACTION_MASK,
                IRQ_SET_ACTION_UNMASK,
                IRQ_SET_ACTION_TRIGGER,
                r2 & IRQ_SET_ACTION_TYPE_MASK,
            ]);
            let flags = if rng.chance(90) {
                data | action
            } else {
                rng.u32()
            };
            let count = if rng.chance(80) {
                rng.below(6) as u32
            } else {
                rng.u32()
            };
            let s = IrqSet {
                argsz: if rng.chance(90) { 20 } else { rng.u32() },
                flags,
                index: if rng.chance(85) {
                    rng.below(6) as u32
                } else {
                    rng.u32()
                },
                start: if rng.chance(85) {
                    rng.below(5) as u32
                } else {
                    rng.u32()
                },
                count,
            };
            let mut p = s.as_bytes().to_vec();
            if flags & IRQ_SET_DATA_BOOL != 0 && rng.chance(80) {
                let n = (count as usize).min(64);
                p.extend((0..n).map(|_| rng.below(2) as u8));
            }
            if data == IRQ_SET_DATA_EVENTFD && rng.chance(70) {
                let n = if rng.chance(70) {
                    (count as usize).min(5)
                } else {
                    rng.below(6) as usize
                };
                fd_list.extend((0..n).map(|_| fds.events[rng.below(4) as usize].as_fd()));
            }
            (Command::DEVICE_SET_IRQS, p)
        }
        7 => {
            let a = RegionAccess {
                offset: region_offset(rng),
                region: region_index(rng),
                count: access_count(rng),
            };
            (Command::REGION_READ, a.as_bytes().to_vec())
        }
        8 => {
            let count = access_count(rng);
            let a = RegionAccess {
                offset: region_offset(rng),
                region: region_index(rng),
                count,
            };
            let mut p = a.as_bytes().to_vec();
            let n = if rng.chance(80) {
                (count as usize).min(8192)
            } else {
                rng.below(64) as usize
            };
            p.extend(rng.bytes(n));
            (Command::REGION_WRITE, p)
        }
        9 => {
            let wr_cnt = if rng.chance(80) {
                rng.below(WRITE_MULTI_MAX + 3)
            } else {
                rng.u64()
            };
            let mut p = WriteMulti { wr_cnt }.as_bytes().to_vec();
            let n = if rng.chance(70) {
                wr_cnt.min(WRITE_MULTI_MAX + 2)
            } else {
                rng.below(8)
            };
            for _ in 0..n {
                let w = WriteOne {
                    offset: region_offset(rng),
                    region: region_index(rng),
                    count: if rng.chance(85) {
                        rng.below(10) as u32
                    } else {
                        rng.u32()
                    },
                    data: rng.next().to_le_bytes(),
                };
                p.extend_from_slice(w.as_bytes());
            }
            (Command::REGION_WRITE_MULTI, p)
        }
        10 => (Command::DEVICE_RESET, Vec::new()),
        11 => {
            // Unsupported and undefined commands, with random bodies.
            let c = rng.pick(&[0u16, 6, 11, 12, 14, 16, 17, 18, 19, 0xff, 0xffff]);
            let n = rng.below(80) as usize;
            (Command(c), rng.bytes(n))
        }
        _ => {
            let c = rng.below(20) as u16;
            let n = rng.below(64) as usize;
            (Command(c), rng.bytes(n))
        }
    };
    // Mutations: truncate, extend, flip bytes, add stray fds.
    if rng.chance(15) && !payload.is_empty() {
        let n = rng.below(payload.len() as u64) as usize;
        payload.truncate(n);
    }
    if rng.chance(5) {
        let n = rng.below(40) as usize;
        payload.extend(rng.bytes(n));
    }
    if rng.chance(10) && !payload.is_empty() {
        let i = rng.below(payload.len() as u64) as usize;
        payload[i] ^= 1 << rng.below(8);
    }
    if rng.chance(8) {
        fd_list.extend(fds.some(rng));
    }
    let flags = match rng.below(20) {
        0 => FLAG_NO_REPLY,
        1 => FLAG_TYPE_REPLY,
        2 => FLAG_TYPE_REPLY | FLAG_ERROR,
        3 => rng.below(16) as u32,
        4 => FLAG_ERROR,
        5 => rng.u32() & !FLAG_TYPE_MASK,
        _ => FLAG_TYPE_REQUEST,
    };
    Gen {
        cmd,
        flags,
        payload,
        fds: fd_list,
    }
}

/// Whether the server owes a reply to a message with these header flags.
fn expects_reply(flags: u32) -> bool {
    flags & FLAG_TYPE_MASK == FLAG_TYPE_REQUEST && flags & FLAG_NO_REPLY == 0
}

struct Soak {
    c: RawClient,
    cli: Arc<MemTransport>,
    dev: Arc<TestDevice>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_id: u16,
    connected: bool,
    /// Successful replies per command number (to see that the soak reaches handlers).
    ok: std::collections::BTreeMap<u16, usize>,
}

impl Soak {
    fn start(config: ServerConfig) -> Self {
        let dev = TestDevice::new();
        let (srv, cli) = MemTransport::pair();
        let d: Arc<dyn Device> = dev.clone();
        let thread = std::thread::Builder::new()
            .name("soak-server".into())
            .spawn(move || serve_connection(d, Arc::new(srv), &config))
            .unwrap();
        let cli = Arc::new(cli);
        Soak {
            c: RawClient::new(cli.clone()),
            cli,
            dev,
            thread: Some(thread),
            next_id: 1,
            connected: false,
            ok: Default::default(),
        }
    }

    fn send(&mut self, cmd: Command, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let h = Header {
            id,
            command: cmd.0,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags,
            error: 0,
        };
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(payload);
        self.c.send_raw(&b, fds);
        id
    }

    /// Send a DEVICE_GET_INFO probe and check every message up to its reply: replies to
    /// the batch's requests in order, then the probe's correct answer.
    #[track_caller]
    fn probe(&mut self, seed: u64, step: usize, batch: &[(u16, Command)]) {
        let q = DeviceInfo {
            argsz: 16,
            ..Default::default()
        };
        let id = self.send(Command::DEVICE_GET_INFO, 0, q.as_bytes(), &[]);
        let mut owed = batch.iter();
        loop {
            let m = self
                .c
                .recv()
                .unwrap_or_else(|| panic!("seed {seed} step {step}: server hung up"));
            assert_eq!(
                m.hdr.message_type(),
                MessageType::Reply,
                "seed {seed} step {step}: server sent a request {:?}",
                m.hdr
            );
            if m.hdr.is_error() {
                assert_eq!(
                    m.hdr.size as usize, HEADER_SIZE,
                    "seed {seed} step {step}: error reply with a body"
                );
                assert_ne!(m.hdr.error, 0, "seed {seed} step {step}: errno 0");
            }
            if m.hdr.id == id && m.hdr.command == Command::DEVICE_GET_INFO.0 {
                assert!(
                    owed.next().is_none(),
                    "seed {seed} step {step}: replies missing before the probe's"
                );
                if !self.connected {
                    assert_eq!(m.errno(), libc::EINVAL, "seed {seed} step {step}");
                    return;
                }
                assert!(!m.hdr.is_error(), "seed {seed} step {step}: probe failed");
                let d = DeviceInfo::read_from_bytes(&m.payload)
                    .unwrap_or_else(|_| panic!("seed {seed} step {step}: probe reply size"));
                let want = self.dev.device_info();
                assert_eq!(
                    (d.argsz, d.flags, d.num_regions, d.num_irqs),
                    (16, want.flags, want.num_regions, want.num_irqs),
                    "seed {seed} step {step}: probe reply"
                );
                assert!(m.fds.is_empty());
                return;
            }
            let (want_id, want_cmd) = owed
                .next()
                .unwrap_or_else(|| panic!("seed {seed} step {step}: unexpected reply {:?}", m.hdr));
            assert_eq!(
                (m.hdr.id, m.hdr.command),
                (*want_id, want_cmd.0),
                "seed {seed} step {step}: reply out of order"
            );
            if !m.hdr.is_error() {
                *self.ok.entry(m.hdr.command).or_default() += 1;
            }
        }
    }

    /// What a device does with a guest-given address: DMA into an fd-backed map.
    fn device_dma(&self, rng: &mut Rng) {
        let Some(client) = self.dev.client.lock().unwrap().clone() else {
            return;
        };
        let dma = client.dma();
        for m in dma.maps() {
            if !m.fd_backed {
                continue;
            }
            let len = rng.below(64).min(m.size) as usize;
            let off = rng.below(m.size - len as u64 + 1);
            let addr = m.iova + off;
            // Resolve first: a relay would wait for this very thread to answer.
            if let Ok((HostRoute::Mapped { .. }, n)) = dma.resolve(addr, len as u64, false) {
                let mut buf = vec![0u8; n as usize];
                // Errors are fine (a racing unmap cannot happen: we are the client).
                let _ = dma.read(BusAddr(addr), &mut buf);
                if m.flags & DMA_MAP_FLAG_WRITE != 0 {
                    let _ = dma.write(BusAddr(addr), &buf);
                }
            }
        }
    }

    fn handshake(&mut self) {
        self.c.handshake();
        self.connected = true;
    }

    #[track_caller]
    fn finish(mut self, seed: u64) {
        self.c.t.shutdown();
        let r = self.thread.take().unwrap().join();
        assert!(r.is_ok(), "seed {seed}: server thread panicked");
    }
}

fn soak_config() -> ServerConfig {
    ServerConfig {
        // Small, so over-limit messages are cheap to send.
        max_data_xfer_size: 4096,
        max_dma_maps: 32,
        max_msg_fds: 4,
        unmap_wait: Duration::from_millis(10),
        relay_timeout: Duration::from_millis(100),
        ..Default::default()
    }
}

/// One connection: a little junk before VERSION, then `steps` random messages in
/// batches, each batch checked with a probe.
fn soak_one(seed: u64, steps: usize, ok: &mut std::collections::BTreeMap<u16, usize>) {
    let mut rng = Rng::new(seed);
    let fds = Fds::new();
    let mut s = Soak::start(soak_config());
    let mut maps = Vec::new();
    let mut step = 0;
    // Before VERSION: everything but VERSION must fail, and the stream stays in sync.
    for _ in 0..rng.below(6) {
        let g = gen_message(&mut rng, &fds, &mut maps);
        if g.cmd == Command::VERSION {
            continue;
        }
        let id = s.send(g.cmd, g.flags, &g.payload, &g.fds);
        let batch: Vec<_> = expects_reply(g.flags)
            .then_some((id, g.cmd))
            .into_iter()
            .collect();
        s.probe(seed, step, &batch);
        step += 1;
    }
    s.handshake();
    while step < steps {
        let n = 1 + rng.below(8) as usize;
        let mut batch = Vec::new();
        for _ in 0..n {
            if rng.chance(1) {
                // Over the payload limit: consumed and answered with E2BIG.
                let len = 4096 + 64 * 1024 + 1 + rng.below(4096) as usize;
                let body = vec![0u8; len];
                let id = s.send(Command::REGION_WRITE, 0, &body, &[]);
                batch.push((id, Command::REGION_WRITE));
                continue;
            }
            let g = gen_message(&mut rng, &fds, &mut maps);
            let id = s.send(g.cmd, g.flags, &g.payload, &g.fds);
            if expects_reply(g.flags) {
                batch.push((id, g.cmd));
            }
        }
        s.probe(seed, step, &batch);
        s.device_dma(&mut rng);
        step += n;
    }
    for (c, n) in &s.ok {
        *ok.entry(*c).or_default() += n;
    }
    s.finish(seed);
}

/// Tests in this file run one at a time, so the fd count of the process is meaningful.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soak: several connections with different seeds, bounded in time.
#[test]
fn random_messages_never_panic_and_keep_the_stream_in_sync() {
    let base: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234);
    let connections: u64 = std::env::var("SOAK_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let _serial = serial();
    let fds_before = open_fds();
    let t0 = Instant::now();
    let mut ok = Default::default();
    for i in 0..connections {
        soak_one(base.wrapping_add(i), 600, &mut ok);
    }
    let elapsed = t0.elapsed();
    eprintln!("soak: {connections} connections x 600 messages in {elapsed:?}");
    let named: Vec<_> = ok
        .iter()
        .map(|(c, n)| format!("{:?}={n}", Command(*c)))
        .collect();
    eprintln!("successful replies: {}", named.join(" "));
    // Every handler was reached with a valid request at least once.
    for c in [
        Command::DMA_MAP,
        Command::DMA_UNMAP,
        Command::DEVICE_GET_REGION_INFO,
        Command::DEVICE_GET_IRQ_INFO,
        Command::DEVICE_SET_IRQS,
        Command::REGION_READ,
        Command::REGION_WRITE,
        Command::REGION_WRITE_MULTI,
        Command::DEVICE_RESET,
    ] {
        assert!(ok.contains_key(&c.0), "the soak never got a successful {c}");
    }
    // Every fd the server received (maps, eventfds, rejected extras) was closed.
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before,
        "fd leak: {fds_before} open before, {fds_after} after"
    );
}

/// A header whose size is below the header size cannot be resynchronized after: it gets
/// an error reply and the connection closes, without a panic.
#[test]
fn size_below_header_gets_an_error_and_closes() {
    let _serial = serial();
    for size in [0u32, 1, 15] {
        let mut s = Soak::start(soak_config());
        s.handshake();
        let h = Header {
            id: 7,
            command: Command::DEVICE_GET_INFO.0,
            size,
            flags: FLAG_TYPE_REQUEST,
            error: 0,
        };
        s.c.send_raw(h.as_bytes(), &[]);
        let m = s.c.recv().expect("an error reply");
        assert_eq!((m.hdr.id, m.errno()), (7, libc::EINVAL));
        assert!(s.c.recv().is_none(), "connection closed");
        s.finish(size.into());
    }
}

/// Truncated headers and bodies at EOF end the connection quietly.
#[test]
fn eof_inside_a_message_ends_the_connection() {
    let _serial = serial();
    let mut rng = Rng::new(99);
    for cut in [1usize, 8, 15, 16, 17, 30] {
        let mut s = Soak::start(soak_config());
        s.handshake();
        let mut p = RegionAccess {
            offset: 0,
            region: 0,
            count: 16,
        }
        .as_bytes()
        .to_vec();
        p.extend(rng.bytes(16));
        let h = Header::request(3, Command::REGION_WRITE, p.len()).unwrap();
        let mut b = h.as_bytes().to_vec();
        b.extend_from_slice(&p);
        s.c.send_raw(&b[..cut], &[]);
        s.cli.close_send();
        assert!(s.c.recv().is_none(), "connection closed without a reply");
        s.finish(cut as u64);
    }
}
