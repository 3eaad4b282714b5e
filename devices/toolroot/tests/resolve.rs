//! The resolver on recorded `apt-cache` output (tests/data/2026-12-01: what a trixie root
//! with trixie, -updates, -security and -backports saw that day) and on edits of it that
//! stand for the archive moving.

use std::collections::BTreeMap;
use std::path::Path;

use p2plab_toolroot::{resolve, AptCache, Pins, Policy, ResolveError, Resolved};

/// Replays recorded outputs; `edit` rewrites the day's archive.
#[derive(Clone)]
struct Recorded {
    files: BTreeMap<&'static str, String>,
}

impl Recorded {
    fn day(name: &str) -> Recorded {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let mut files = BTreeMap::new();
        for f in [
            "madison-qemu-system-x86.txt",
            "madison-linux-image-amd64.txt",
            "show-linux-image-amd64.txt",
            "pkgnames-linux-image-.txt",
            "pkgnames-linux-headers-.txt",
            "madison-linux-image-abis.txt",
        ] {
            files.insert(f, read(f));
        }
        Recorded { files }
    }

    fn edit(mut self, file: &'static str, f: impl FnOnce(&str) -> String) -> Recorded {
        let new = f(&self.files[file]);
        self.files.insert(file, new);
        self
    }

    /// Drop every line containing `needle` from `file`.
    fn without(self, file: &'static str, needle: &str) -> Recorded {
        self.edit(file, |t| {
            t.lines()
                .filter(|l| !l.contains(needle))
                .map(|l| format!("{l}\n"))
                .collect()
        })
    }

    fn with_line(self, file: &'static str, line: &str) -> Recorded {
        self.edit(file, |t| format!("{t}{line}\n"))
    }
}

impl AptCache for Recorded {
    fn madison(&self, pkg: &str) -> Result<String, String> {
        let f = match pkg {
            "qemu-system-x86" => "madison-qemu-system-x86.txt",
            "linux-image-amd64" => "madison-linux-image-amd64.txt",
            _ => "madison-linux-image-abis.txt",
        };
        Ok(self.files[f]
            .lines()
            .filter(|l| l.split('|').next().map(str::trim) == Some(pkg))
            .map(|l| format!("{l}\n"))
            .collect())
    }
    fn show(&self, pkg: &str, version: &str) -> Result<String, String> {
        let t = &self.files["show-linux-image-amd64.txt"];
        assert_eq!(pkg, "linux-image-amd64");
        if t.contains(&format!("Version: {version}\n")) {
            Ok(t.clone())
        } else {
            Err(format!("E: Version '{version}' for '{pkg}' was not found"))
        }
    }
    fn pkgnames(&self, prefix: &str) -> Result<String, String> {
        let f = match prefix {
            "linux-image-" => "pkgnames-linux-image-.txt",
            "linux-headers-" => "pkgnames-linux-headers-.txt",
            _ => return Ok(String::new()),
        };
        Ok(self.files[f].clone())
    }
}

#[track_caller]
fn ok(apt: &Recorded, pins: Pins) -> Resolved {
    resolve(apt, &Policy::default(), &pins).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn err(apt: &Recorded, pins: Pins) -> ResolveError {
    resolve(apt, &Policy::default(), &pins).expect_err("resolution should fail")
}

fn today() -> Recorded {
    Recorded::day("2026-12-01")
}

#[test]
fn todays_archive_gives_qemu_11_and_the_backports_kernel() {
    let r = ok(&today(), Pins::default());
    assert_eq!(r.qemu.version.text, "1:11.1.3+ds-2~bpo13+1");
    assert_eq!(r.qemu.suite, "trixie-backports");
    assert_eq!(r.qemu_upstream(), "11.1.3");
    assert_eq!(r.kernel_abi, "7.3.4+deb13-amd64");
    assert_eq!(r.kernel.version.text, "7.3.4-1~bpo13+1");
    assert_eq!(r.kernel.suite, "trixie-backports");
    assert!(r
        .to_shell()
        .contains("QEMU_PACKAGE='1:11.1.3+ds-2~bpo13+1'\n"));
}

#[test]
fn the_newest_of_several_qemu_revisions_wins() {
    let apt = today().with_line(
        "madison-qemu-system-x86.txt",
        "qemu-system-x86 | 1:11.1.3+ds-10~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages",
    );
    assert_eq!(
        ok(&apt, Pins::default()).qemu.version.text,
        "1:11.1.3+ds-10~bpo13+1"
    );
}

#[test]
fn a_vanished_qemu_pin_lists_what_is_offered() {
    let e = err(
        &today(),
        Pins {
            qemu: Some("1:11.1.3+ds-1~bpo13+1".into()),
            ..Pins::default()
        },
    );
    let ResolveError::QemuPinUnavailable { offered, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(offered.len(), 3);
    let msg = e.to_string();
    assert!(
        msg.contains("1:11.1.3+ds-2~bpo13+1 (trixie-backports)"),
        "{msg}"
    );
    assert!(msg.contains("P2PLAB_QEMU_VERSION"), "{msg}");
}

#[test]
fn an_upstream_qemu_pin_takes_its_newest_revision() {
    let r = ok(
        &today(),
        Pins {
            qemu: Some("10.0.13".into()),
            ..Pins::default()
        },
    );
    assert_eq!(r.qemu.version.text, "1:10.0.13+ds-0+deb13u1");
}

#[test]
fn qemu_older_than_10_1_does_not_qualify() {
    let apt = today().without("madison-qemu-system-x86.txt", "bpo13");
    let e = err(&apt, Pins::default());
    assert!(
        matches!(e, ResolveError::NoQemu { min: (10, 1), .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("1:10.0.13+ds-0+deb13u1"), "{e}");
}

#[test]
fn six_and_seven_side_by_side_the_metapackage_names_the_kernel() {
    // 6.12 kernels from trixie and -security, 7.2 and 7.3 from backports: 7.3.4 it is.
    let apt = today();
    assert!(apt.files["pkgnames-linux-image-.txt"].contains("linux-image-6.12.118+deb13-amd64\n"));
    assert!(apt.files["pkgnames-linux-image-.txt"].contains("linux-image-7.2.12+deb13-amd64\n"));
    assert_eq!(ok(&apt, Pins::default()).kernel_abi, "7.3.4+deb13-amd64");
}

#[test]
fn a_new_backports_kernel_is_followed() {
    // The next ABI lands: image, headers and the metapackage move together.
    let apt = today()
        .with_line("pkgnames-linux-image-.txt", "linux-image-7.4.1+deb13-amd64")
        .with_line("pkgnames-linux-headers-.txt", "linux-headers-7.4.1+deb13-amd64")
        .with_line(
            "madison-linux-image-abis.txt",
            "linux-image-7.4.1+deb13-amd64 | 7.4.1-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages",
        )
        .edit("madison-linux-image-amd64.txt", |t| t.replace("7.3.4-1~bpo13+1", "7.4.1-1~bpo13+1"))
        .edit("show-linux-image-amd64.txt", |t| t.replace("7.3.4", "7.4.1"));
    let r = ok(&apt, Pins::default());
    assert_eq!(r.kernel_abi, "7.4.1+deb13-amd64");
    assert_eq!(r.kernel.version.text, "7.4.1-1~bpo13+1");
}

#[test]
fn cloud_and_rt_flavours_never_qualify() {
    // Only cloud/rt images of 7.3.4 left (the generic one vanished): the newest generic
    // 7.x with headers, 7.2.12, is taken, not 7.3.4-cloud.
    let apt = today()
        .without("pkgnames-linux-image-.txt", "linux-image-7.3.4+deb13-amd64")
        .without(
            "madison-linux-image-abis.txt",
            "linux-image-7.3.4+deb13-amd64 ",
        );
    let r = ok(&apt, Pins::default());
    assert_eq!(r.kernel_abi, "7.2.12+deb13-amd64");
    assert!(!r.kernel_abi.contains("cloud") && !r.kernel_abi.contains("rt"));
}

#[test]
fn an_image_without_headers_is_skipped() {
    // 7.0.13 has an image and no headers today; pinning it must fail, not half-install.
    let e = err(
        &today(),
        Pins {
            kernel_abi: Some("7.0.13+deb13-amd64".into()),
            ..Pins::default()
        },
    );
    let ResolveError::KernelPinUnavailable { offered, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(offered.contains(&"7.3.4+deb13-amd64".to_string()));
    assert!(!offered.contains(&"7.0.13+deb13-amd64".to_string()));
}

#[test]
fn a_vanished_kernel_pin_lists_the_abis() {
    let e = err(
        &today(),
        Pins {
            kernel_abi: Some("7.3.3+deb13-amd64".into()),
            ..Pins::default()
        },
    );
    let msg = e.to_string();
    assert!(msg.contains("P2PLAB_KERNEL_ABI=7.3.3+deb13-amd64"), "{msg}");
    assert!(
        msg.contains("7.3.4+deb13-amd64, 7.2.12+deb13-amd64"),
        "newest first: {msg}"
    );
}

#[test]
fn a_kernel_pin_that_is_offered_is_taken() {
    let r = ok(
        &today(),
        Pins {
            kernel_abi: Some("7.2.12+deb13-amd64".into()),
            ..Pins::default()
        },
    );
    assert_eq!(r.kernel.version.text, "7.2.12-1~bpo13+1");
}

#[test]
fn no_seven_at_all_is_a_clear_error() {
    // Backports dropped (e.g. not configured): only 6.12 remains.
    let apt = today()
        .without("madison-linux-image-amd64.txt", "bpo13")
        .edit("pkgnames-linux-image-.txt", |t| {
            t.lines()
                .filter(|l| !l.contains("-7."))
                .map(|l| format!("{l}\n"))
                .collect()
        });
    let e = err(&apt, Pins::default());
    assert!(
        matches!(e, ResolveError::NoKernel { min_major: 7, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("major >= 7") && msg.contains("6.12.118+deb13-amd64"),
        "{msg}"
    );
}

#[test]
fn no_candidate_at_all_is_a_clear_error() {
    let apt = today()
        .edit("madison-qemu-system-x86.txt", |_| String::new())
        .edit("pkgnames-linux-image-.txt", |_| String::new());
    let e = err(&apt, Pins::default());
    assert_eq!(
        e.to_string(),
        "no qemu-system-x86 >= 10.1 (vfio-user-pci) in the configured suites; offered: none"
    );
    let apt = today().edit("pkgnames-linux-image-.txt", |_| String::new());
    assert!(
        matches!(err(&apt, Pins::default()), ResolveError::NoKernel { ref offered, .. } if offered.is_empty())
    );
}
