//! `p2plab serve --config FILE [--dir DIR]`: a topology's p2plab devices served until
//! SIGINT/SIGTERM, for a QEMU command line of one's own (the sockets are printed).

use crate::config::Topology;
use crate::lab::Lab;
use std::path::{Path, PathBuf};

/// Block SIGINT/SIGTERM in this thread (inherited by threads spawned later) and return
/// a waiter that sleeps until one arrives.
fn block_termination_signals() -> impl FnOnce() -> i32 {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask only
    // changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
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

/// `p2plab serve --config FILE [--dir DIR]`.
pub fn serve_main(config: &Path, dir: Option<PathBuf>) -> anyhow::Result<i32> {
    let wait = block_termination_signals();
    let topo = Topology::load(config)?;
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("p2plab-serve-{}", std::process::id())),
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
    let sig = wait();
    log::info!("signal {sig}: shutting down");
    let counters = serde_json::to_string_pretty(&lab.snapshot())?;
    std::fs::write(dir.join("counters.json"), counters + "\n")?;
    lab.shutdown();
    println!(
        "p2plab: stopped; counters in {}",
        dir.join("counters.json").display()
    );
    Ok(0)
}
