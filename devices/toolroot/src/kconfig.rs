//! Kernel configuration checks: which options a kernel for the lab must have, read from
//! a `.config` (or Debian's `/boot/config-<release>`).

/// Options the lab's cases need built in (`=y`). Without `CONFIG_PCI_P2PDMA` there is no
/// peer-to-peer path at all; Debian's 6.12 kernels lack it, its 7.x kernels have it.
pub const LAB_REQUIRED: &[&str] = &["CONFIG_PCI_P2PDMA", "CONFIG_ZONE_DEVICE", "CONFIG_PCI_MSI"];

/// The value `opt` has in `config` (`y`, `m`, a string…), `None` when unset.
pub fn value<'a>(config: &'a str, opt: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == opt).then_some(v)
    })
}

/// The options of `required` that are not `=y` in `config`.
pub fn missing_builtin<'a>(config: &str, required: &[&'a str]) -> Vec<&'a str> {
    required
        .iter()
        .copied()
        .filter(|o| value(config, o) != Some("y"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_not_built_in() {
        let c = "CONFIG_PCI_MSI=y\n# CONFIG_PCI_P2PDMA is not set\nCONFIG_ZONE_DEVICE=m\nCONFIG_LOCALVERSION=\"\"\n";
        assert_eq!(value(c, "CONFIG_LOCALVERSION"), Some("\"\""));
        assert_eq!(
            missing_builtin(c, LAB_REQUIRED),
            ["CONFIG_PCI_P2PDMA", "CONFIG_ZONE_DEVICE"]
        );
        assert!(missing_builtin(
            "CONFIG_PCI_P2PDMA=y\nCONFIG_ZONE_DEVICE=y\nCONFIG_PCI_MSI=y\n",
            LAB_REQUIRED
        )
        .is_empty());
    }
}
