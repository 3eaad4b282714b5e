//! nvme-spec: NVMe 1.4 definitions, no I/O.
//!
//! # What it is
//! The wire and register vocabulary of NVMe over PCIe (NVM Express Base Specification
//! 1.4c, "spec" below), named with the spec / Linux `include/linux/nvme.h` mnemonics:
//! - [`regs`]: controller registers (§3.1) as `bitfield-struct` types and offsets;
//! - [`Command`] / [`Completion`]: the 64-byte SQE and 16-byte CQE (§4.2, §4.6);
//! - [`AdminOpcode`], [`NvmOpcode`], [`Status`]: open enums, so any value the guest
//!   writes stays representable (`Status` keeps the Status Code Type and Status Code);
//! - [`identify`], [`log`], [`feature`], [`sgl`], [`nvm`]: data structures of the admin
//!   and NVM command sets.
//!
//! # Architecture
//! Every wire structure derives the `zerocopy` traits and carries a compile-time size
//! assertion. Integer fields are host-endian: NVMe is little-endian and so is every
//! target p2plab runs on (a big-endian build fails to compile, see below).
//!
//! # What it does not implement
//! Fabrics, namespace management, zoned namespaces, protection information, reservations,
//! NVMe 2.0 additions (I/O Command Set identifiers beyond NVM).

#![forbid(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!("nvme-spec uses host-endian integers for little-endian NVMe structures");

/// Defines an open enum: a transparent newtype over an integer with named constants, so
/// unknown values (from the guest) stay representable and print as their number.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident: $ty:ty {
            $( $(#[$cmeta:meta])* $cname:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[derive(
            ::zerocopy::IntoBytes,
            ::zerocopy::FromBytes,
            ::zerocopy::Immutable,
            ::zerocopy::KnownLayout
        )]
        #[repr(transparent)]
        $vis struct $name(pub $ty);

        #[allow(dead_code)]
        impl $name {
            $( $(#[$cmeta])* pub const $cname: Self = Self($value); )*

            /// The spec mnemonic of a known value.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( Self::$cname => Some(stringify!($cname)), )*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
    };
}

pub mod feature;
pub mod identify;
pub mod log;
pub mod nvm;
pub mod regs;
pub mod sgl;

mod command;
mod status;

pub use command::*;
pub use status::*;
