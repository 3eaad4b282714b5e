//! Choosing what the toolroot installs, from what the archive offers today.
//!
//! Policy (README "Toolroot"): the newest `qemu-system-x86` whose upstream version is at
//! least [`Policy::min_qemu`] (vfio-user-pci arrived in QEMU 10.1), from any configured
//! suite; the kernel ABI that the newest `linux-image-amd64` metapackage of
//! [`Policy::kernel_suite`] depends on — or, if that one has no headers, the newest
//! `linux-image-<abi>-amd64` with matching `linux-headers-<abi>` — of major version at
//! least [`Policy::min_kernel_major`]. The cloud and rt flavours never qualify. A pin
//! (`P2PLAB_QEMU_VERSION`, `P2PLAB_KERNEL_ABI`) replaces the choice and must be offered
//! exactly; when it is not, the error lists what is.

use std::fmt;

use crate::apt::{amd64_abi, parse_depends, parse_madison, parse_names, Offer};
use crate::debver::{leading_numbers, DebVersion};

/// The apt queries the resolver makes (run in the toolroot, or replayed in tests).
pub trait AptCache {
    /// `apt-cache madison PKG`.
    fn madison(&self, pkg: &str) -> Result<String, String>;
    /// `apt-cache show PKG=VERSION`.
    fn show(&self, pkg: &str, version: &str) -> Result<String, String>;
    /// `apt-cache pkgnames PREFIX`.
    fn pkgnames(&self, prefix: &str) -> Result<String, String>;
}

/// What qualifies.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Lowest upstream QEMU (major, minor).
    pub min_qemu: (u64, u64),
    /// Lowest kernel major version.
    pub min_kernel_major: u64,
    /// Where the kernel metapackage is read.
    pub kernel_suite: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_qemu: (10, 1),
            min_kernel_major: 7,
            kernel_suite: "trixie-backports".into(),
        }
    }
}

/// Exact choices that replace the policy (for reproducing an old run).
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// A Debian version of `qemu-system-x86` (`1:11.1.3+ds-2~bpo13+1`), or an upstream
    /// version (`11.1.3`: its newest revision).
    pub qemu: Option<String>,
    /// A kernel ABI (`7.3.4+deb13-amd64`).
    pub kernel_abi: Option<String>,
}

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub qemu: Offer,
    /// `7.3.4+deb13-amd64`: `linux-image-` and `linux-headers-` plus this.
    pub kernel_abi: String,
    /// The image package's offer (its version and suite).
    pub kernel: Offer,
}

impl Resolved {
    /// The upstream QEMU version (`11.1.3`).
    pub fn qemu_upstream(&self) -> String {
        self.qemu
            .version
            .numeric_prefix()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// `KEY='value'` lines for a POSIX shell's `eval`.
    pub fn to_shell(&self) -> String {
        let kv = [
            ("QEMU_PACKAGE", self.qemu.version.text.clone()),
            ("QEMU_SUITE", self.qemu.suite.clone()),
            ("QEMU_UPSTREAM", self.qemu_upstream()),
            ("KERNEL_ABI", self.kernel_abi.clone()),
            ("KERNEL_PACKAGE", self.kernel.version.text.clone()),
            ("KERNEL_SUITE", self.kernel.suite.clone()),
        ];
        kv.iter()
            .map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', "'\\''")))
            .collect()
    }
}

/// Why nothing could be chosen. Each message says what was offered and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// An apt query failed.
    Apt { query: String, error: String },
    /// No `qemu-system-x86` is new enough.
    NoQemu {
        min: (u64, u64),
        offered: Vec<String>,
    },
    /// The QEMU pin is not offered.
    QemuPinUnavailable { pin: String, offered: Vec<String> },
    /// No kernel ABI qualifies.
    NoKernel {
        min_major: u64,
        offered: Vec<String>,
    },
    /// The kernel pin is not offered (with headers).
    KernelPinUnavailable { pin: String, offered: Vec<String> },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Apt { query, error } => write!(f, "`{query}` failed: {error}"),
            ResolveError::NoQemu { min, offered } => write!(
                f,
                "no qemu-system-x86 >= {}.{} (vfio-user-pci) in the configured suites; offered: {}",
                min.0,
                min.1,
                list(offered)
            ),
            ResolveError::QemuPinUnavailable { pin, offered } => write!(
                f,
                "P2PLAB_QEMU_VERSION={pin} is not offered; available qemu-system-x86 versions: {} \
                 (unset P2PLAB_QEMU_VERSION to take the newest)",
                list(offered)
            ),
            ResolveError::NoKernel { min_major, offered } => write!(
                f,
                "no linux-image-<abi>-amd64 of major >= {min_major} with matching linux-headers; \
                 amd64 kernel ABIs offered with headers: {}",
                list(offered)
            ),
            ResolveError::KernelPinUnavailable { pin, offered } => write!(
                f,
                "P2PLAB_KERNEL_ABI={pin} is not offered (image and headers); available ABIs: {} \
                 (unset P2PLAB_KERNEL_ABI to take the current one)",
                list(offered)
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

fn query<T>(q: String, r: Result<T, String>) -> Result<T, ResolveError> {
    r.map_err(|error| ResolveError::Apt { query: q, error })
}

/// Chooses QEMU and the kernel.
pub fn resolve(apt: &dyn AptCache, policy: &Policy, pins: &Pins) -> Result<Resolved, ResolveError> {
    let qemu = resolve_qemu(apt, policy, pins.qemu.as_deref())?;
    let (kernel_abi, kernel) = resolve_kernel(apt, policy, pins.kernel_abi.as_deref())?;
    Ok(Resolved {
        qemu,
        kernel_abi,
        kernel,
    })
}

/// Newest first, one row per version (madison lists a version once per suite).
fn newest_first(mut offers: Vec<Offer>) -> Vec<Offer> {
    offers.sort_by(|a, b| b.version.cmp(&a.version));
    offers.dedup_by(|a, b| a.version == b.version);
    offers
}

fn resolve_qemu(
    apt: &dyn AptCache,
    policy: &Policy,
    pin: Option<&str>,
) -> Result<Offer, ResolveError> {
    const PKG: &str = "qemu-system-x86";
    let offers = newest_first(parse_madison(&query(
        format!("apt-cache madison {PKG}"),
        apt.madison(PKG),
    )?));
    let offered = || {
        offers
            .iter()
            .map(|o| format!("{} ({})", o.version, o.suite))
            .collect()
    };
    if let Some(pin) = pin {
        let pin = pin.trim();
        // An exact Debian version, or an upstream version (its newest revision).
        return offers
            .iter()
            .find(|o| o.version.text == pin)
            .or_else(|| {
                offers
                    .iter()
                    .find(|o| upstream_without_suffix(&o.version) == pin)
            })
            .cloned()
            .ok_or_else(|| ResolveError::QemuPinUnavailable {
                pin: pin.into(),
                offered: offered(),
            });
    }
    let (maj, min) = policy.min_qemu;
    offers
        .iter()
        .find(|o| {
            let n = o.version.numeric_prefix();
            let v = (
                n.first().copied().unwrap_or(0),
                n.get(1).copied().unwrap_or(0),
            );
            v >= (maj, min)
        })
        .cloned()
        .ok_or_else(|| ResolveError::NoQemu {
            min: policy.min_qemu,
            offered: offered(),
        })
}

/// `11.1.3+ds` → `11.1.3`.
fn upstream_without_suffix(v: &DebVersion) -> &str {
    v.upstream
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or("")
}

fn abi_version(abi: &str) -> Option<DebVersion> {
    DebVersion::parse(abi.split('-').next()?)
}

fn resolve_kernel(
    apt: &dyn AptCache,
    policy: &Policy,
    pin: Option<&str>,
) -> Result<(String, Offer), ResolveError> {
    let names = |prefix: &str| -> Result<Vec<String>, ResolveError> {
        Ok(parse_names(&query(
            format!("apt-cache pkgnames {prefix}"),
            apt.pkgnames(prefix),
        )?))
    };
    let headers: Vec<String> = names("linux-headers-")?
        .iter()
        .filter_map(|n| amd64_abi(n, "linux-headers-").map(str::to_string))
        .collect();
    // ABIs with an image and headers, newest first.
    let mut abis: Vec<String> = names("linux-image-")?
        .iter()
        .filter_map(|n| amd64_abi(n, "linux-image-"))
        .filter(|abi| headers.iter().any(|h| h == abi))
        .map(str::to_string)
        .collect();
    abis.sort_by_key(|a| std::cmp::Reverse(abi_version(a)));
    abis.dedup();
    // The image package as offered (a name can linger in the cache with no offer).
    let image_offer = |abi: &str| -> Result<Option<Offer>, ResolveError> {
        let pkg = format!("linux-image-{abi}");
        Ok(newest_first(parse_madison(&query(
            format!("apt-cache madison {pkg}"),
            apt.madison(&pkg),
        )?))
        .into_iter()
        .next())
    };

    if let Some(pin) = pin {
        let pin = pin.trim();
        if abis.iter().any(|a| a == pin) {
            if let Some(o) = image_offer(pin)? {
                return Ok((pin.to_string(), o));
            }
        }
        return Err(ResolveError::KernelPinUnavailable {
            pin: pin.into(),
            offered: abis,
        });
    }

    let major_ok = |abi: &str| {
        leading_numbers(abi)
            .first()
            .is_some_and(|&m| m >= policy.min_kernel_major)
    };
    // The metapackage's choice first.
    const META: &str = "linux-image-amd64";
    let meta = newest_first(parse_madison(&query(
        format!("apt-cache madison {META}"),
        apt.madison(META),
    )?))
    .into_iter()
    .find(|o| o.suite == policy.kernel_suite);
    let mut order: Vec<String> = vec![];
    if let Some(m) = meta {
        let show = query(
            format!("apt-cache show {META}={}", m.version),
            apt.show(META, &m.version.text),
        )?;
        order.extend(
            parse_depends(&show)
                .iter()
                .filter_map(|d| amd64_abi(d, "linux-image-"))
                .filter(|abi| abis.iter().any(|a| a == abi))
                .map(str::to_string),
        );
    }
    order.extend(abis.iter().cloned());
    for abi in order.iter().filter(|a| major_ok(a)) {
        if let Some(o) = image_offer(abi)? {
            return Ok((abi.clone(), o));
        }
    }
    Err(ResolveError::NoKernel {
        min_major: policy.min_kernel_major,
        offered: abis,
    })
}
