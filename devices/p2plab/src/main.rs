//! `p2plab`: serve emulated PCIe P2P devices to QEMU over vfio-user, boot lab guests,
//! read the devices' counters.
//!
//! The command line only: arguments are parsed here and each subcommand is handed to
//! the crate that implements it — `serve` and `stats` to `p2plab-lab`, `run`,
//! `summary`, `suite`, `proof` and `bench` to `p2plab-harness`.

use clap::{Parser, Subcommand};
use p2plab_harness::suite::Shard;
use p2plab_harness::{bench, proof, run, suite, summary};
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
    /// Summarise a suite run directory (one sub-directory per topology run): print the
    /// tables (cases; rows with their seconds), write summary.json and junit.xml there,
    /// print `N passed, N failed, N skipped`, exit 1 on any failure.
    Summary {
        /// The suite's output directory.
        out: PathBuf,
        /// A host-side row, `NAME:RESULT:SECONDS[:MESSAGE]` (e.g. cargo-test:ok:93.2); a
        /// failed one's details are the tail of OUT/NAME.log.
        #[arg(long = "host-row")]
        host_rows: Vec<String>,
        /// A topology row this suite ran (repeatable; default: every sub-directory of
        /// OUT but dot ones). Others in OUT, left by earlier runs, are not counted.
        #[arg(long = "topology")]
        topologies: Vec<String>,
        /// TOPOLOGY:SECONDS, a topology row's wall time (default: its timing.json).
        #[arg(long = "row-seconds")]
        row_seconds: Vec<String>,
        /// The suite's wall time in seconds (recorded; rows' sum / wall = parallelism).
        #[arg(long)]
        wall_seconds: Option<f64>,
        /// Seconds of that wall time spent before the rows (toolroot, release build).
        #[arg(long)]
        setup_seconds: Option<f64>,
        /// The suite's --jobs (recorded).
        #[arg(long)]
        jobs: Option<usize>,
        /// The suite's --shard I/N (recorded).
        #[arg(long)]
        shard: Option<Shard>,
    },
    /// The suite's helpers for scripts/test: CI shards, a run's tally, shards merged.
    #[command(subcommand)]
    Suite(SuiteCmd),
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

#[derive(Subcommand)]
enum SuiteCmd {
    /// Print the rows shard I of N runs, one a line, in the given order: host rows
    /// (setup-check, rustfmt, clippy, cargo-doc, cargo-test) on shard 1, the others
    /// longest first to the least loaded shard (typical seconds; deterministic).
    Plan {
        /// I/N (1-based).
        #[arg(long, default_value = "1/1")]
        shard: Shard,
        /// The suite's rows, in order.
        rows: Vec<String>,
    },
    /// `N passed, N failed, N skipped` of RUN_DIR/results.ktap and its `not ok` lines;
    /// exit 1 on a failure or no results.
    Tally {
        /// A `p2plab run` directory.
        run_dir: PathBuf,
    },
    /// Merge shards' summary.json files into OUT/summary.json and OUT/junit.xml, print
    /// the tables and the closing line; exit 1 on any failure.
    Merge {
        /// Where the merged summary.json and junit.xml go.
        out: PathBuf,
        /// The shards' output directories (each with a summary.json).
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Serve { config, dir } => serve::serve_main(&config, dir),
        Cmd::Run(args) => run::run_main(*args),
        Cmd::Summary {
            out,
            host_rows,
            topologies,
            row_seconds,
            wall_seconds,
            setup_seconds,
            jobs,
            shard,
        } => summary::summary_main(
            &out,
            &summary::SummaryArgs {
                host_rows,
                topologies,
                row_seconds,
                wall_seconds,
                setup_seconds,
                jobs,
                shard,
            },
        ),
        Cmd::Suite(SuiteCmd::Plan { shard, rows }) => suite::plan_main(&rows, shard),
        Cmd::Suite(SuiteCmd::Tally { run_dir }) => suite::tally_main(&run_dir),
        Cmd::Suite(SuiteCmd::Merge { out, shards }) => summary::merge_main(&out, &shards),
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
