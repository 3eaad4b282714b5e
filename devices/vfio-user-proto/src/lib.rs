//! vfio-user-proto: the vfio-user wire format.
//!
//! # What it is
//! Everything needed to read and write vfio-user messages, and nothing that does I/O:
//! - [`Header`], the message flags and the open [`Command`] number type;
//! - the `#[repr(C)]` payload structs in [`wire`] (zerocopy, size-asserted), which mirror
//!   QEMU's `hw/vfio-user/protocol.h` and the vfio-user spec;
//! - the VFIO constants vfio-user reuses from `linux/vfio.h` ([`vfio`]);
//! - VERSION capabilities JSON ([`caps`]);
//! - [`decode_request`], turning a received payload into a typed [`Request`] or a
//!   [`DecodeError`] that carries the errno for the error reply.
//!
//! # Architecture
//! `vfio-user-server` reads a header, validates its size, reads the whole payload and
//! hands both to [`decode_request`]. Replies are built from the same structs with
//! `zerocopy::IntoBytes`.
//!
//! # What it does not implement
//! Migration, dirty-page tracking, DEVICE_FEATURE and GET_REGION_IO_FDS payloads: they
//! decode to [`DecodeError::Unsupported`]. Twin-socket mode is not modelled.
//!
//! # DMA_READ/DMA_WRITE and QEMU 11.1
//! QEMU 11.1 lays out DMA_READ/DMA_WRITE as the spec does (64-bit count, data at payload
//! offset 16; older patch-series headers with a 32-bit count and data at 12 are wrong for
//! it), and cannot send a DMA_READ reply larger than its socket buffer in one piece; see
//! [`DmaRwLayout`] and [`wire::QEMU_SAFE_DMA_READ`].

#![forbid(unsafe_code)]

pub mod caps;
mod header;
mod request;
pub mod vfio;
pub mod wire;

pub use caps::{emit_capabilities, parse_capabilities, Capabilities};
pub use header::*;
pub use request::{decode_request, errno, DecodeError, Request};
pub use vfio::*;
pub use wire::{DmaRwLayout, QEMU_SAFE_DMA_READ};
