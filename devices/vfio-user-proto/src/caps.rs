//! VERSION capabilities: the NUL-terminated JSON object after major/minor
//! (`{"capabilities": {...}}`), parsed leniently (unknown members are ignored, missing
//! ones take the spec defaults) and emitted compactly.
//!
//! QEMU receives the server's VERSION reply into a buffer the size of its own request,
//! so the reply must not be longer than QEMU's caps string: keep emitted caps small
//! (no `migration` object).

use serde::{Deserialize, Serialize};

/// Spec default of `max_msg_fds`.
pub const DEFAULT_MAX_MSG_FDS: u64 = 1;
/// Spec default of `max_data_xfer_size` (1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// Largest `max_data_xfer_size` QEMU accepts (64 MiB).
pub const QEMU_MAX_DATA_XFER_SIZE: u64 = 64 << 20;
/// Largest `max_msg_fds` QEMU accepts.
pub const QEMU_MAX_MSG_FDS: u64 = 16;
/// Spec default of `pgsizes` (4 KiB pages).
pub const DEFAULT_PGSIZES: u64 = 4096;
/// Spec default of `max_dma_maps`.
pub const DEFAULT_MAX_DMA_MAPS: u64 = 65535;

/// The `capabilities` member of the VERSION JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Capabilities {
    /// Most fds the sender accepts in one message.
    #[serde(default = "d_fds")]
    pub max_msg_fds: u64,
    /// Most data bytes one REGION/DMA read or write message carries.
    #[serde(default = "d_xfer")]
    pub max_data_xfer_size: u64,
    /// Supported DMA page sizes (bit mask).
    #[serde(default = "d_pgsizes")]
    pub pgsizes: u64,
    /// Most DMA maps the client will create.
    #[serde(default = "d_maps")]
    pub max_dma_maps: u64,
    /// REGION_WRITE_MULTI is supported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_multiple: bool,
    /// Migration capabilities, kept opaque (p2plab does not migrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<serde_json::Value>,
}

fn d_fds() -> u64 {
    DEFAULT_MAX_MSG_FDS
}
fn d_xfer() -> u64 {
    DEFAULT_MAX_DATA_XFER_SIZE
}
fn d_pgsizes() -> u64 {
    DEFAULT_PGSIZES
}
fn d_maps() -> u64 {
    DEFAULT_MAX_DMA_MAPS
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            write_multiple: false,
            migration: None,
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    capabilities: Capabilities,
}

/// Parse the caps string of a VERSION payload (the bytes after major/minor). Trailing
/// NULs are stripped; an empty string means all defaults.
pub fn parse_capabilities(raw: &[u8]) -> Result<Capabilities, crate::DecodeError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if raw[end..].iter().any(|&b| b != 0) {
        return Err(crate::DecodeError::BadCapabilities(
            "data after the NUL terminator".into(),
        ));
    }
    let json = &raw[..end];
    if json.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Capabilities::default());
    }
    let env: Envelope = serde_json::from_slice(json)
        .map_err(|e| crate::DecodeError::BadCapabilities(e.to_string()))?;
    Ok(env.capabilities)
}

/// Emit the caps string (compact JSON plus the terminating NUL).
pub fn emit_capabilities(caps: &Capabilities) -> Vec<u8> {
    let env = Envelope {
        capabilities: caps.clone(),
    };
    // Serializing plain integers, bools and an already-parsed JSON value cannot fail.
    let mut v = serde_json::to_vec(&env).unwrap_or_else(|_| b"{}".to_vec());
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_CAPS: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;

    #[test]
    fn parses_qemu_caps() {
        let mut raw = QEMU_CAPS.as_bytes().to_vec();
        raw.push(0);
        let c = parse_capabilities(&raw).unwrap();
        assert_eq!(c.max_msg_fds, 16);
        assert_eq!(c.max_data_xfer_size, 1 << 20);
        assert_eq!(c.max_dma_maps, 65535);
        assert!(c.write_multiple);
        assert!(c.migration.is_some());
    }

    #[test]
    fn missing_members_take_defaults_and_unknown_are_ignored() {
        let c = parse_capabilities(
            br#"{"capabilities":{"max_msg_fds":4,"twin_socket":{"supported":true}}}"#,
        )
        .unwrap();
        assert_eq!(c.max_msg_fds, 4);
        assert_eq!(c.max_data_xfer_size, DEFAULT_MAX_DATA_XFER_SIZE);
        assert_eq!(parse_capabilities(b"\0").unwrap(), Capabilities::default());
        assert_eq!(parse_capabilities(b"{}").unwrap(), Capabilities::default());
    }

    #[test]
    fn rejects_malformed_json() {
        assert!(parse_capabilities(b"{\"capabilities\":").is_err());
        assert!(parse_capabilities(br#"{"capabilities":{"max_msg_fds":"x"}}"#).is_err());
        assert!(parse_capabilities(b"{}\0junk").is_err());
    }

    #[test]
    fn emits_nul_terminated_compact_json_shorter_than_qemus() {
        let c = Capabilities {
            max_msg_fds: 16,
            max_data_xfer_size: 8 << 20,
            write_multiple: true,
            ..Default::default()
        };
        let raw = emit_capabilities(&c);
        assert_eq!(raw.last(), Some(&0));
        assert!(raw.len() < QEMU_CAPS.len());
        assert_eq!(parse_capabilities(&raw).unwrap(), c);
        let s = std::str::from_utf8(&raw[..raw.len() - 1]).unwrap();
        assert!(!s.contains("migration"));
    }
}
