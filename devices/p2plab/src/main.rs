//! `p2plab`: serve emulated PCIe P2P devices to QEMU over vfio-user, boot lab guests,
//! read the devices' counters.
//!
//! The command line only: arguments are parsed here and each subcommand is handed to
//! the crate that implements it — `serve` and `stats` to `p2plab-lab`, `run`,
//! `summary`, `proof` and `bench` to `p2plab-harness`.

use clap::{Parser, Subcommand};
use p2plab_harness::{bench, proof, run, summary};
use p2plab_lab::{control, serve};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "p2plab",
    version,
    about = "Emulated PCIe P2P DMA lab: vfio-user devices for QEMU, with counters that prove the bypass"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the p2plab devices a topology names (vfio-user sockets) until Ctrl-C.
    Serve {
        /// Topology file (qemu-configs/*.toml).
        #[arg(long, default_value = "qemu-configs/switch.toml")]
        config: PathBuf,
        /// Directory for sockets, namespace images and counters.json, kept at exit
        /// (default: a fresh private one under $TMPDIR, removed at exit with everything
        /// in it; the final counters then go to stdout).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Boot a lab guest: serve the topology's devices, start QEMU, run guest cases.
    Run(Box<run::RunArgs>),
    /// Summarise a suite run directory (one sub-directory per topology run):
    /// print the table, write summary.json, exit 1 on any failure.
    Summary {
        /// The suite's output directory.
        out: PathBuf,
        /// An extra host-side row, NAME:RESULT:SECONDS (e.g. cargo-test:ok:93.2).
        #[arg(long = "host-row")]
        host_rows: Vec<String>,
    },
    /// Benchmark the lab against QEMU's built-in NVMe measured in the same run.
    Bench(bench::BenchArgs),
    /// Print the bypass proof of a P2P case from a run directory; for a run without one
    /// (a --shell or --exec run), what every device moved where over the whole run.
    Proof {
        /// The run directory (scripts/run-guest --out).
        run_dir: PathBuf,
        /// The case (default: p2p-read when the run has it, else the whole run).
        case: Option<String>,
    },
    /// Print the live counters of a running lab (JSON).
    Stats {
        /// The lab's control socket, or its run directory.
        #[arg(default_value = ".")]
        target: PathBuf,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Serve { config, dir } => serve::serve_main(&config, dir),
        Cmd::Run(args) => run::run_main(*args),
        Cmd::Summary { out, host_rows } => summary::summary_main(&out, &host_rows),
        Cmd::Bench(args) => bench::bench_main(args),
        Cmd::Proof { run_dir, case } => proof::proof_or_movement(&run_dir, case.as_deref()),
        Cmd::Stats { target } => control::stats_main(&target),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("p2plab: error: {e:#}");
            std::process::exit(1);
        }
    }
}
