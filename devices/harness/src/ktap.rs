//! KTAP result lines and kernel splats, read once for the run's verdicts and the summary.
//!
//! A result line is `ok N name`, `not ok N name # why`, or `ok N name # SKIP why`
//! (a case that cannot run here: counted apart, never as passed). A `not ok … # SKIP`
//! stays a failure: a skip never hides one.
//!
//! A **splat** is a kernel report that a case must fail on (the kernel is what is under
//! test): WARN, BUG, Oops, KASAN/UBSAN, lockdep, refcount, list corruption, DMA-API and
//! debug-objects reports, hung tasks, panics.

use serde::Serialize;

/// A case's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "ok")]
    Pass,
    #[serde(rename = "not ok")]
    Fail,
    #[serde(rename = "skip")]
    Skip,
}

impl Verdict {
    /// What `result.json` and `summary.json` say.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "ok",
            Verdict::Fail => "not ok",
            Verdict::Skip => "skip",
        }
    }

    /// Parses [`Verdict::as_str`]'s words (anything else is a failure).
    pub fn from_word(s: &str) -> Verdict {
        match s {
            "ok" => Verdict::Pass,
            "skip" => Verdict::Skip,
            _ => Verdict::Fail,
        }
    }
}

/// One top-level result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLine {
    pub verdict: Verdict,
    pub number: usize,
    pub name: String,
    /// After ` # ` (for a skip: the reason, without `SKIP`).
    pub message: String,
}

/// Parses one line (leading blanks allowed); `None` for anything but a result line.
pub fn parse_line(l: &str) -> Option<ResultLine> {
    let t = l.trim_start();
    let (ok, rest) = if let Some(r) = t.strip_prefix("ok ") {
        (true, r)
    } else {
        (false, t.strip_prefix("not ok ")?)
    };
    let (head, msg) = match rest.split_once(" # ") {
        Some((h, m)) => (h, m.trim()),
        None => (rest, ""),
    };
    let head = head.trim();
    let (n, name) = head.split_once(' ').unwrap_or((head, ""));
    let number = n.parse().ok()?;
    let skip = msg.get(..4).is_some_and(|w| w.eq_ignore_ascii_case("SKIP"));
    let (verdict, message) = match (ok, skip) {
        (true, true) => (Verdict::Skip, msg[4..].trim_start_matches([':', ' '])),
        (true, false) => (Verdict::Pass, msg),
        (false, _) => (Verdict::Fail, msg),
    };
    Some(ResultLine {
        verdict,
        number,
        name: name.trim().to_string(),
        message: message.to_string(),
    })
}

/// Every result line of a KTAP document.
pub fn parse(text: &str) -> Vec<ResultLine> {
    text.lines().filter_map(parse_line).collect()
}

/// A result line with the diagnostics (`# …` and other non-result lines) the document
/// printed since the previous result line: KTAP puts a test's diagnostics before its
/// result (here also the harness's `# host assertion: …` lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutput {
    pub result: ResultLine,
    pub diagnostics: Vec<String>,
}

/// Every result line of a KTAP document, each with its diagnostics. The header
/// (`KTAP version`, the `1..N` plan) belongs to no case; trailing lines after the last
/// result are dropped.
pub fn parse_with_output(text: &str) -> Vec<CaseOutput> {
    let mut cases = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    for l in text.lines() {
        if let Some(result) = parse_line(l) {
            cases.push(CaseOutput {
                result,
                diagnostics: std::mem::take(&mut pending),
            });
        } else {
            let t = l.trim();
            if !(t.is_empty() || t.starts_with("KTAP version") || is_plan(t)) {
                pending.push(l.to_string());
            }
        }
    }
    cases
}

/// A `1..N` plan line.
fn is_plan(l: &str) -> bool {
    l.strip_prefix("1..")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The closing line every runner's reader knows: `N passed, N failed, N skipped`.
pub fn closing_line(verdicts: impl IntoIterator<Item = Verdict>) -> String {
    let (mut p, mut f, mut s) = (0, 0, 0);
    for v in verdicts {
        match v {
            Verdict::Pass => p += 1,
            Verdict::Fail => f += 1,
            Verdict::Skip => s += 1,
        }
    }
    format!("{p} passed, {f} failed, {s} skipped")
}

/// Starts of kernel reports that fail a case, as printk writes them (after the time stamp).
const SPLAT_STARTS: &[&str] = &[
    "WARNING: ",
    "BUG: ",
    "kernel BUG at ",
    "Oops: ",
    "Oops#",
    "general protection fault",
    "UBSAN: ",
    "KASAN: ",
    "refcount_t: ",
    "list_add corruption",
    "list_del corruption",
    "DMA-API: ",
    "ODEBUG: ",
    "Kernel panic",
    "INFO: possible ",
    "INFO: trying to register non-static key",
    "INFO: rcu_sched detected stalls",
    "rcu: INFO: rcu_preempt detected stalls",
];

/// The kernel message of a console line: the text after a `[ 12.345678] ` stamp.
/// `None` for lines without one (the guest runner's own output never has one).
fn kernel_message(l: &str) -> Option<&str> {
    let t = l.trim_start();
    let rest = t.strip_prefix('[')?;
    let (stamp, msg) = rest.split_once(']')?;
    let stamp = stamp.trim();
    (!stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| msg.trim_start())
}

/// The report a console line starts, if it starts one: the message without the stamp.
pub fn splat(l: &str) -> Option<&str> {
    let msg = kernel_message(l)?;
    let starts = SPLAT_STARTS.iter().any(|s| msg.starts_with(s))
        || (msg.starts_with("INFO: task ") && msg.contains(" blocked for more than "));
    starts.then_some(msg)
}

/// Is this console line a kernel message (part of a report's body)?
pub fn is_kernel_line(l: &str) -> bool {
    kernel_message(l).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        let r = parse("KTAP version 1\n1..4\n# diag\nok 1 a\nnot ok 2 b # counter x: expected >= 1, seen 0\nok 3 c # SKIP needs a kernel with the series\nnot ok 4 d # SKIP but failed\n");
        let got: Vec<_> = r
            .iter()
            .map(|l| (l.verdict, l.number, l.name.as_str(), l.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Verdict::Pass, 1, "a", ""),
                (Verdict::Fail, 2, "b", "counter x: expected >= 1, seen 0"),
                (Verdict::Skip, 3, "c", "needs a kernel with the series"),
                (Verdict::Fail, 4, "d", "SKIP but failed"),
            ]
        );
        assert_eq!(
            closing_line(r.iter().map(|l| l.verdict)),
            "1 passed, 2 failed, 1 skipped"
        );
        assert!(parse_line("okay 1 x").is_none());
        assert!(parse_line("# ok 1 x").is_none());
        assert!(parse_line("ok x y").is_none());
    }

    #[test]
    fn diagnostics_belong_to_the_next_result() {
        let c = parse_with_output(
            "KTAP version 1\n1..3\n# device nvme0\n# a: 0.1 s\nok 1 a\nok 2 b # SKIP no GPU\n# host assertion: x moved 0\nnot ok 3 c # host assertions: x moved 0\n# trailing\n",
        );
        let got: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.result.name.as_str(),
                    c.result.verdict,
                    c.diagnostics.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "a",
                    Verdict::Pass,
                    vec!["# device nvme0".into(), "# a: 0.1 s".into()]
                ),
                ("b", Verdict::Skip, vec![]),
                (
                    "c",
                    Verdict::Fail,
                    vec!["# host assertion: x moved 0".to_string()]
                ),
            ]
        );
        assert!(parse_with_output("KTAP version 1\n1..0\n").is_empty());
    }

    #[test]
    fn splats_are_kernel_reports_only() {
        for l in [
            "[   12.345678] WARNING: CPU: 1 PID: 77 at drivers/pci/p2pdma.c:1012 pci_p2pdma_map_type+0x1/0x2",
            "[    3.000001] BUG: KASAN: slab-use-after-free in nvme_pci_complete_rq+0x1c/0x90",
            "[    3.000001] BUG: unable to handle page fault for address: ffffc90000000000",
            "[    3.1] kernel BUG at mm/page_alloc.c:100!",
            "[    3.1] Oops: general protection fault, probably for non-canonical address",
            "[    3.1] WARNING: possible circular locking dependency detected",
            "[    3.1] refcount_t: underflow; use-after-free.",
            "[    3.1] DMA-API: nvme 0000:03:00.0: device driver frees DMA memory with wrong function",
            "[  120.5] INFO: task kworker/0:1:33 blocked for more than 120 seconds.",
            "[    3.1] UBSAN: shift-out-of-bounds in drivers/nvme/host/pci.c:1",
        ] {
            assert!(splat(l).is_some(), "{l}");
        }
        for l in [
            "# WARNING: the guest runner's own words are not kernel reports",
            "WARNING: no stamp",
            "[   11.633689] reboot: Power down",
            "[    1.0] nvme nvme0: 2/0/0 default/read/poll queues",
            "[    1.0] INFO: task list follows",
            "ok 1 p2p-read",
        ] {
            assert!(splat(l).is_none(), "{l}");
        }
        assert!(is_kernel_line("[    1.0] Call Trace:"));
        assert!(!is_kernel_line("[not a stamp] x"));
    }
}
