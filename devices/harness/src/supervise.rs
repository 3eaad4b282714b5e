//! Supervision of a booted guest: QEMU as a child process group, the serial console
//! followed line by line (KTAP, the case markers of `p2plab_guest_abi::markers`, kernel
//! reports), the host's half of the case handshake (counter and CPU witness snapshots,
//! then `P2PLAB-ACK`), and the results: host assertions applied, `results.ktap`,
//! `timing.json`, `cases/<case>/{counters.json,result.json,cpu.json,splat.txt,output.log}`.

use crate::assertions;
use crate::ktap::{self, Verdict};
use crate::stall;
use crate::witness::{self, Witness};
use anyhow::{Context, Result};
use p2plab_counters::Counters;
use p2plab_guest_abi::{CaseId, Marker};
use p2plab_lab::config::Topology;
use p2plab_lab::{BarWindow, LabView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// Record SIGINT, SIGTERM and SIGHUP (the run then stops QEMU and the lab, and says why).
pub fn install_signal_handlers() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
    }
}

/// QEMU, in its own process group, killed (group-wide) when dropped.
struct Qemu {
    child: Child,
    own_group: bool,
}

impl Qemu {
    fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        let target = if self.own_group { -pid } else { pid };
        // SAFETY: signalling our own child (or its group); no memory is involved.
        unsafe { libc::kill(target, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; SIGKILL for whatever is left of the group.
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Ev {
    Line(String),
    Eof,
}

/// Is this console line worth showing without -v?
fn interesting(l: &str) -> bool {
    ktap_line(l)
        || [
            "Kernel panic",
            "BUG:",
            "Oops",
            "Call Trace",
            "error",
            "Error",
            "failed",
            "WARNING:",
            p2plab_guest_abi::markers::INIT_NOTE,
        ]
        .iter()
        .any(|k| l.contains(k))
}

fn ktap_line(l: &str) -> bool {
    let t = l.trim_start();
    t.starts_with("KTAP version")
        || t.starts_with("1..")
        || t.starts_with("ok ")
        || t.starts_with("not ok ")
        || t.starts_with("# ")
}

/// How long a guest may take to power off after printing its run's end.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);
/// Console lines printed when a run is stopped without its results.
const CONSOLE_TAIL: usize = 20;

pub fn shell(mut cmd: Command, run_dir: &Path, timeout: Option<Duration>) -> Result<i32> {
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // Same process group: QEMU must be in the terminal's foreground group to read it.
    let child = cmd.spawn().context("starting QEMU")?;
    let mut q = Qemu {
        child,
        own_group: false,
    };
    let t0 = Instant::now();
    loop {
        if let Some(st) = q.child.try_wait()? {
            eprintln!(
                "\r\np2plab: guest shell ended ({st}); console log {}",
                run_dir.join("console.log").display()
            );
            return Ok(0);
        }
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 || timeout.is_some_and(|t| t0.elapsed() > t) {
            q.kill();
            eprintln!(
                "\r\np2plab: {}; QEMU stopped",
                if sig != 0 { "interrupted" } else { "timeout" }
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per-case bookkeeping on the host.
#[derive(Default)]
struct CaseRun {
    begin: Option<(Instant, Counters)>,
    seconds: Option<f64>,
    delta: Option<Counters>,
    /// CPU witness: the windows armed at BEGIN and the snapshot then.
    cpu_begin: Option<(Vec<BarWindow>, tcg_witness::Snapshot)>,
    /// CPU witness: the case's `cpu.json`.
    cpu: Option<Value>,
    /// Counter snapshots the guest reported during the case ([`Marker::VendorLog`],
    /// read from the NVMe vendor log page), checked against the host's snapshots.
    reported: Vec<String>,
    /// Failures of those checks.
    reported_fails: Vec<String>,
    /// Kernel reports (WARN, BUG, lockdep, …) that began during the case: first lines.
    splats: Vec<String>,
    /// The kernel's console lines from the first report to the case's end.
    splat_log: Vec<String>,
    /// The console between the case's markers (kept as `output.log` for `exec`).
    output: Vec<String>,
}

/// What [`supervise`] watches and where it writes.
pub struct Supervision<'a> {
    pub topo: &'a Topology,
    /// The cases the guest was asked to run, in order.
    pub cases: &'a [CaseId],
    /// The lab serving the topology's p2plab devices, in this process or another
    /// (`--lab`); None: the topology has none.
    pub lab: Option<&'a dyn LabView>,
    pub run_dir: &'a Path,
    /// Wall-clock limit of the whole run.
    pub timeout: Option<Duration>,
    /// Limit from QEMU's start to the guest's first case (a stalled boot).
    pub boot_timeout: Option<Duration>,
    /// The booted ELF vmlinux (PVH), whose symbols name a stuck guest's RIPs.
    pub kernel_elf: Option<&'a Path>,
    /// Seconds spent building the image (for `timing.json`).
    pub image_secs: f64,
    /// Show the whole console, not only KTAP lines and errors.
    pub verbose: bool,
    /// The CPU witness plugin is loaded (its socket is `run_dir/witness.sock`).
    pub cpu_witness: bool,
}

/// Start QEMU (`cmd`, its own process group), follow the serial console to the end of
/// the guest's run: answer each case marker with an ACK after the counter (and CPU
/// witness) snapshots, collect KTAP, per-case output and kernel reports; then apply the
/// host assertions and write `results.ktap`, `timing.json` and `cases/<case>/*`.
/// Returns the exit code: 0 iff every case is `ok` and the guest reached its end.
pub fn supervise(mut cmd: Command, s: &Supervision<'_>) -> Result<i32> {
    let &Supervision {
        topo,
        cases,
        lab,
        run_dir,
        timeout,
        boot_timeout,
        kernel_elf,
        image_secs,
        verbose,
        cpu_witness,
    } = s;
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting QEMU")?;
    let mut stdin = child.stdin.take().context("QEMU stdin")?;
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let mut stderr = child.stderr.take().context("QEMU stderr")?;
    let mut q = Qemu {
        child,
        own_group: true,
    };

    let (tx, rx) = mpsc::channel::<Ev>();
    let log_path = run_dir.join("console.log");
    let mut log = std::fs::File::create(&log_path)?;
    let reader = std::thread::spawn(move || {
        let mut r = stdout;
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = log.write_all(&buf[..n]);
            for &b in &buf[..n] {
                if b == b'\n' {
                    let s = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    line.clear();
                    if tx.send(Ev::Line(s)).is_err() {
                        return;
                    }
                } else {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            let _ = tx.send(Ev::Line(String::from_utf8_lossy(&line).into_owned()));
        }
        let _ = tx.send(Ev::Eof);
    });
    let qlog_path = run_dir.join("qemu.log");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = std::fs::write(&qlog_path, &s);
        for l in s.lines() {
            eprintln!("qemu: {l}");
        }
    });

    let snap = || lab.map_or_else(Counters::default, |l| l.snapshot());
    // The plugin binds its socket at QEMU start; connect lazily at the first case.
    let mut cpu = cpu_witness.then(|| Witness::new(run_dir.join("witness.sock")));
    let mut cpu_secs = 0.0f64;
    let mut runs: BTreeMap<String, CaseRun> = BTreeMap::new();
    // The case between its BEGIN and END markers (guest reports are attached to it).
    let mut open_case: Option<String> = None;
    // Kernel reports outside any case (boot, between cases, shutdown).
    let mut outside_splats: Vec<String> = vec![];
    let mut ktap: Vec<String> = vec![];
    let mut in_ktap = false;
    let mut reached_end = false;
    // When the guest printed its run's end: it then has POWEROFF_GRACE to power off.
    let mut ended_at: Option<Instant> = None;
    let mut stuck_note: Option<String> = None;
    let mut first_case: Option<f64> = None;
    let mut stop_reason: Option<String> = None;
    // Stopped because the guest hung (boot limit, timeout), not by a signal: place it.
    let mut hung = false;
    let ack = |stdin: &mut std::process::ChildStdin, name: &str| {
        let _ = stdin.write_all(format!("{}\n", Marker::Ack(name)).as_bytes());
        let _ = stdin.flush();
    };
    loop {
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 {
            stop_reason = Some(format!("interrupted (signal {sig})"));
            break;
        }
        if let Some(t) = timeout {
            if t0.elapsed() > t {
                stop_reason = Some(format!("timeout after {} s", t.as_secs()));
                hung = true;
                break;
            }
        }
        if let Some(t) = boot_timeout.filter(|t| first_case.is_none() && t0.elapsed() > *t) {
            stop_reason = Some(format!(
                "boot stalled: no case began within {} s of QEMU's start",
                t.as_secs()
            ));
            hung = true;
            break;
        }
        if ended_at.is_some_and(|e| e.elapsed() > POWEROFF_GRACE) {
            // Every result is in; a task stuck in the kernel (a case reported it) keeps the
            // guest from powering off. Stop it instead of waiting for the timeout.
            let note = format!(
                "the guest did not power off within {} s after its run ended (a task stuck in the kernel?): QEMU stopped",
                POWEROFF_GRACE.as_secs()
            );
            eprintln!("p2plab: {note}");
            stuck_note = Some(note);
            break;
        }
        let ev = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => Ev::Eof,
        };
        let l = match ev {
            Ev::Line(l) => l,
            Ev::Eof => break,
        };
        if verbose {
            println!("{l}");
        } else if let Some(i) = l.find("KTAP version") {
            println!("{}", &l[i..]);
        } else if interesting(&l) {
            println!("{l}");
        }
        if let Some(msg) = ktap::splat(&l) {
            eprintln!(
                "p2plab: kernel report during {}: {msg}",
                open_case.as_deref().unwrap_or("no case")
            );
            match open_case.as_ref() {
                Some(c) => runs.entry(c.clone()).or_default().splats.push(msg.into()),
                None => outside_splats.push(msg.into()),
            }
        }
        let marker = Marker::find(&l);
        if let Some(r) = open_case.as_ref().and_then(|c| runs.get_mut(c)) {
            if !marker.is_some_and(|m| m.is_case_boundary()) {
                r.output.push(l.clone());
            }
            if !r.splats.is_empty() && ktap::is_kernel_line(&l) && r.splat_log.len() < 200 {
                r.splat_log.push(l.clone());
            }
        }
        if let (Some(Marker::VendorLog(json)), Some(c)) = (marker, open_case.as_ref()) {
            runs.entry(c.clone())
                .or_default()
                .reported
                .push(json.to_string());
        }
        if let Some(Marker::CaseBegin(name)) = marker {
            let name = name.to_string();
            first_case.get_or_insert(t0.elapsed().as_secs_f64());
            let r = runs.entry(name.clone()).or_default();
            if let Some(w) = cpu.as_mut() {
                // BARs are programmed after boot: take the windows as they are now.
                let tw = Instant::now();
                let windows = lab.map(|l| l.bar_windows()).unwrap_or_default();
                match w.set_ranges(&windows).and_then(|()| w.snapshot()) {
                    Ok(s) => r.cpu_begin = Some((windows, s)),
                    Err(e) => eprintln!("p2plab: warning: CPU witness at {name} begin: {e:#}"),
                }
                cpu_secs += tw.elapsed().as_secs_f64();
            }
            r.begin = Some((Instant::now(), snap()));
            open_case = Some(name.clone());
            ack(&mut stdin, &name);
        } else if let Some(Marker::CaseEnd(name)) = marker {
            let name = name.to_string();
            let end = snap();
            let r = runs.entry(name.clone()).or_default();
            if let Some((t, begin)) = &r.begin {
                r.seconds = Some(t.elapsed().as_secs_f64());
                let d = end.since(begin);
                let dir = run_dir.join("cases").join(&name);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("counters.json"), serde_json::to_string_pretty(&d)?)?;
                r.delta = Some(d);
                r.reported_fails = assertions::check_reported(begin, &end, &r.reported);
                if name == CaseId::Exec.name() {
                    std::fs::write(dir.join("output.log"), r.output.join("\n") + "\n")?;
                }
            }
            open_case = None;
            if let Some(w) = cpu.as_mut() {
                let tw = Instant::now();
                let end = w.snapshot();
                // Disarm: outside cases the plugin runs at its cheaper unarmed cost.
                if let Err(e) = w.set_ranges(&[]) {
                    eprintln!("p2plab: warning: CPU witness at {name} end: disarming: {e:#}");
                }
                match (end, r.cpu_begin.take()) {
                    (Ok(end), Some((windows, begin))) => {
                        let c = witness::case_delta(&windows, &begin, &end);
                        let dir = run_dir.join("cases").join(&name);
                        std::fs::create_dir_all(&dir)?;
                        std::fs::write(dir.join("cpu.json"), serde_json::to_string_pretty(&c)?)?;
                        r.cpu = Some(c);
                    }
                    (Err(e), _) => eprintln!("p2plab: warning: CPU witness at {name} end: {e:#}"),
                    (Ok(_), None) => {}
                }
                cpu_secs += tw.elapsed().as_secs_f64();
            }
            ack(&mut stdin, &name);
        } else if marker == Some(Marker::RunEnd) {
            reached_end = true;
            ended_at = Some(Instant::now());
            in_ktap = false;
        } else if let Some(i) = l.find("KTAP version") {
            // SeaBIOS leaves "Booting from ROM.." without a newline before it.
            in_ktap = true;
            ktap.push(l[i..].to_string());
        } else if in_ktap && ktap_line(&l) {
            ktap.push(l.trim_start().to_string());
        }
    }
    if hung {
        // Before QEMU goes: where its vCPUs and threads are (a hang, placed).
        let report = stall::report(run_dir, q.child.id(), kernel_elf);
        let path = run_dir.join("stall.txt");
        let _ = std::fs::write(&path, &report);
        eprintln!("p2plab: what the guest was doing ({}):", path.display());
        for l in report.lines() {
            eprintln!("p2plab:   {l}");
        }
        eprintln!("p2plab: the console's last lines:");
        let console = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        for l in &lines[lines.len().saturating_sub(CONSOLE_TAIL)..] {
            eprintln!("p2plab:   | {l}");
        }
    }
    drop(stdin);
    q.kill();
    let total = t0.elapsed().as_secs_f64();
    let _ = reader.join();
    let _ = err_thread.join();
    let exit = q.child.try_wait().ok().flatten();
    if let Some(r) = &stop_reason {
        eprintln!("p2plab: {r}: QEMU and the lab stopped");
    }

    // --- results, with host assertions
    let mut out: Vec<String> = vec![];
    let mut seen: BTreeMap<String, (Verdict, String, Vec<String>)> = BTreeMap::new();
    let mut plan_seen = false;
    for l in &ktap {
        if l.starts_with("1..") {
            plan_seen = true;
        }
        let Some(res) = ktap::parse_line(l) else {
            out.push(l.clone());
            continue;
        };
        let (n, name, msg) = (res.number, res.name, res.message);
        let run = runs.get(&name);
        // Counter rules are checked even when the guest already failed: a broken route
        // then shows up by its counters, not only as an I/O error. A skipped case moved
        // nothing on purpose: its counters are not held to the case's rules.
        let mut fails = match (res.verdict, run.and_then(|r| r.delta.as_ref())) {
            (Verdict::Skip, _) | (_, None) => vec![],
            (_, Some(d)) => assertions::check(&name, topo, d),
        };
        if res.verdict == Verdict::Pass {
            fails.extend(run.map(|r| r.reported_fails.clone()).unwrap_or_default());
            if cpu_witness {
                // A case the witness failed to record is checked against nothing.
                let c = run.and_then(|r| r.cpu.as_ref()).unwrap_or(&Value::Null);
                fails.extend(assertions::check_cpu(&name, topo, c));
            }
        }
        // The kernel under test reported a problem while the case ran: that is a failure,
        // whatever the guest saw (a skip included).
        if let Some(r) = run.filter(|r| !r.splats.is_empty()) {
            let dir = run_dir.join("cases").join(&name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("splat.txt"), r.splat_log.join("\n") + "\n")?;
            fails.push(format!(
                "kernel report during the case: {}{} (cases/{name}/splat.txt)",
                r.splats[0],
                match r.splats.len() {
                    1 => String::new(),
                    k => format!(" (+{} more)", k - 1),
                }
            ));
        }
        let verdict = if fails.is_empty() {
            out.push(l.clone());
            res.verdict
        } else {
            for f in &fails {
                out.push(format!("# host assertion: {f}"));
            }
            let guest = match res.verdict {
                Verdict::Fail => format!("{msg}; "),
                Verdict::Skip => format!("SKIP {msg} but "),
                Verdict::Pass => String::new(),
            };
            out.push(format!(
                "not ok {n} {name} # {guest}host assertions: {}",
                fails.join("; ")
            ));
            Verdict::Fail
        };
        seen.insert(name, (verdict, msg, fails));
    }
    if out.is_empty() {
        out.push("KTAP version 1".into());
    }
    if !plan_seen {
        out.insert(1, format!("1..{}", cases.len()));
    }
    let why_missing = stop_reason.clone().unwrap_or_else(|| match exit {
        Some(st) if !reached_end => format!("guest stopped before reporting it (QEMU {st})"),
        _ => "guest never reported it".into(),
    });
    for (i, c) in cases.iter().enumerate() {
        if !seen.contains_key(c.name()) {
            out.push(format!(
                "not ok {} {} # missing: {why_missing}",
                i + 1,
                c.name()
            ));
        }
    }
    if !outside_splats.is_empty() {
        // Not any case's, but the kernel under test reported a problem: the run fails
        // on a result line of its own, so the summary counts it.
        for s in &outside_splats {
            out.push(format!("# kernel report outside any case: {s}"));
        }
        out.push(format!(
            "not ok {} kernel-log # {} kernel report(s) outside any case, first: {}",
            cases.len() + 1,
            outside_splats.len(),
            outside_splats[0]
        ));
    }
    if let Some(note) = &stuck_note {
        out.push(format!("# {note}"));
    }
    std::fs::write(run_dir.join("results.ktap"), out.join("\n") + "\n")?;

    let mut all_ok = reached_end && stop_reason.is_none() && outside_splats.is_empty();
    let mut timing = json!({"image_seconds": image_secs, "boot_to_first_case_seconds": first_case, "total_seconds": total, "cases": {}});
    if cpu_witness {
        timing["cpu_witness_control_seconds"] = json!(cpu_secs);
    }
    eprintln!("p2plab: {:<16} {:<8} {:>8}", "case", "result", "seconds");
    for c in cases {
        let (verdict, msg) =
            seen.get(c.name())
                .map_or((Verdict::Fail, why_missing.clone()), |(v, m, f)| {
                    (
                        *v,
                        if f.is_empty() {
                            m.clone()
                        } else {
                            f.join("; ")
                        },
                    )
                });
        let ok = verdict != Verdict::Fail;
        all_ok &= ok;
        let secs = runs.get(c.name()).and_then(|r| r.seconds);
        timing["cases"][c.name()] = json!(secs);
        let fails = seen.get(c.name()).map(|s| s.2.clone()).unwrap_or_default();
        let dir = run_dir.join("cases").join(c.name());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("result.json"),
            serde_json::to_string_pretty(&json!({
                "case": c.name(), "topology": topo.name, "result": verdict.as_str(),
                "seconds": secs, "message": msg, "host_failures": fails,
            }))?,
        )?;
        eprintln!(
            "p2plab: {:<16} {:<8} {:>8}{}",
            c.name(),
            match verdict {
                Verdict::Pass => "ok",
                Verdict::Skip => "SKIP",
                Verdict::Fail => "NOT OK",
            },
            secs.map_or("-".into(), |s| format!("{s:.2}")),
            if verdict == Verdict::Pass || msg.is_empty() {
                String::new()
            } else {
                format!("  {msg}")
            }
        );
    }
    std::fs::write(
        run_dir.join("timing.json"),
        serde_json::to_string_pretty(&timing)?,
    )?;
    eprintln!(
        "p2plab: boot to first case {}, total {total:.2} s{}",
        first_case.map_or("-".into(), |s| format!("{s:.2} s")),
        if reached_end {
            ""
        } else {
            " (guest did not reach the end of its run)"
        }
    );
    Ok(if all_ok { 0 } else { 1 })
}
