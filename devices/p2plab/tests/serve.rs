//! `p2plab serve` as a user runs it: the run directory it makes for itself is private
//! and gone after Ctrl-C, SIGTERM or a failed start; `--dir` is kept; a killed lab's
//! stale sockets are replaced by the next one; a live lab's sockets are never taken.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const TOPOLOGY: &str = "\
[[device]]
name = 'nvme0'
kind = 'nvme'
cmb_size = '2M'
namespaces = [{ size = '16M', lba_size = 512 }]

[[device]]
name = 'gpu0'
kind = 'gpu'
vram_size = '2M'
";

const SOCKETS: [&str; 3] = ["nvme0.sock", "gpu0.sock", "control.sock"];

/// A directory of this test's own (its TMPDIR for `serve`, its --dir, its topology).
fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2plab-serve-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tiny.toml"), TOPOLOGY).unwrap();
    d
}

/// A running `p2plab serve` and the run directory it announced.
struct Serve {
    child: Child,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
}

/// Start `p2plab serve` with `TMPDIR=<test>/tmp` and wait until it serves.
fn serve(test: &Path, dir: Option<&Path>) -> Serve {
    let tmp = test.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2plab"));
    cmd.arg("serve")
        .arg("--config")
        .arg(test.join("tiny.toml"))
        .env("TMPDIR", &tmp)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.arg("--dir").arg(d);
    }
    let mut child = cmd.spawn().expect("p2plab runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut served = None;
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve exited before serving: {err}");
        }
        if let Some(rest) = line.trim_end().split_once("' in ") {
            served = Some(PathBuf::from(rest.1));
        }
        if line.trim_start().starts_with("control") {
            break;
        }
    }
    Serve {
        child,
        stdout,
        dir: served.expect("the run directory was announced"),
    }
}

impl Serve {
    /// Send `sig` and wait for the exit; returns (exit code, rest of stdout, stderr).
    fn stop(mut self, sig: i32) -> (Option<i32>, String, String) {
        // SAFETY: kill with a pid of our own child and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop on signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), out, err)
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[track_caller]
fn assert_private_lab(dir: &Path) {
    for s in SOCKETS {
        let p = dir.join(s);
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket(), "{s}");
        assert_eq!(mode(&p), 0o600, "{s}");
    }
}

#[test]
fn without_dir_the_run_directory_is_private_and_removed_on_ctrl_c_and_sigterm() {
    let test = test_dir("scratch");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let s = serve(&test, None);
        let dir = s.dir.clone();
        assert!(
            dir.starts_with(test.join("tmp")),
            "{} under TMPDIR",
            dir.display()
        );
        assert_eq!(mode(&dir), 0o700);
        assert_private_lab(&dir);
        let img = std::fs::metadata(dir.join("nvme0n1.img")).unwrap();
        assert_eq!(img.len(), 16 << 20);
        assert!(img.blocks() * 512 < img.len(), "sparse");
        let (code, out, err) = s.stop(sig);
        assert_eq!(code, Some(0), "signal {sig}: {err}");
        assert!(!dir.exists(), "signal {sig}: {} removed", dir.display());
        assert!(
            out.contains("final counters") && out.contains("\"devices\""),
            "{out}"
        );
        assert!(out.contains(&format!("removed {}", dir.display())), "{out}");
    }
    let left: Vec<_> = std::fs::read_dir(test.join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "nothing left in TMPDIR: {left:?}");
    std::fs::remove_dir_all(&test).unwrap();
}

#[test]
fn without_dir_a_failed_start_leaves_nothing_behind() {
    let test = test_dir("failed");
    // A namespace image that cannot be created: the lab fails after its directory was made.
    let topo = TOPOLOGY.replace(
        "{ size = '16M', lba_size = 512 }",
        "{ size = '16M', lba_size = 512, file = '/proc/p2plab-cannot-create.img' }",
    );
    std::fs::write(test.join("tiny.toml"), topo).unwrap();
    let tmp = test.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_p2plab"))
        .args(["serve", "--config"])
        .arg(test.join("tiny.toml"))
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p2plab-cannot-create.img"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "nothing left in TMPDIR: {left:?}");
    std::fs::remove_dir_all(&test).unwrap();
}

#[test]
fn with_dir_the_directory_and_its_images_stay() {
    let test = test_dir("keep");
    let dir = test.join("run");
    let s = serve(&test, Some(&dir));
    assert_eq!(s.dir, dir);
    assert_eq!(mode(&dir), 0o700, "created by the lab");
    assert_private_lab(&dir);
    let (code, out, err) = s.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("counters in"), "{out}");
    assert!(dir.join("nvme0n1.img").exists());
    assert!(dir.join("counters.json").exists());
    for s in SOCKETS {
        assert!(!dir.join(s).exists(), "{s} unlinked");
    }
    std::fs::remove_dir_all(&test).unwrap();
}

#[test]
fn a_killed_labs_sockets_are_replaced_and_a_live_labs_are_never_taken() {
    let test = test_dir("stale");
    let dir = test.join("run");
    // A lab killed outright leaves its sockets behind.
    let (code, _, _) = serve(&test, Some(&dir)).stop(libc::SIGKILL);
    assert_eq!(code, None, "killed");
    for s in SOCKETS {
        assert!(dir.join(s).exists(), "{s} left behind");
    }
    // The next lab replaces them, and says so.
    let live = serve(&test, Some(&dir));
    assert_private_lab(&dir);
    // A further lab in the same directory is refused with a clear error...
    let out = Command::new(env!("CARGO_BIN_EXE_p2plab"))
        .args(["serve", "--config"])
        .arg(test.join("tiny.toml"))
        .arg("--dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nvme0.sock") && err.contains("a live process is listening"),
        "{err}"
    );
    // ... and the live lab did not notice.
    let stats = Command::new(env!("CARGO_BIN_EXE_p2plab"))
        .arg("stats")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    assert!(String::from_utf8_lossy(&stats.stdout).contains("nvme0"));
    let (code, _, err) = live.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    for s in SOCKETS {
        assert!(
            err.contains(&format!(
                "{}: replacing a stale socket",
                dir.join(s).display()
            )),
            "{s}: {err}"
        );
    }
    std::fs::remove_dir_all(&test).unwrap();
}
