//! The toolroot stamp (`$P2PLAB_HOME/toolroot/.p2plab-toolroot`): what `scripts/setup`
//! resolved and installed, one `key=value` per line. Runs copy it into `run.json`, so two
//! results can be compared by the QEMU, kernel and recipe that produced them.

use std::collections::BTreeMap;
use std::path::Path;

/// The stamp's file name inside the toolroot.
pub const STAMP_FILE: &str = ".p2plab-toolroot";

/// Parsed stamp. Unknown keys are kept (and shown); the known ones have accessors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub fields: BTreeMap<String, String>,
}

impl Stamp {
    /// Parses `key=value` pairs, one per line or (the recipe-3 stamp) several per line.
    pub fn parse(text: &str) -> Stamp {
        let mut fields = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            let pairs: Vec<&str> = if line.matches('=').count() > 1 {
                line.split_whitespace().collect()
            } else {
                vec![line]
            };
            for p in pairs {
                if let Some((k, v)) = p.split_once('=') {
                    fields.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        Stamp { fields }
    }

    /// Reads `ROOT/.p2plab-toolroot`.
    pub fn read(root: &Path) -> std::io::Result<Stamp> {
        Ok(Stamp::parse(&std::fs::read_to_string(
            root.join(STAMP_FILE),
        )?))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }

    /// The setup recipe that built the root.
    pub fn recipe(&self) -> Option<u32> {
        self.get("recipe")?.parse().ok()
    }

    /// The installed kernel's release (`7.3.4+deb13-amd64`); recipe 3 called it `kernel`.
    pub fn kernel_release(&self) -> Option<&str> {
        self.get("kernel_release").or_else(|| self.get("kernel"))
    }

    /// The installed `qemu-system-x86` package version; recipe 3 called it `qemu`.
    pub fn qemu_package(&self) -> Option<&str> {
        self.get("qemu_package").or_else(|| self.get("qemu"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_stamp_forms() {
        let new = Stamp::parse(
            "recipe=4\nqemu_package=1:11.1.3+ds-2~bpo13+1\nkernel_release=7.3.4+deb13-amd64\n",
        );
        assert_eq!(new.recipe(), Some(4));
        assert_eq!(new.kernel_release(), Some("7.3.4+deb13-amd64"));
        let old = Stamp::parse("recipe=3 qemu=1:11.1.3+ds-1~bpo13+1 kernel=7.3.4+deb13-amd64\n");
        assert_eq!(old.recipe(), Some(3));
        assert_eq!(old.qemu_package(), Some("1:11.1.3+ds-1~bpo13+1"));
        assert_eq!(old.kernel_release(), Some("7.3.4+deb13-amd64"));
    }
}
