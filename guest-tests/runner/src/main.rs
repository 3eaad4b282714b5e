//! `p2plab-guest`: the in-guest test runner of p2plab.
//!
//! It reads `/etc/p2plab/run.json` (`p2plab_guest_abi::RunConfig`, written by
//! `p2plab run` into the run's initramfs layer), finds the topology's devices by role,
//! runs the requested cases and reports them in KTAP on the serial console. Around each
//! case it prints `P2PLAB-CASE-BEGIN <name>` / `P2PLAB-CASE-END <name>` and waits for
//! the host's `P2PLAB-ACK <name>` on the same tty, so the host's counter snapshots
//! bracket the case exactly. After the last case it prints `P2PLAB-RUN-END`. The
//! markers, the run.json type and the case table are `p2plab-guest-abi`'s, shared with
//! the host.
//!
//! Usage: `p2plab-guest [--list | --list-json] [--config FILE] [--tty DEV] [--no-ack]
//! [--ack-timeout SECS] [CASE...]`. Case names on the command line override the
//! config's list (handy from `p2plab run --shell`).

mod cases;
mod console;
mod devices;
mod exec;
mod mem;

use std::time::{Duration, Instant};

use cases::Ctx;
use console::Console;
use p2plab_guest_abi::run::RUN_JSON_PATH;
use p2plab_guest_abi::{CaseId, Marker, CASES};

struct Opts {
    config: String,
    tty: String,
    ack: bool,
    ack_timeout: Duration,
    cases: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: p2plab-guest [--list | --list-json] [--config FILE] [--tty DEV] [--no-ack] [--ack-timeout SECS] [CASE...]"
    );
    std::process::exit(2)
}

fn main() {
    let mut o = Opts {
        config: RUN_JSON_PATH.into(),
        tty: "/dev/ttyS0".into(),
        ack: true,
        ack_timeout: Duration::from_secs(30),
        cases: vec![],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => {
                for c in CASES {
                    println!("{}", c.list_line());
                }
                return;
            }
            "--list-json" => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(CASES).unwrap_or_default()
                );
                return;
            }
            "--config" => o.config = args.next().unwrap_or_else(|| usage()),
            "--tty" => o.tty = args.next().unwrap_or_else(|| usage()),
            "--no-ack" => o.ack = false,
            "--ack-timeout" => {
                let s: u64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage());
                o.ack_timeout = Duration::from_secs(s);
            }
            "-h" | "--help" => usage(),
            s if s.starts_with('-') => usage(),
            s => o.cases.push(s.to_string()),
        }
    }
    std::process::exit(run(o));
}

fn run(o: Opts) -> i32 {
    let mut con = Console::open(&o.tty, o.ack, o.ack_timeout);
    con.line("KTAP version 1");
    let cfg = match devices::load(&o.config) {
        Ok(c) => c,
        Err(e) => {
            con.line("1..0");
            con.line(&format!("# p2plab-guest: {e}"));
            con.line(&Marker::RunEnd.to_string());
            return 1;
        }
    };
    let names: Vec<String> = if o.cases.is_empty() {
        cfg.cases.iter().map(|c| c.name().to_string()).collect()
    } else {
        o.cases.clone()
    };
    con.line(&format!("1..{}", names.len()));
    let env = devices::Env::discover(&cfg, Duration::from_secs(20));
    for note in &env.notes {
        con.line(&format!("# {note}"));
    }
    let mut failed = 0;
    for (i, name) in names.iter().enumerate() {
        let n = i + 1;
        let Some(id) = CaseId::from_name(name) else {
            con.line(&format!("not ok {n} {name} # unknown case"));
            failed += 1;
            continue;
        };
        let mut acked = con.mark(Marker::CaseBegin(name));
        let t0 = Instant::now();
        let mut ctx = Ctx {
            env: &env,
            con: &mut con,
            exec: cfg.exec.as_ref(),
            skipped: None,
        };
        let result = cases::body(id)(&mut ctx);
        let skipped = ctx.skipped.take();
        let secs = t0.elapsed().as_secs_f64();
        acked &= con.mark(Marker::CaseEnd(name));
        con.line(&format!("# {name}: {secs:.2} s"));
        match (result, acked) {
            (Ok(()), true) => match skipped {
                Some(why) => con.line(&format!("ok {n} {name} # SKIP {}", why.replace('\n', " "))),
                None => con.line(&format!("ok {n} {name}")),
            },
            (Ok(()), false) => {
                failed += 1;
                con.line(&format!(
                    "not ok {n} {name} # no {} from the host (counters unreliable)",
                    p2plab_guest_abi::markers::ACK
                ));
            }
            (Err(e), _) => {
                failed += 1;
                con.line(&format!("not ok {n} {name} # {}", e.replace('\n', " ")));
            }
        }
    }
    con.line(&Marker::RunEnd.to_string());
    i32::from(failed != 0)
}
