//! Fuzz the whole per-connection loop: arbitrary byte streams, split into messages with
//! optional fds, go through `serve_connection` over `MemTransport` to the test device
//! of the integration tests. The server thread must not panic (or crash: fd-backed DMA
//! maps are mmapped), and when every message was framed correctly the stream must stay
//! in sync: a final DEVICE_GET_INFO probe gets its own, correct reply, last.
//!
//! Input: byte 0 bit 0 = do a proper VERSION handshake first. Then chunks, each
//! `ctrl, ...`:
//! - `ctrl & 3` fds ride with the chunk; fd `i` is the guest-RAM memfd if bit `4 + i`
//!   of `ctrl` is set, else an eventfd;
//! - `ctrl & 4` set: a framed message `cmd, flags_sel, len_lo, len_hi, payload[len]`
//!   (the header, with a correct size, is built here);
//! - `ctrl & 4` clear: `len_lo, len_hi, bytes[len]` sent verbatim (may desync).
#![no_main]

#[path = "../../tests/support.rs"]
mod support;

use libfuzzer_sys::fuzz_target;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use support::{RawClient, TestDevice, QEMU_CAPS};
use vfio_user_proto::*;
use vfio_user_server::{serve_connection, Device, MemTransport, ServerConfig, Transport};
use zerocopy::{FromBytes, IntoBytes};

const PROBE_ID: u16 = 0xffff;

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd returns a fresh fd or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn flags(sel: u8) -> u32 {
    match sel % 16 {
        0 => FLAG_NO_REPLY,
        1 => FLAG_TYPE_REPLY,
        2 => FLAG_TYPE_REPLY | FLAG_ERROR,
        3 => u32::from(sel >> 4),
        4 => FLAG_ERROR,
        5 => u32::from(sel) << 24,
        _ => FLAG_TYPE_REQUEST,
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

fn take_u8(data: &mut &[u8]) -> Option<u8> {
    take(data, 1).first().copied()
}

fn take_len(data: &mut &[u8]) -> usize {
    let b = take(data, 2);
    let v = match b {
        [lo, hi] => u16::from_le_bytes([*lo, *hi]),
        [lo] => u16::from(*lo),
        _ => 0,
    };
    usize::from(v)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(first) = take_u8(&mut data) else {
        return;
    };
    let config = ServerConfig {
        max_data_xfer_size: 4096,
        max_msg_fds: 2,
        max_dma_maps: 16,
        relay_timeout: Duration::from_millis(10),
        unmap_wait: Duration::from_millis(1),
        ..Default::default()
    };
    let dev = TestDevice::new();
    let (srv, cli) = MemTransport::pair();
    let cli = Arc::new(cli);
    let d: Arc<dyn Device> = dev.clone();
    let server = std::thread::spawn(move || serve_connection(d, Arc::new(srv), &config));
    let mut c = RawClient::new(cli.clone());
    let ram = OwnedFd::from(p2plab_memory::memfd_create("fuzz-ram", 0x1_0000).unwrap());
    let events = [eventfd(), eventfd(), eventfd()];

    if first & 1 != 0 {
        c.version(QEMU_CAPS).ok();
    }
    let mut in_sync = true;
    let mut id = 0u16;
    while let Some(ctrl) = take_u8(&mut data) {
        let fds: Vec<BorrowedFd<'_>> = (0..usize::from(ctrl & 3))
            .map(|i| {
                if ctrl & (0x10 << i) != 0 {
                    ram.as_fd()
                } else {
                    events[i].as_fd()
                }
            })
            .collect();
        let mut msg = Vec::new();
        if ctrl & 4 != 0 {
            let cmd = take_u8(&mut data).unwrap_or(0);
            let sel = take_u8(&mut data).unwrap_or(0xff);
            let len = take_len(&mut data);
            let payload = take(&mut data, len);
            let h = Header {
                id,
                command: if cmd >= 0xf0 {
                    u16::from(cmd) << 4
                } else {
                    u16::from(cmd % 20)
                },
                size: (HEADER_SIZE + payload.len()) as u32,
                flags: flags(sel),
                error: 0,
            };
            id = id.wrapping_add(1) % PROBE_ID;
            msg.extend_from_slice(h.as_bytes());
            msg.extend_from_slice(payload);
        } else {
            let len = take_len(&mut data);
            msg.extend_from_slice(take(&mut data, len));
            in_sync = false;
        }
        if cli.send(&msg, &fds).is_err() {
            // The server closed the connection (a fatal header).
            break;
        }
    }
    let probe = Header::request(PROBE_ID, Command::DEVICE_GET_INFO, 16).unwrap();
    let mut msg = probe.as_bytes().to_vec();
    msg.extend_from_slice(
        vfio_user_proto::wire::DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .as_bytes(),
    );
    let _ = cli.send(&msg, &[]);
    cli.close_send();

    // Drain everything the server says until it hangs up.
    let mut last = None;
    while let Some(m) = c.recv() {
        assert!(m.hdr.size as usize >= HEADER_SIZE);
        last = Some(m);
    }
    let joined = server.join();
    assert!(joined.is_ok(), "server thread panicked");
    if in_sync {
        let m = last.expect("no reply to the probe");
        assert_eq!(
            (m.hdr.id, m.hdr.command),
            (PROBE_ID, Command::DEVICE_GET_INFO.0)
        );
        if !m.hdr.is_error() {
            let d = vfio_user_proto::wire::DeviceInfo::read_from_bytes(&m.payload)
                .expect("probe reply size");
            let want = dev.device_info();
            assert_eq!(
                (d.flags, d.num_regions, d.num_irqs),
                (want.flags, want.num_regions, want.num_irqs)
            );
        } else {
            assert_eq!(m.hdr.error as i32, libc::EINVAL, "probe before VERSION");
        }
    }
});
