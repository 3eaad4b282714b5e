//! `p2plab serve --config FILE [--dir DIR]`: a topology's p2plab devices served until
//! SIGINT/SIGTERM/SIGHUP, for a QEMU command line of one's own (the sockets are printed).

use crate::config::Topology;
use crate::lab::{Lab, PRIVATE_DIR_MODE};
use anyhow::Context;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Block SIGINT/SIGTERM/SIGHUP in this thread (inherited by threads spawned later) and
/// return a waiter that sleeps until one arrives: the process then ends through its
/// normal path, which runs every cleanup.
fn block_termination_signals() -> impl FnOnce() -> i32 {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask only
    // changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid initialised sigset; `sig` is a valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        sig
    }
}

/// A run directory `p2plab serve` made for itself (no `--dir`): created 0700 under the
/// temporary directory, and removed with everything in it (sockets, sparse namespace
/// images) when dropped — on a signal, a normal return, an error return or an
/// unwinding panic alike. Only a directory this process created is ever removed.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `$TMPDIR/p2plab-serve-<pid>[-<n>]`, created exclusively (never an existing one).
    pub fn create() -> anyhow::Result<ScratchDir> {
        let base = std::env::temp_dir().join(format!("p2plab-serve-{}", std::process::id()));
        for n in 0..100 {
            let p = match n {
                0 => base.clone(),
                n => PathBuf::from(format!("{}-{n}", base.display())),
            };
            match std::fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(&p) {
                Ok(()) => return Ok(ScratchDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
        }
        anyhow::bail!("no free run directory name at {}", base.display())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => log::info!("removed {}", self.0.display()),
            Err(e) => log::warn!("removing {}: {e}", self.0.display()),
        }
    }
}

/// `p2plab serve --config FILE [--dir DIR]`.
///
/// With `--dir` the directory and what the lab put there (namespace images,
/// `counters.json`) stay; without, the lab runs in a [`ScratchDir`] that is removed at
/// exit, and the final counters go to stdout instead.
pub fn serve_main(config: &Path, dir: Option<PathBuf>) -> anyhow::Result<i32> {
    let wait = block_termination_signals();
    let topo = Topology::load(config)?;
    // Declared before the lab, so it is dropped (removed) after the lab has stopped.
    let (dir, scratch) = match dir {
        Some(d) => (d, None),
        None => {
            let s = ScratchDir::create()?;
            (s.path().to_path_buf(), Some(s))
        }
    };
    let lab = Lab::start(&topo, &dir)?;
    println!(
        "p2plab: serving topology '{}' in {}",
        topo.name,
        dir.display()
    );
    for (name, kind, socket) in lab.served() {
        println!("  {:<8} {:<4} {}", name, kind.as_str(), socket.display());
    }
    println!(
        "  control  {}  (p2plab stats {})",
        dir.join("control.sock").display(),
        dir.display()
    );
    let skipped: Vec<_> = topo
        .devices
        .iter()
        .filter(|d| !d.kind.is_p2plab())
        .map(|d| d.name.as_str())
        .collect();
    if !skipped.is_empty() {
        println!(
            "  (QEMU's own devices, not served here: {})",
            skipped.join(", ")
        );
    }
    if scratch.is_some() {
        println!("  (a scratch directory: removed at exit; --dir DIR keeps one)");
    }
    let sig = wait();
    log::info!("signal {sig}: shutting down");
    let counters = serde_json::to_string_pretty(&lab.snapshot())? + "\n";
    lab.shutdown();
    if let Some(scratch) = scratch {
        print!("p2plab: final counters:\n{counters}");
        drop(scratch);
        println!("p2plab: stopped; removed {}", dir.display());
    } else {
        std::fs::write(dir.join("counters.json"), counters)?;
        println!(
            "p2plab: stopped; counters in {}",
            dir.join("counters.json").display()
        );
    }
    Ok(0)
}
