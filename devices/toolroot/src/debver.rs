//! Debian package version ordering (Debian Policy §5.6.12, what `dpkg --compare-versions`
//! implements): `[epoch:]upstream[-revision]`, compared epoch first (numerically), then
//! upstream and revision with the "non-digits, then digits" rule where `~` sorts before
//! everything, even the end of the string.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version, e.g. `1:11.1.3+ds-2~bpo13+1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion {
    /// The whole string as the archive spells it.
    pub text: String,
    /// Epoch (0 when absent).
    pub epoch: u64,
    /// Upstream part: between the epoch's `:` and the last `-`.
    pub upstream: String,
    /// Debian revision: after the last `-` (empty for native packages).
    pub revision: String,
}

impl DebVersion {
    /// Parses `text`; `None` for an empty upstream part or a non-numeric epoch.
    pub fn parse(text: &str) -> Option<DebVersion> {
        let text = text.trim();
        let (epoch, rest) = match text.split_once(':') {
            Some((e, r)) => (e.parse().ok()?, r),
            None => (0, text),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() || !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        Some(DebVersion {
            text: text.to_string(),
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
        })
    }

    /// The leading numeric components of the upstream part: `11.1.3+ds` → `[11, 1, 3]`.
    pub fn numeric_prefix(&self) -> Vec<u64> {
        leading_numbers(&self.upstream)
    }
}

/// `7.3.4+deb13-amd64` → `[7, 3, 4]`: dot-separated numbers up to the first other byte.
pub fn leading_numbers(s: &str) -> Vec<u64> {
    let mut out = vec![];
    for part in s.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse() {
            Ok(n) => out.push(n),
            Err(_) => break,
        }
        if digits.len() != part.len() {
            break;
        }
    }
    out
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(&self.upstream, &other.upstream))
            .then_with(|| verrevcmp(&self.revision, &other.revision))
    }
}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Weight of one non-digit byte: `~` first, then the end of the part, letters, others.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's comparison of one upstream or revision part.
pub fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Digit run, compared as numbers (leading zeros ignored).
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn lt(a: &str, b: &str) {
        let (va, vb) = (DebVersion::parse(a).unwrap(), DebVersion::parse(b).unwrap());
        assert_eq!(va.cmp(&vb), Ordering::Less, "{a} < {b}");
        assert_eq!(vb.cmp(&va), Ordering::Greater, "{b} > {a}");
    }

    #[test]
    fn debian_revisions_order_as_dpkg_does() {
        lt("1:11.1.3+ds-1~bpo13+1", "1:11.1.3+ds-2~bpo13+1");
        lt("1:11.1.3+ds-2~bpo13+1", "1:11.1.3+ds-2");
        lt("1:10.0.13+ds-0+deb13u1", "1:11.1.3+ds-2~bpo13+1");
        lt("1:10.0.2+ds-2+deb13u1", "1:10.0.13+ds-0+deb13u1");
        lt("11.9", "1:10.0");
        lt("1.0~rc1", "1.0");
        lt("1.0", "1.0a");
        lt("1.0a", "1.0+");
        lt("7.2.12", "7.3.4");
        lt("7.9.1", "7.10.0");
    }

    #[test]
    fn equal_ignores_leading_zeros() {
        let a = DebVersion::parse("1.02-1").unwrap();
        let b = DebVersion::parse("1.2-1").unwrap();
        assert_eq!(a.cmp(&b), Ordering::Equal);
    }

    #[test]
    fn parts() {
        let v = DebVersion::parse("1:11.1.3+ds-2~bpo13+1").unwrap();
        assert_eq!(
            (v.epoch, &*v.upstream, &*v.revision),
            (1, "11.1.3+ds", "2~bpo13+1")
        );
        assert_eq!(v.numeric_prefix(), [11, 1, 3]);
        assert_eq!(leading_numbers("7.3.4+deb13-amd64"), [7, 3, 4]);
        assert!(DebVersion::parse("x:1").is_none());
        assert!(DebVersion::parse("").is_none());
    }
}
