//! Fuzz the codec directly: `decode_request` for any command and payload, the VERSION
//! capabilities parser and the DMA_READ reply decoder, checking the invariants the
//! server relies on for whatever they accept.
//!
//! Input: 2 bytes command (LE), 1 byte selector, then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_user_proto::wire::{WRITE_MULTI_DATA, WRITE_MULTI_MAX};
use vfio_user_proto::*;

fuzz_target!(|data: &[u8]| {
    let [c0, c1, sel, payload @ ..] = data else {
        return;
    };
    // Mostly defined commands, so the interesting decoders get most of the input.
    let raw = u16::from_le_bytes([*c0, *c1]);
    let command = if sel & 0x80 != 0 { raw } else { raw % 20 };
    let Some(hdr) = Header::request(1, Command(command), payload.len()) else {
        return;
    };
    match decode_request(&hdr, payload) {
        Ok(Request::RegionWrite { access, data }) => {
            assert_eq!(access.count as usize, data.len());
        }
        Ok(Request::SetIrqs { set, data }) => {
            if set.flags & IRQ_SET_DATA_BOOL != 0 {
                assert_eq!(set.count as usize, data.len());
            } else {
                assert!(data.is_empty());
            }
        }
        Ok(Request::RegionWriteMulti(writes)) => {
            assert!(writes.len() as u64 <= WRITE_MULTI_MAX);
            assert!(writes.iter().all(|w| w.count as usize <= WRITE_MULTI_DATA));
        }
        Ok(_) => {}
        Err(e) => {
            // Every error maps to a non-zero errno and formats without panicking.
            assert_ne!(e.errno(), 0);
            let _ = e.to_string();
        }
    }
    if let Ok(caps) = parse_capabilities(payload) {
        // What we parse we can emit and parse back.
        let again = parse_capabilities(&emit_capabilities(&caps)).expect("re-parse");
        assert_eq!(again.max_msg_fds, caps.max_msg_fds);
    }
    let count = usize::from(*sel) * 3;
    for layout in [DmaRwLayout::Spec, DmaRwLayout::Count32] {
        if let Ok(d) = layout.decode_read_reply(payload, count) {
            assert_eq!(d.len(), count);
        }
        if let Some(p) = layout.encode_write(u64::from(raw), payload) {
            assert!(p.len() >= payload.len());
        }
    }
});
