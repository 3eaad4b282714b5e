//! `p2plab suite` and `p2plab summary` as `scripts/test` calls them: a shard's rows,
//! a run's tally, a shard's summary (closing line, summary.json, junit.xml, exit status)
//! and shards merged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn p2plab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2plab"))
        .args(args)
        .output()
        .expect("running p2plab")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A directory of this test's own.
fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2plab-suite-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn shards_split_the_suite_and_every_machine_agrees() {
    let mut all: Vec<String> = vec![];
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let mut args = vec!["suite", "plan", "--shard", &shard];
        args.extend(SUITE);
        let o = p2plab(&args);
        assert!(o.status.success(), "{o:?}");
        let rows: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
        // The same call gives the same rows.
        assert_eq!(stdout(&p2plab(&args)), stdout(&o));
        if i == 1 {
            assert_eq!(rows[..5], SUITE[..5], "host rows on shard 1");
        }
        all.extend(rows);
    }
    all.sort();
    let mut want: Vec<String> = SUITE.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(all, want);

    let o = p2plab(&["suite", "plan", "--shard", "3/2", "switch"]);
    assert_eq!(o.status.code(), Some(2), "a bad --shard is a usage error");
    let o = p2plab(&["suite", "plan", "switch", "switch"]);
    assert_eq!(o.status.code(), Some(1), "a row twice is refused");
}

#[test]
fn tally_summary_and_merge() {
    let d = test_dir("summary");
    let (a, b) = (d.join("a"), d.join("b"));
    write(
        &a.join("switch/results.ktap"),
        "KTAP version 1\n1..2\nok 1 p2p-read\n# host assertion: peer bytes 0\nnot ok 2 p2p-write # host assertions: peer bytes 0\n",
    );
    write(
        &b.join("two-gpu/results.ktap"),
        "KTAP version 1\n1..1\nok 1 uring-dmabuf-read # SKIP needs the series\n",
    );
    // A stale run of an earlier suite in the same directory: not counted.
    write(&a.join("two-nvme/results.ktap"), "not ok 1 stale\n");

    let o = p2plab(&["suite", "tally", a.join("switch").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "1 passed, 1 failed, 0 skipped\n    not ok 2 p2p-write # host assertions: peer bytes 0\n"
    );
    let o = p2plab(&["suite", "tally", d.join("nothing").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));

    let o = p2plab(&[
        "summary",
        a.to_str().unwrap(),
        "--host-row",
        "cargo-test:ok:59.5",
        "--topology",
        "switch",
        "--row-seconds",
        "switch:83.2",
        "--wall-seconds",
        "150",
        "--jobs",
        "2",
        "--shard",
        "1/2",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).ends_with("2 passed, 1 failed, 0 skipped\n"),
        "{}",
        stdout(&o)
    );
    assert!(a.join("junit.xml").is_file());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["closing"], "2 passed, 1 failed, 0 skipped");
    assert_eq!(s["rows"][1]["seconds"], 83.2);
    assert_eq!(s["suite"]["shard"], "1/2");
    let cases: Vec<&str> = s["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases, ["cargo-test", "p2p-read", "p2p-write"]);

    let o = p2plab(&["summary", b.to_str().unwrap(), "--topology", "two-gpu"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("0 passed, 0 failed, 1 skipped\n"));

    let all = d.join("all");
    let o = p2plab(&[
        "suite",
        "merge",
        all.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).ends_with("2 passed, 1 failed, 1 skipped\n"),
        "{}",
        stdout(&o)
    );
    let xml = std::fs::read_to_string(all.join("junit.xml")).unwrap();
    assert!(
        xml.contains(r#"<testsuites name="p2plab" tests="4" failures="1" errors="0" skipped="1""#),
        "{xml}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}
