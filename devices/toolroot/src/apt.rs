//! What the resolver reads from apt: `apt-cache madison`, `apt-cache show` and
//! `apt-cache pkgnames` output, parsed into plain values. Parsing is separate from running
//! apt so the resolver is tested on recorded outputs.

use crate::debver::DebVersion;

/// One row of `apt-cache madison PKG`:
/// ` qemu-system-x86 | 1:11.1.3+ds-2~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub package: String,
    pub version: DebVersion,
    /// The suite the version comes from (`trixie-backports`).
    pub suite: String,
}

/// Parses madison output; rows that are not of that shape (source rows, noise) are skipped.
pub fn parse_madison(text: &str) -> Vec<Offer> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let package = f.next()?.to_string();
            let version = DebVersion::parse(f.next()?)?;
            let source = f.next()?;
            if !source.ends_with("Packages") {
                return None;
            }
            let suite = source
                .split_whitespace()
                .nth(1)?
                .split('/')
                .next()?
                .to_string();
            Some(Offer {
                package,
                version,
                suite,
            })
        })
        .collect()
}

/// The package names a `Depends:` field of `apt-cache show` output names (first stanza).
pub fn parse_depends(show: &str) -> Vec<String> {
    let Some(line) = show.lines().find_map(|l| l.strip_prefix("Depends:")) else {
        return vec![];
    };
    line.split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// One name per line (`apt-cache pkgnames PREFIX`); `apt-cache search` lines (`name - text`)
/// are accepted too.
pub fn parse_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The flavour-less amd64 kernel ABI of a `linux-image-*` / `linux-headers-*` name:
/// `linux-image-7.3.4+deb13-amd64` → `7.3.4+deb13-amd64`. `None` for the cloud and rt
/// flavours, `-unsigned`, `-dbg`, the metapackages and the common headers.
pub fn amd64_abi<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let abi = name.strip_prefix(prefix)?;
    let (version, flavour) = abi.split_once('-')?;
    (flavour == "amd64" && version.starts_with(|c: char| c.is_ascii_digit())).then_some(abi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madison_rows() {
        let rows = parse_madison(
            " qemu-system-x86 | 1:11.1.3+ds-2~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages\n\
             qemu-system-x86 | 1:10.0.2+ds-2+deb13u1 | http://deb.debian.org/debian-security trixie-security/main amd64 Packages\n\
             \n  qemu | 1:10.0.2+ds-2 | http://deb.debian.org/debian trixie/main Sources\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].suite, "trixie-backports");
        assert_eq!(rows[1].version.text, "1:10.0.2+ds-2+deb13u1");
        assert_eq!(rows[1].suite, "trixie-security");
    }

    #[test]
    fn depends_names() {
        let d = parse_depends(
            "Package: linux-image-amd64\nVersion: 7.3.4-1~bpo13+1\nDepends: linux-base-amd64 (= 7.3.4-1~bpo13+1), linux-image-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n",
        );
        assert_eq!(d, ["linux-base-amd64", "linux-image-7.3.4+deb13-amd64"]);
    }

    #[test]
    fn abi_of_names() {
        let p = "linux-image-";
        assert_eq!(
            amd64_abi("linux-image-7.3.4+deb13-amd64", p),
            Some("7.3.4+deb13-amd64")
        );
        assert_eq!(
            amd64_abi("linux-image-6.12.115+deb13.1-amd64", p),
            Some("6.12.115+deb13.1-amd64")
        );
        for n in [
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-rt-amd64",
            "linux-image-7.3.4+deb13-amd64-unsigned",
            "linux-image-7.3.4+deb13-amd64-dbg",
            "linux-image-amd64",
            "linux-image-cloud-amd64",
        ] {
            assert_eq!(amd64_abi(n, p), None, "{n}");
        }
        assert_eq!(
            amd64_abi("linux-headers-7.3.4+deb13-common", "linux-headers-"),
            None
        );
    }
}
