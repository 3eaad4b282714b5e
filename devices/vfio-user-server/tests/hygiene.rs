//! Descriptor and mapping hygiene across abrupt client disconnects: one server, 100
//! clients that each DMA_MAP a memfd and then vanish without unmapping. Every fd and
//! every mapping the server took for them must be gone afterwards.
//!
//! Its own test binary, so no other test opens fds or mappings meanwhile.

mod support;

use p2plab_memory::{BusAddr, DmaSpace};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use support::*;
use vfio_user_proto::{DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE};
use vfio_user_server::ServerConfig;

const RECONNECTS: usize = 100;
const IOVA: u64 = 0x4000_0000;
const RAM: u64 = 1 << 20;

/// Open descriptors of this process (the directory's own fd is counted every time).
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Entries of /proc/self/maps.
fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Connect, DMA_MAP a 1 MiB memfd (sealable or not), DMA into it, and vanish: no
/// DMA_UNMAP, the socket just closes. `check` = the (fds, maps) baseline to compare
/// with while the client is still connected.
fn connect_map_and_vanish(r: &Running, i: usize, check: Option<(usize, usize)>) {
    // Alternate the two ways a map is held: sealed (the mapping and its file) and
    // size-checked (the mapping plus the client's file kept open).
    let sealed = i.is_multiple_of(2);
    let ram = if sealed {
        sealable_memfd(c"ram", RAM)
    } else {
        p2plab_memory::memfd_create("ram", RAM).unwrap()
    };
    let mut c = r.raw();
    c.handshake();
    c.dma_map(
        IOVA,
        RAM,
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        Some((ram.as_fd(), 0)),
    )
    .ok();
    let dma = r.dev.client().dma().clone();
    dma.write(BusAddr(IOVA + 4096 * (i as u64 % 256)), b"dma")
        .unwrap();
    assert_eq!(dma.maps()[0].size_checked, !sealed);
    if let Some((fds0, maps0)) = check {
        // While connected: one more mapping; fds: the client's socket and memfd, the
        // accepted socket, and the file the map keeps open (vm-memory's fd-backed region
        // holds its file, sealed or not).
        assert_eq!(map_count(), maps0 + 1, "the DMA map is visible");
        assert_eq!(fd_count(), fds0 + 4);
    }
    drop(dma);
    drop(c);
    drop(ram);
}

#[test]
fn abrupt_disconnects_leave_no_fds_or_mappings_behind() {
    let r = serve("hygiene.sock", ServerConfig::default());
    let cold = (fd_count(), map_count());
    // One warm-up client first: the accept thread's first allocations create glibc's
    // per-thread malloc arenas (two /proc/self/maps entries each), a one-time cost that
    // is not per connection.
    connect_map_and_vanish(&r, 1, None);
    wait_for("the warm-up disconnect", || {
        r.dev.disconnects.load(Ordering::SeqCst) == 1
    });
    let (fds0, maps0) = (fd_count(), map_count());
    for i in 0..RECONNECTS {
        connect_map_and_vanish(&r, i, (i < 2).then_some((fds0, maps0)));
    }
    wait_for("every disconnect", || {
        r.dev.disconnects.load(Ordering::SeqCst) == RECONNECTS + 1
    });
    let (fds1, maps1) = (fd_count(), map_count());
    println!(
        "cold: fds {}, maps {}; baseline after one warm-up client: fds {fds0}, maps {maps0}; \
         after {RECONNECTS} abrupt reconnects: fds {fds1}, maps {maps1}",
        cold.0, cold.1
    );
    assert_eq!(fds1, fds0, "descriptors leaked");
    assert_eq!(maps1, maps0, "mappings leaked");
    assert_eq!(fds0, cold.0, "the warm-up client left no descriptor either");
    assert_eq!(r.dev.connects.load(Ordering::SeqCst), RECONNECTS + 1);
    r.stop();
}
