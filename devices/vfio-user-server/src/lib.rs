//! vfio-user-server: serves one emulated PCI device per UNIX socket to QEMU's
//! `vfio-user-pci`.
//!
//! # What it is
//! - [`Server`]: binds a socket (mode 0600; a stale one is replaced, a live one never
//!   taken: [`bind_private`]), admits only its owner's and root's connections
//!   ([`PeerPolicy`], `SO_PEERCRED`), accepts one client at a time and accepts the next
//!   after a disconnect, without restart. Several servers (devices) live in one process,
//!   each with its own socket and threads.
//! - [`Device`]: what a device model provides (regions, interrupts, reset).
//! - [`Client`]: one connection as the device sees it: [`ClientDma`] (the client's DMA
//!   maps, direct access to fd-backed guest RAM, and server→client DMA_READ/DMA_WRITE
//!   "relay"), and [`Irqs`] (eventfds from SET_IRQS; an [`InterruptSink`](p2plab_memory::InterruptSink)).
//!   A client's fd-backed map cannot fault the process when the client truncates the
//!   file: it is sealed (`F_SEAL_SHRINK`) or size-checked before each access; every
//!   mapping is left out of core dumps (`MADV_DONTDUMP`).
//!
//! # Architecture
//! Each connection has one reader thread which runs the pipeline: read the header →
//! validate its size against the limits → read the whole payload and its fds (also for
//! unknown commands and over-limit messages, so the stream stays in sync) → decode
//! ([`vfio_user_proto::decode_request`]) → a handler returns `Result<payload, Errno>` →
//! one reply path (an error reply carries the errno). Replies from the client to our
//! own DMA_READ/WRITE requests are routed by message id to the thread waiting for them,
//! while the reader keeps dispatching client requests (QEMU sends DMA_UNMAPs that cross
//! our requests). Writes to the socket from several threads are serialized by a mutex.
//! The stream sits behind [`Transport`] ([`SocketTransport`] over SCM_RIGHTS, or
//! [`MemTransport`] in memory) so [`serve_connection`] runs in unit tests unchanged,
//! in a randomized soak (`tests/soak.rs`) and under cargo-fuzz (`fuzz/`).
//!
//! # The BQL hazard
//! QEMU executes our DMA_READ/WRITE in its main loop holding the Big QEMU Lock, and a
//! vCPU waiting for the reply to a REGION_READ/WRITE holds that same lock. A device
//! that relays DMA from inside [`Device::region_write`] (on the reader thread) would
//! wait forever: reply first, relay from a worker thread. Relaying from the reader
//! thread returns [`DmaError::Relay`](p2plab_memory::DmaError::Relay) instead of
//! deadlocking.
//!
//! # What it does not implement
//! Migration, dirty page logging, DEVICE_FEATURE, GET_REGION_IO_FDS (ioeventfds),
//! twin-socket mode. DMA_UNMAP must match an earlier map exactly.

#![deny(unsafe_code)]

mod dma;
#[expect(unsafe_code, reason = "SO_PEERCRED and geteuid have no stable std API")]
mod door;
mod irq;
mod link;
mod server;
mod session;
#[expect(
    unsafe_code,
    reason = "SCM_RIGHTS needs recvmsg/sendmsg control messages"
)]
mod socket;
mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use dma::{ClientDma, DmaMapInfo, MAX_CHECKED_FILES};
pub use door::{
    bind_private, peer_credentials, BindError, PeerCredentials, PeerPolicy, SOCKET_MODE,
};
pub use irq::Irqs;
pub use server::{serve_connection, Server};
pub use socket::SocketTransport;
pub use transport::{MemTransport, Transport};
pub use vfio_user_proto as proto;
pub use vfio_user_proto::{
    Capabilities, DmaRwLayout, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, QEMU_SAFE_DMA_READ,
    REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};

/// An errno for an error reply (Linux numbering, e.g. `Errno(libc::EINVAL)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "errno {} ({})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

/// DEVICE_GET_INFO answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `DEVICE_FLAGS_PCI`, `DEVICE_FLAGS_RESET`.
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// One mmappable area of a region (offset within the region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

/// DEVICE_GET_REGION_INFO answer.
#[derive(Clone, Debug, Default)]
pub struct RegionInfo {
    pub size: u64,
    /// `REGION_INFO_FLAG_{READ,WRITE,MMAP}`.
    pub flags: u32,
    /// Non-empty: the reply carries a sparse-mmap capability with these areas.
    pub mmap_areas: Vec<SparseArea>,
    /// Sent with the reply when `flags` has `REGION_INFO_FLAG_MMAP`.
    pub fd: Option<Arc<std::fs::File>>,
    /// Where the region starts in `fd` (the reply's `offset`).
    pub fd_offset: u64,
}

/// DEVICE_GET_IRQ_INFO answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    pub count: u32,
    /// `IRQ_INFO_*` flags (e.g. `IRQ_INFO_EVENTFD`).
    pub flags: u32,
}

/// An emulated device served over vfio-user.
///
/// Region accesses run on the connection's reader thread while a QEMU vCPU (holding the
/// BQL) waits for the reply: they must not block on client messages (no relayed DMA).
pub trait Device: Send + Sync + 'static {
    fn device_info(&self) -> DeviceInfo;
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// Must not block on client messages (a vCPU holding QEMU's BQL waits for the reply).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno>;
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    /// DEVICE_RESET.
    fn reset(&self) {}
    /// A client negotiated VERSION (called on the reader thread just before the reply).
    fn connected(&self, _client: Arc<Client>) {}
    /// The client went away; its maps and irq fds are already dropped.
    fn disconnected(&self) {}
}

/// Limits and knobs of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most fds accepted in one message (advertised; QEMU accepts at most 16).
    pub max_msg_fds: u32,
    /// Most data bytes per REGION/DMA message (advertised; QEMU accepts up to 64 MiB).
    pub max_data_xfer_size: u32,
    /// Most DMA maps (advertised as min of this and the client's value).
    pub max_dma_maps: u32,
    /// Most regions a device may report (QEMU refuses more than 100).
    pub max_regions: u32,
    /// How long a relayed DMA waits for the client's reply.
    pub relay_timeout: Duration,
    /// How long a DMA_UNMAP waits for in-flight users of an fd-backed map.
    pub unmap_wait: Duration,
    /// Data layout of DMA_READ/WRITE (the spec's, which QEMU 11.1 uses; see
    /// [`DmaRwLayout`]).
    pub dma_rw_layout: DmaRwLayout,
    /// Most data bytes asked for by one DMA_READ (also capped by
    /// `max_data_xfer_size`). QEMU cannot send a reply larger than its socket buffer
    /// in one piece and then loses the stream; see [`QEMU_SAFE_DMA_READ`].
    pub max_dma_read: usize,
    /// Add `F_SEAL_SHRINK` to a DMA_MAP's file when it allows sealing, so the client
    /// cannot truncate it under our mapping (the seal stays on the client's file).
    /// Unsealed files are mapped with a size check before each access instead.
    pub seal_dma_fds: bool,
    /// Who may connect (checked with `SO_PEERCRED` on every accepted connection).
    pub peers: PeerPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_msg_fds: 16,
            max_data_xfer_size: 8 << 20,
            max_dma_maps: 65535,
            max_regions: 64,
            relay_timeout: Duration::from_secs(5),
            unmap_wait: Duration::from_secs(1),
            dma_rw_layout: DmaRwLayout::Spec,
            max_dma_read: QEMU_SAFE_DMA_READ,
            seal_dma_fds: true,
            peers: PeerPolicy::current_user(),
        }
    }
}

/// One client connection, as handed to [`Device::connected`].
pub struct Client {
    dma: Arc<ClientDma>,
    irqs: Arc<Irqs>,
    caps: Capabilities,
}

impl Client {
    pub fn dma(&self) -> &Arc<ClientDma> {
        &self.dma
    }
    pub fn irqs(&self) -> &Arc<Irqs> {
        &self.irqs
    }
    /// The capabilities the client sent with VERSION.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.dma.is_connected()
    }
}
