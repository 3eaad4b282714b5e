//! A client that misbehaves with the memory it shared: truncating a DMA_MAP's file must
//! fail the DMA cleanly, never SIGBUS the process.

mod support;

use p2plab_memory::{BusAddr, DmaError, DmaSpace};
use std::os::fd::AsFd;
use support::*;
use vfio_user_proto::{DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE};
use vfio_user_server::{ServerConfig, MAX_CHECKED_FILES};

const RW: u32 = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
const IOVA: u64 = 0x10_0000;
const PAGE: u64 = 4096;

fn shrink_seal(f: &std::fs::File) -> bool {
    p2plab_memory::seals(f).unwrap() & libc::F_SEAL_SHRINK as u32 != 0
}

#[test]
fn a_truncated_memfd_fails_the_dma_instead_of_killing_the_lab() {
    let r = serve("truncate.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    // A memfd without MFD_ALLOW_SEALING: it cannot be sealed, so it is size-checked.
    let ram = p2plab_memory::memfd_create("ram", 4 * PAGE).unwrap();
    p2plab_memory::write_all_at(&ram, b"hello", PAGE).unwrap();
    c.dma_map(IOVA, 4 * PAGE, RW, Some((ram.as_fd(), 0))).ok();
    let dma = r.dev.client().dma().clone();
    assert!(dma.maps()[0].size_checked);
    let mut b = [0u8; 5];
    dma.read(BusAddr(IOVA + PAGE), &mut b).unwrap();
    assert_eq!(&b, b"hello");

    ram.set_len(PAGE).unwrap(); // the client takes three pages back

    let err = dma.read(BusAddr(IOVA + PAGE), &mut b).unwrap_err();
    assert_eq!(
        err,
        DmaError::BackingShrunk {
            offset: PAGE,
            len: 5,
            size: PAGE
        }
    );
    assert!(err.to_string().contains("shrank"), "{err}");
    assert!(matches!(
        dma.write(BusAddr(IOVA + 3 * PAGE), b"x"),
        Err(DmaError::BackingShrunk { .. })
    ));
    let ns = p2plab_memory::memfd_create("ns", PAGE).unwrap();
    assert!(matches!(
        dma.write_from_file(BusAddr(IOVA + 2 * PAGE), &ns, 0, 512),
        Err(DmaError::BackingShrunk { .. })
    ));
    assert!(matches!(
        dma.read_to_file(BusAddr(IOVA + PAGE), &ns, 0, 512),
        Err(DmaError::BackingShrunk { .. })
    ));
    // A DMA straddling the new end fails as a whole; the page still backed works.
    assert!(dma.read(BusAddr(IOVA + PAGE - 2), &mut b).is_err());
    dma.write(BusAddr(IOVA), b"still").unwrap();
    // The process is alive and the connection still serves.
    c.region_read(7, 0, 4).ok();
    c.dma_unmap(IOVA, 4 * PAGE, 0).ok();
    assert!(dma.maps().is_empty());
    r.stop();
}

#[test]
fn a_sealable_memfd_is_sealed_so_the_client_cannot_truncate_it() {
    let r = serve("seal.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let ram = sealable_memfd(c"ram", 2 * PAGE);
    assert!(!shrink_seal(&ram));
    c.dma_map(IOVA, 2 * PAGE, RW, Some((ram.as_fd(), 0))).ok();
    let dma = r.dev.client().dma().clone();
    assert!(!dma.maps()[0].size_checked, "sealed: no check needed");
    assert!(shrink_seal(&ram));
    let e = ram.set_len(0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    dma.write(BusAddr(IOVA + PAGE), b"sealed").unwrap();
    r.stop();
}

#[test]
fn with_sealing_off_a_sealable_memfd_is_size_checked() {
    let config = ServerConfig {
        seal_dma_fds: false,
        ..Default::default()
    };
    let r = serve("noseal.sock", config);
    let mut c = r.raw();
    c.handshake();
    let ram = sealable_memfd(c"ram", 2 * PAGE);
    c.dma_map(IOVA, 2 * PAGE, RW, Some((ram.as_fd(), 0))).ok();
    let dma = r.dev.client().dma().clone();
    assert!(dma.maps()[0].size_checked);
    assert!(!shrink_seal(&ram), "the client's file is left as it was");
    ram.set_len(0).unwrap();
    assert!(matches!(
        dma.write(BusAddr(IOVA), b"x"),
        Err(DmaError::BackingShrunk { .. })
    ));
    r.stop();
}

#[test]
fn an_already_sealed_memfd_needs_no_check_even_with_sealing_off() {
    let config = ServerConfig {
        seal_dma_fds: false,
        ..Default::default()
    };
    let r = serve("preseal.sock", config);
    let mut c = r.raw();
    c.handshake();
    // QEMU's memory-backend-memfd (seal=on, the default) arrives like this.
    let ram = p2plab_memory::memfd_create_sealed("ram", 2 * PAGE).unwrap();
    c.dma_map(IOVA, 2 * PAGE, RW, Some((ram.as_fd(), 0))).ok();
    assert!(!r.dev.client().dma().maps()[0].size_checked);
    r.stop();
}

#[test]
fn unsealable_files_are_limited_per_connection() {
    let r = serve("manyfiles.sock", ServerConfig::default());
    let mut c = r.raw();
    c.handshake();
    let files: Vec<_> = (0..=MAX_CHECKED_FILES)
        .map(|_| p2plab_memory::memfd_create("ram", PAGE).unwrap())
        .collect();
    for (i, f) in files.iter().take(MAX_CHECKED_FILES).enumerate() {
        c.dma_map(IOVA + i as u64 * PAGE, PAGE, RW, Some((f.as_fd(), 0)))
            .ok();
    }
    let over = IOVA + MAX_CHECKED_FILES as u64 * PAGE;
    let last = &files[MAX_CHECKED_FILES];
    assert_eq!(
        c.dma_map(over, PAGE, RW, Some((last.as_fd(), 0))).errno(),
        libc::ENOSPC
    );
    // A further map of a file already held shares its descriptor: accepted.
    c.dma_map(over, PAGE, RW, Some((files[0].as_fd(), 0))).ok();
    // Maps of sealed files do not count.
    let sealed = sealable_memfd(c"ram", PAGE);
    c.dma_map(over + PAGE, PAGE, RW, Some((sealed.as_fd(), 0)))
        .ok();
    assert_eq!(r.dev.client().dma().maps().len(), MAX_CHECKED_FILES + 2);
    r.stop();
}
