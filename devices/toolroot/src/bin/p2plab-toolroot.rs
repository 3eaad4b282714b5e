//! `p2plab-toolroot`: the resolver and config checks `scripts/setup` calls.
//!
//! ```text
//! p2plab-toolroot resolve ROOT     KEY='value' lines (sh) for what to install today
//! p2plab-toolroot kconfig FILE     exit 1 naming the lab's required options FILE lacks
//! ```
//! `resolve` runs `apt-cache` inside ROOT (chroot: needs root) and honours the pins
//! `P2PLAB_QEMU_VERSION` and `P2PLAB_KERNEL_ABI`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use p2plab_toolroot::kconfig::{missing_builtin, LAB_REQUIRED};
use p2plab_toolroot::{resolve, AptCache, Pins, Policy};

/// `apt-cache` run in the toolroot by chroot.
struct Chroot(PathBuf);

impl Chroot {
    fn apt_cache(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("chroot")
            .arg(&self.0)
            .arg("apt-cache")
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| format!("cannot run chroot: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl AptCache for Chroot {
    fn madison(&self, pkg: &str) -> Result<String, String> {
        self.apt_cache(&["madison", pkg])
    }
    fn show(&self, pkg: &str, version: &str) -> Result<String, String> {
        self.apt_cache(&["show", &format!("{pkg}={version}")])
    }
    fn pkgnames(&self, prefix: &str) -> Result<String, String> {
        self.apt_cache(&["pkgnames", prefix])
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: p2plab-toolroot resolve ROOT | kconfig FILE");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["resolve", root] => {
            let pin = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
            let pins = Pins {
                qemu: pin("P2PLAB_QEMU_VERSION"),
                kernel_abi: pin("P2PLAB_KERNEL_ABI"),
            };
            match resolve(&Chroot(root.into()), &Policy::default(), &pins) {
                Ok(r) => {
                    print!("{}", r.to_shell());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["kconfig", file] => {
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{file}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let missing = missing_builtin(&text, LAB_REQUIRED);
            if missing.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("{file} lacks (needs =y): {}", missing.join(" "));
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}
