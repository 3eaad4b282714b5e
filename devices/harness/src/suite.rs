//! `p2plab suite`: what `scripts/test` asks of Rust besides the closing summary —
//! which rows a CI shard runs (`plan`) and a finished guest row's tally (`tally`).
//! Merging shards' results is [`crate::summary::merge_main`].
//!
//! # Rows and shards
//! The suite is a list of rows: the host rows ([`HOST_ROWS`]: `setup-check`, `rustfmt`,
//! `clippy`, `cargo-doc`, `cargo-test`), one row per topology (a guest boot) and
//! `harness-splat` (a guest boot testing the harness). `--shard I/N` splits them over N
//! machines deterministically — the split depends only on the row list, never on the
//! machine or on time:
//! - the host rows all run on shard 1 (they share one cargo build; splitting them would
//!   compile the workspace on every machine);
//! - every other row goes, longest first ([`weight`]: typical seconds on 2 shared cores),
//!   to the shard with the least weight so far (shard 1 starts with its host rows'
//!   weight), ties to the lower shard.
//!
//! Each shard prints and exits on its own rows only; their `summary.json` files merge
//! with `p2plab suite merge`.

use crate::ktap::{self, Verdict};
use anyhow::{bail, Context};
use std::path::Path;
use std::str::FromStr;

/// Rows that run on the host, not in a guest: all on shard 1.
pub const HOST_ROWS: &[&str] = &[
    "setup-check",
    "rustfmt",
    "clippy",
    "cargo-doc",
    "cargo-test",
];

/// Typical seconds of a row at `--jobs 1` on 2 cores (the host rows compiling after a
/// change; the guest rows from a suite run of 2026-12-02): what shards balance. A
/// topology not listed weighs [`DEFAULT_WEIGHT`].
const WEIGHTS: &[(&str, u32)] = &[
    ("setup-check", 4),
    ("rustfmt", 1),
    ("clippy", 40),
    ("cargo-doc", 16),
    ("cargo-test", 70),
    ("switch", 54),
    ("root-ports", 42),
    ("two-nvme", 39),
    ("two-gpu", 34),
    ("epyc-root-ports", 32),
    ("qemu-nvme-reference", 13),
    ("qemu-nvme-root-ports", 10),
    ("harness-splat", 8),
    ("soak", 32),
];

/// The weight of a row nobody measured (a new topology): about an average boot.
pub const DEFAULT_WEIGHT: u32 = 40;

/// A row's weight for [`plan`].
pub fn weight(row: &str) -> u32 {
    WEIGHTS
        .iter()
        .find(|(r, _)| *r == row)
        .map_or(DEFAULT_WEIGHT, |(_, w)| *w)
}

/// `I/N`: this machine runs shard I (1-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 1, count: 1 };
}

impl FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Shard> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("shard '{s}': want I/N, e.g. 2/3"))?;
        let (index, count): (usize, usize) = (
            i.trim().parse().with_context(|| format!("shard '{s}'"))?,
            n.trim().parse().with_context(|| format!("shard '{s}'"))?,
        );
        if count == 0 || index == 0 || index > count {
            bail!("shard '{s}': want 1 <= I <= N");
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which shard (0-based) each row goes to; rows keep their order within a shard.
pub fn assign(rows: &[&str], count: usize) -> anyhow::Result<Vec<usize>> {
    if count == 0 {
        bail!("no shards");
    }
    for (i, r) in rows.iter().enumerate() {
        if rows[..i].contains(r) {
            bail!("row '{r}' listed twice");
        }
    }
    let mut load = vec![0u64; count];
    let mut shard = vec![0usize; rows.len()];
    let mut guest: Vec<usize> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if HOST_ROWS.contains(r) {
            load[0] += u64::from(weight(r));
        } else {
            guest.push(i);
        }
    }
    // Longest first, then by position: a stable order every machine computes alike.
    guest.sort_by_key(|&i| (std::cmp::Reverse(weight(rows[i])), i));
    for i in guest {
        let (least, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(s, l)| (*l, s))
            .expect("count > 0");
        shard[i] = least;
        load[least] += u64::from(weight(rows[i]));
    }
    Ok(shard)
}

/// The rows `shard` runs, in their given order.
pub fn plan<'a>(rows: &[&'a str], shard: Shard) -> anyhow::Result<Vec<&'a str>> {
    let to = assign(rows, shard.count)?;
    Ok(rows
        .iter()
        .zip(to)
        .filter(|&(_, s)| s + 1 == shard.index)
        .map(|(r, _)| *r)
        .collect())
}

/// `p2plab suite plan --shard I/N ROW...`: this shard's rows, one a line.
pub fn plan_main(rows: &[String], shard: Shard) -> anyhow::Result<i32> {
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    for r in plan(&rows, shard)? {
        println!("{r}");
    }
    Ok(0)
}

/// A finished run's line: `N passed, N failed, N skipped`, then its `not ok` lines.
/// `None` when the run wrote no results (it did not start, or died before its end).
pub fn tally(ktap_text: &str) -> Option<(String, Vec<String>, bool)> {
    let cases = ktap::parse(ktap_text);
    if cases.is_empty() {
        return None;
    }
    let failed: Vec<String> = ktap_text
        .lines()
        .filter(|l| ktap::parse_line(l).is_some_and(|r| r.verdict == Verdict::Fail))
        .map(|l| l.trim().to_string())
        .collect();
    let ok = failed.is_empty();
    Some((
        ktap::closing_line(cases.iter().map(|c| c.verdict)),
        failed,
        ok,
    ))
}

/// `p2plab suite tally RUN_DIR`: [`tally`] of `RUN_DIR/results.ktap`; exit 1 unless every
/// case passed or skipped.
pub fn tally_main(run_dir: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(run_dir.join("results.ktap")).unwrap_or_default();
    let Some((line, failed, ok)) = tally(&text) else {
        println!("no results.ktap results: the run did not start or did not finish");
        return Ok(1);
    };
    println!("{line}");
    for f in failed {
        println!("    {f}");
    }
    Ok(i32::from(!ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: [&str; 13] = [
        "setup-check",
        "rustfmt",
        "clippy",
        "cargo-doc",
        "cargo-test",
        "switch",
        "two-nvme",
        "two-gpu",
        "root-ports",
        "epyc-root-ports",
        "qemu-nvme-reference",
        "qemu-nvme-root-ports",
        "harness-splat",
    ];

    #[test]
    fn shard_syntax() {
        assert_eq!(
            "2/3".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 3 }
        );
        for bad in ["0/2", "3/2", "1/0", "1", "a/2", "1/b", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard::ALL.to_string(), "1/1");
    }

    #[test]
    fn one_shard_runs_everything_in_order() {
        assert_eq!(plan(&SUITE, Shard::ALL).unwrap(), SUITE);
    }

    #[test]
    fn shards_partition_the_rows() {
        for n in 1..=6 {
            let mut seen: Vec<&str> = vec![];
            for i in 1..=n {
                let part = plan(&SUITE, Shard { index: i, count: n }).unwrap();
                // Order within a shard is the suite's order.
                let pos: Vec<usize> = part
                    .iter()
                    .map(|r| SUITE.iter().position(|s| s == r).unwrap())
                    .collect();
                assert!(pos.windows(2).all(|w| w[0] < w[1]), "{n}: {part:?}");
                seen.extend(part);
            }
            seen.sort_unstable();
            let mut all = SUITE.to_vec();
            all.sort_unstable();
            assert_eq!(seen, all, "{n} shards");
        }
    }

    #[test]
    fn host_rows_stay_on_shard_one_and_boots_balance() {
        let two: Vec<Vec<&str>> = (1..=2)
            .map(|i| plan(&SUITE, Shard { index: i, count: 2 }).unwrap())
            .collect();
        for h in HOST_ROWS {
            assert!(two[0].contains(h), "{h}");
        }
        let load = |rows: &[&str]| rows.iter().map(|r| weight(r)).sum::<u32>();
        // 131 s of host rows and 232 s of boots: 178 against 185.
        let (a, b) = (load(&two[0]), load(&two[1]));
        assert_eq!((a, b), (178, 185), "{two:?}");
        assert_eq!(
            two[1],
            [
                "switch",
                "two-nvme",
                "root-ports",
                "epyc-root-ports",
                "qemu-nvme-root-ports",
                "harness-splat"
            ]
        );
        // Deterministic: the same list always gives the same split.
        assert_eq!(two[1], plan(&SUITE, Shard { index: 2, count: 2 }).unwrap());
    }

    #[test]
    fn more_shards_than_rows_leave_some_empty() {
        let rows = ["clippy", "switch"];
        assert_eq!(
            plan(&rows, Shard { index: 1, count: 3 }).unwrap(),
            ["clippy"]
        );
        assert_eq!(
            plan(&rows, Shard { index: 2, count: 3 }).unwrap(),
            ["switch"]
        );
        assert!(plan(&rows, Shard { index: 3, count: 3 })
            .unwrap()
            .is_empty());
    }

    #[test]
    fn duplicate_rows_are_refused() {
        assert!(assign(&["switch", "switch"], 2).is_err());
    }

    #[test]
    fn tally_counts_and_lists_failures() {
        let (line, failed, ok) =
            tally("KTAP version 1\n1..3\nok 1 a\nnot ok 2 b # why\nok 3 c # SKIP no\n").unwrap();
        assert_eq!(line, "1 passed, 1 failed, 1 skipped");
        assert_eq!(failed, ["not ok 2 b # why"]);
        assert!(!ok);
        assert!(tally("KTAP version 1\n1..2\n").is_none());
        assert!(tally("ok 1 a\nok 2 b # SKIP x\n").unwrap().2);
    }
}
