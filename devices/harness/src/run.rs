//! `p2plab run`: the guest launcher.
//!
//! Picks the cases ([`crate::select`]), builds (or reuses) the guest image, starts the
//! topology's p2plab devices in-process ([`p2plab_lab::Lab`]), boots QEMU with the
//! topology's PCIe hierarchy and hands the console to [`crate::supervise`], which
//! snapshots the devices' counters at each case boundary the guest runner marks
//! (`P2PLAB-CASE-BEGIN/END <case>`, answered with `P2PLAB-ACK <case>`). The run
//! directory:
//!
//! ```text
//! DIR/run.json                  resolved topology, arguments, kernel, QEMU command line
//! DIR/console.log               the whole serial console
//! DIR/qemu.log                  QEMU's stderr
//! DIR/results.ktap              KTAP, with host assertions applied
//! DIR/counters.json             all devices' counters at the end of the run
//! DIR/timing.json               boot and per-case seconds
//! DIR/cases/<case>/counters.json  counter delta over the case
//! DIR/cases/<case>/result.json    {case, topology, result, seconds, message, host_failures}
//! DIR/cases/<case>/cpu.json       --cpu-witness: guest CPU accesses to the lab's memory BARs
//!                                 over the case (`witness::case_delta`)
//! DIR/cpu.json                  --cpu-witness: the plugin's cumulative counts at QEMU exit
//! DIR/initrd.cpio               base image + layers + run.json layer (what was booted)
//! ```
//! Exit code 0 iff every selected case is `ok` (guest and host assertions) and the guest
//! reached the end of its run.

use crate::image::{self, ModuleTree, Toolroot};
use crate::qemu::{self, Accel, Launch};
use crate::select;
use crate::supervise::{self, Supervision};
use crate::witness;
use anyhow::{bail, Context, Result};
use p2plab_guest_abi::{CaseId, ExecConfig, Tool, CASES};
use p2plab_lab::config::{DeviceKind, Topology};
use p2plab_lab::{Lab, LabView, RemoteLab};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT_SECS: u64 = 900;
/// `--boot-timeout` default: QEMU start to the first case (a TCG boot takes 5–40 s here).
const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 300;

#[derive(clap::Args, Debug, serde::Serialize)]
pub struct RunArgs {
    /// Topology file (relative paths are also looked up in the repository).
    #[arg(long, default_value = "qemu-configs/switch.toml")]
    pub config: PathBuf,
    /// Kernel to boot: an ELF vmlinux (PVH entry, fastest under TCG) or a bzImage.
    /// Default: the toolroot's kernel, decompressed to a cached vmlinux.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Module tree for that kernel (a `/lib/modules/<release>` dir or an INSTALL_MOD_PATH):
    /// nvme and its dependencies are taken from there. Default: the toolroot's.
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Comma-separated cases, run in the order given (default: every case valid for the
    /// topology, or none with --exec/--shell; "all": every valid case; a group such as
    /// "hostile": its cases valid for the topology; "none": boot only).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// List the guest cases (name, where they apply, description) and exit.
    #[arg(long)]
    pub list: bool,
    /// Interactive guest shell on this terminal instead of the runner (leave with
    /// `poweroff`, Ctrl-D, or Ctrl-A X).
    #[arg(long)]
    pub shell: bool,
    /// Run directory (default: a fresh one under $P2PLAB_HOME/runs/, printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Accelerator: auto = KVM only if /dev/kvm opens and a probe boot works (cached), else TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Wall-clock limit in seconds; then everything is killed and the run fails
    /// (default 900; none with --shell). 0 = no limit.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds the guest has from QEMU's start to its first case; a guest that has not
    /// got there is stopped as stalled, with what its vCPUs and QEMU's threads were
    /// doing in `stall.txt` (default 300: a TCG boot takes 5–40 s; not with --shell).
    /// 0 = no limit.
    #[arg(long, default_value_t = DEFAULT_BOOT_TIMEOUT_SECS)]
    pub boot_timeout: u64,
    /// Extra QEMU argument, appended verbatim (repeatable).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Extra guest kernel command line (e.g. `nvme.use_cmb_sqes=0`; module.param=value
    /// words are passed to insmod by the guest's /init). Repeatable: the words of every
    /// `--append` go in, in order, after the topology's.
    #[arg(long)]
    pub append: Vec<String>,
    /// The guest runner binary (static p2plab-guest; default $P2PLAB_GUEST_RUNNER, else
    /// the cargo target dir's x86_64-unknown-linux-gnu/release/p2plab-guest).
    #[arg(long)]
    pub runner: Option<PathBuf>,
    /// CPU witness: load the tcg-witness QEMU plugin (TCG only) and record, per case, the
    /// guest CPU's loads and stores to the lab's memory BARs (`cases/<case>/cpu.json`),
    /// checked by the host's CPU assertions. Windows are armed only while a case runs.
    #[arg(long)]
    pub cpu_witness: bool,
    /// The witness plugin (default $P2PLAB_WITNESS_PLUGIN, else the cargo target dir's
    /// release/libtcg_witness.so).
    #[arg(long, requires = "cpu_witness")]
    pub witness_plugin: Option<PathBuf>,
    /// Host directory shared read-only with the guest at /host (virtio-9p).
    #[arg(long)]
    pub share: Option<PathBuf>,
    /// Command run in the guest (sh -c; with --userland, bash in the toolroot userland)
    /// after the cases given with --cases, or alone: its exit status is the KTAP result
    /// of a case named `exec`, its output lands in cases/exec/output.log.
    #[arg(long)]
    pub exec: Option<String>,
    /// The toolroot's Debian userland in the guest: shared read-only at /userland (with a
    /// writable overlay), /dev, /proc, /sys, /host and the kernel's modules inside;
    /// --exec and --shell run there (bash, coreutils, util-linux, python3, nvme-cli, fio).
    #[arg(long)]
    pub userland: bool,
    /// QEMU to use instead of the toolroot's (a path, or a name on PATH; default
    /// $P2PLAB_QEMU): a developer's own build, >= 10.1 with vfio-user-pci (checked).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Boot against a lab already serving this topology (`p2plab serve --config FILE
    /// --dir DIR`) instead of starting the devices here: QEMU connects to DIR's device
    /// sockets and the counters come through DIR/control.sock. The lab keeps running
    /// (and keeps its state, e.g. namespace contents) after the run.
    #[arg(long, value_name = "DIR")]
    pub lab: Option<PathBuf>,
    /// Show the whole console (default: KTAP lines and errors only) and build details.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Refuse, before booting, a developer's kernel whose configuration lacks what the lab
/// needs (found beside the image, or in the modules' `build` tree). A kernel without a
/// findable `.config` boots with a note.
fn check_kernel_config(kernel: &Path, mods: &ModuleTree, pvh: bool) -> Result<()> {
    let candidates = [
        kernel.parent().map(|d| d.join(".config")),
        Some(mods.dir.join("build/.config")),
    ];
    let Some((path, text)) = candidates
        .into_iter()
        .flatten()
        .find_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
    else {
        eprintln!(
            "p2plab: note: no .config beside {} or in the modules' build tree: the lab's required options are not checked",
            kernel.display()
        );
        return Ok(());
    };
    match config_refusal(&text, pvh) {
        Some(why) => bail!(
            "{} cannot run the lab: {} {why}",
            kernel.display(),
            path.display()
        ),
        None => Ok(()),
    }
}

/// Why a kernel with configuration `text` cannot run the lab (booted through PVH if
/// `pvh`), or `None`.
fn config_refusal(text: &str, pvh: bool) -> Option<String> {
    let mut required = p2plab_toolroot::kconfig::LAB_REQUIRED.to_vec();
    if pvh {
        required.push("CONFIG_PVH");
    }
    let missing = p2plab_toolroot::kconfig::missing_builtin(text, &required);
    if !missing.is_empty() {
        return Some(format!(
            "lacks {} (=y); scripts/build-kernel merges scripts/kconfig/lab.config for you",
            missing.join(", ")
        ));
    }
    if pvh && p2plab_toolroot::kconfig::missing_builtin(text, &["CONFIG_KASAN"]).is_empty() {
        // Measured on 7.3.4: xen_prepare_pvh -> hypervisor_cpuid_base calls the
        // instrumented memcmp before kasan_early_init maps the shadow: a page fault
        // with no IDT yet, a triple fault before the first console line.
        return Some(
            "has CONFIG_KASAN=y: a KASAN kernel triple-faults at the PVH entry (the PVH \
             code calls the instrumented memcmp before KASAN's shadow exists); boot its \
             arch/x86/boot/bzImage instead (scripts/build-kernel --debug builds it)"
                .into(),
        );
    }
    None
}

/// The repository this binary was built from, else the first ancestor of the cwd with
/// `qemu-configs/`.
pub(crate) fn repo_root() -> PathBuf {
    let built = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    if built.join("qemu-configs").is_dir() {
        return built.canonicalize().unwrap_or_else(|_| built.to_path_buf());
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .find(|a| a.join("qemu-configs").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

pub(crate) fn resolve_config(p: &Path, repo: &Path) -> Result<PathBuf> {
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    for c in [
        repo.join(p),
        repo.join("qemu-configs").join(p),
        repo.join("qemu-configs").join(p).with_extension("toml"),
    ] {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "topology {} not found (also looked in {}/qemu-configs)",
        p.display(),
        repo.display()
    )
}

fn find_runner(args: &RunArgs, repo: &Path) -> Result<PathBuf> {
    let env = std::env::var_os("P2PLAB_GUEST_RUNNER")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if let Some(r) = args.runner.as_ref().or(env.as_ref()) {
        if r.is_file() {
            return Ok(r.clone());
        }
        bail!("guest runner {} not found", r.display());
    }
    let rel = "x86_64-unknown-linux-gnu/release/p2plab-guest";
    let mut cands = vec![];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        cands.push(PathBuf::from(t).join(rel));
    }
    cands.push(repo.join("target").join(rel));
    if let Ok(exe) = std::env::current_exe() {
        // …/target/release/p2plab → …/target/x86_64-unknown-linux-gnu/release/p2plab-guest
        if let Some(t) = exe.parent().and_then(Path::parent) {
            cands.push(t.join(rel));
        }
    }
    cands.into_iter().find(|c| c.is_file()).context(
        "guest runner not built: RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
         --target x86_64-unknown-linux-gnu -p p2plab-guest (or use scripts/run-guest, or --runner)",
    )
}

/// The lab serving `topo` at `dir` (`p2plab serve --dir DIR`): it must answer on its
/// control socket, serve exactly the topology's p2plab devices and have their sockets.
fn connect_lab(dir: &Path, topo: &Topology, config: &Path) -> Result<(RemoteLab, PathBuf)> {
    use std::os::unix::fs::FileTypeExt;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--lab {}", dir.display()))?;
    let remote = RemoteLab::connect(&dir).with_context(|| {
        format!(
            "--lab {}: no lab answers there (start one: p2plab serve --config {} --dir {})",
            dir.display(),
            config.display(),
            dir.display()
        )
    })?;
    let counters = remote.try_snapshot()?;
    let mut served: Vec<&str> = counters.devices.iter().map(|d| d.name.as_str()).collect();
    let mut wanted: Vec<&str> = topo
        .devices
        .iter()
        .filter(|d| d.kind.is_p2plab())
        .map(|d| d.name.as_str())
        .collect();
    served.sort_unstable();
    wanted.sort_unstable();
    if served != wanted {
        bail!(
            "--lab {} serves {served:?}, topology {} needs {wanted:?}",
            dir.display(),
            topo.name
        );
    }
    for name in wanted {
        let sock = dir.join(format!("{name}.sock"));
        let is_socket = std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
        anyhow::ensure!(is_socket, "--lab: {} is not a socket", sock.display());
    }
    Ok((remote, dir))
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(now).unwrap_or(0);
    // SAFETY: tm is plain data filled by localtime_r from a valid time_t.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The harness's own kernel parameters, before the topology's and `--append`'s words.
fn base_cmdline(verbose: bool, accel: Accel) -> String {
    // printk.time: kernel reports are told from the runner's output by their stamp.
    let mut cmdline = String::from("console=ttyS0 panic=-1 reboot=t printk.time=1");
    if !verbose {
        // Quiet, but warnings (KERN_WARNING = 4) still reach the console: a WARN, a
        // lockdep or KASAN report during a case fails it (ktap::splat).
        cmdline.push_str(" quiet loglevel=5");
    }
    if accel != Accel::Kvm {
        cmdline.push(' ');
        cmdline.push_str(qemu::TCG_KERNEL_PARAMS);
    }
    cmdline
}

pub fn run_main(args: RunArgs) -> Result<i32> {
    if args.list {
        for c in CASES {
            println!("{}", c.list_line());
        }
        return Ok(0);
    }
    let repo = repo_root();
    let runner = find_runner(&args, &repo)?;
    let config = resolve_config(&args.config, &repo)?;
    let topo = Topology::load(&config)?;
    let mut cases = if (args.shell || args.exec.is_some()) && args.cases.is_empty() {
        vec![]
    } else {
        select::select_cases(&args.cases, &topo)?
    };
    if args.exec.is_some() {
        if args.shell {
            bail!("--exec and --shell exclude each other");
        }
        cases.push(CaseId::Exec);
    }
    let home = image::p2plab_home();

    let run_dir = match &args.out {
        Some(d) => d.clone(),
        None => home.join("runs").join(format!(
            "{}-{}-{}",
            topo.name,
            timestamp(),
            std::process::id()
        )),
    };
    // The lab's sockets live here: a directory we create is the owner's only (0700).
    p2plab_lab::lab::create_private_dir(&run_dir)?;
    let run_dir = run_dir.canonicalize()?;
    let _ = std::fs::remove_dir_all(run_dir.join("cases"));
    for f in [
        "results.ktap",
        "counters.json",
        "console.log",
        "timing.json",
        "qemu.log",
        "cpu.json",
        "witness.sock",
    ] {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
    eprintln!(
        "p2plab: topology {} ({}), run directory {}",
        topo.name,
        config.display(),
        run_dir.display()
    );

    // --- image
    let t_image = Instant::now();
    let tr = Toolroot::locate(&home)?;
    let kernel = image::kernel(&tr, &home, args.kernel.as_deref())?;
    let mods = ModuleTree::open(
        args.modules
            .as_deref()
            .unwrap_or(&tr.root.join("usr/lib/modules").join(&tr.kver)),
    )?;
    if let Some(k) = &args.kernel {
        check_kernel_config(k, &mods, kernel.pvh)?;
    }
    if args.kernel.is_some() && args.modules.is_none() {
        eprintln!("p2plab: note: --kernel without --modules: using the toolroot's {} modules (they load only into that release)", tr.kver);
    }
    // A developer's module tree brings its own build dir; else the toolroot's headers.
    let kdir = args
        .modules
        .as_ref()
        .map(|_| mods.dir.join("build"))
        .filter(|b| b.join("Makefile").is_file());
    let user_qemu = args.qemu.clone().or_else(|| {
        std::env::var_os("P2PLAB_QEMU")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let qemu_bin = qemu::Qemu::select(&tr, user_qemu.as_deref())?;
    let needs_kmod = topo.devices.iter().any(|d| d.kind == DeviceKind::Gpu);
    let kmod = match image::build_kmod(&repo, &tr, kdir.as_deref(), &home, args.verbose) {
        Ok(k) => k,
        Err(e) if needs_kmod => {
            return Err(e.context(format!(
                "topology {} has a GPU and its cases need p2pgpu.ko",
                topo.name
            )))
        }
        Err(e) => {
            eprintln!("p2plab: note: no p2pgpu.ko (this topology has no GPU): {e:#}");
            None
        }
    };
    // Host directories for the guest: --share at /host, the toolroot as the userland, and
    // (userland with a developer's kernel) its module tree for modprobe.
    let mut shares: Vec<(&'static str, PathBuf)> = vec![];
    if let Some(d) = &args.share {
        let d = d
            .canonicalize()
            .with_context(|| format!("--share {}", d.display()))?;
        anyhow::ensure!(d.is_dir(), "--share {}: not a directory", d.display());
        shares.push(("host", d));
    }
    if args.userland {
        shares.push(("troot", tr.root.canonicalize()?));
        shares.push(("kmods", mods.dir.canonicalize()?));
    }
    let mut guest_modules: Vec<&str> = image::GUEST_MODULES.to_vec();
    if !shares.is_empty() {
        guest_modules.extend(image::SHARE_MODULES);
    }
    let base = image::base_image(
        &image::BaseInputs {
            toolroot: &tr,
            runner: &runner,
            modules: &mods,
            module_names: &guest_modules,
            kmod: kmod.as_deref(),
        },
        &home,
    )?;
    let mut layers = vec![base.clone()];
    if args.shell || cases.iter().any(|c| c.case().tools.contains(&Tool::Fio)) {
        layers.push(image::fio_layer(&tr, &home)?);
    }
    let exec = args.exec.as_ref().map(|cmd| ExecConfig {
        command: cmd.clone(),
        userland: args.userland,
    });
    let guest_run = select::guest_run(&topo, &cases, exec);
    let run_layer = image::run_layer(serde_json::to_string_pretty(&guest_run)?.as_bytes())?;
    let initrd = run_dir.join("initrd.cpio");
    image::concat(
        &layers.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        &run_layer,
        &initrd,
    )?;
    let image_secs = t_image.elapsed().as_secs_f64();
    if args.verbose {
        eprintln!(
            "p2plab: image ready in {image_secs:.2} s: kernel {} ({}), layers {:?}",
            kernel.path.display(),
            if kernel.pvh { "PVH" } else { "bzImage" },
            layers
        );
    }

    let plugin = if args.cpu_witness {
        Some(witness::find_plugin(args.witness_plugin.as_deref(), &repo)?)
    } else {
        None
    };
    let accel = match (args.cpu_witness, args.accel) {
        (true, Accel::Kvm) => bail!(
            "--cpu-witness needs TCG (QEMU plugins see no KVM guest accesses); drop --accel kvm"
        ),
        (true, _) => Accel::Tcg,
        (false, want) => qemu::resolve_accel(want, &qemu_bin, &home, &kernel.path, args.verbose)?,
    };
    qemu::prepare_qemu_nvme_files(&topo, &run_dir)?;

    // --- kernel command line
    let mut cmdline = base_cmdline(args.verbose, accel);
    for extra in
        std::iter::once(topo.machine.cmdline.as_str()).chain(args.append.iter().map(String::as_str))
    {
        if !extra.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(extra.trim());
        }
    }
    if args.shell {
        cmdline.push_str(" p2plab.shell=1");
    }
    for (tag, _) in &shares {
        cmdline.push_str(&format!(" p2plab.{tag}=1"));
    }
    // GPUs that publish no p2pmem, by Device Serial Number (what p2pgpu reads at probe).
    let no_p2pmem: Vec<String> = topo
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Gpu && !d.publishes_p2pmem())
        .map(|d| format!("{:#x}", p2plab_pci::dsn_from_str(&d.name)))
        .collect();
    if !no_p2pmem.is_empty() {
        cmdline.push_str(&format!(" p2pgpu.no_p2pmem={}", no_p2pmem.join(",")));
    }

    // --- lab
    let has_p2plab = topo.devices.iter().any(|d| d.kind.is_p2plab());
    supervise::install_signal_handlers();
    if args.shell {
        // The guest owns the terminal (raw); Ctrl-C goes to the guest, not to us.
        // SAFETY: setting a disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    }
    let (lab, remote) = match (&args.lab, has_p2plab) {
        (Some(dir), true) => (None, Some(connect_lab(dir, &topo, &config)?)),
        (Some(_), false) => bail!(
            "topology {} has no p2plab devices: --lab has nothing to connect to",
            topo.name
        ),
        (None, true) => (
            Some(Lab::start(&topo, &run_dir).context("starting the lab's devices")?),
            None,
        ),
        (None, false) => (None, None),
    };
    let view: Option<&dyn LabView> = match (&lab, &remote) {
        (Some(l), _) => Some(l),
        (None, Some((r, _))) => Some(r),
        (None, None) => None,
    };
    let sock_dir = remote
        .as_ref()
        .map_or(run_dir.as_path(), |(_, d)| d.as_path());
    let sockets: Vec<(String, PathBuf)> = topo
        .devices
        .iter()
        .filter(|d| d.kind.is_p2plab())
        .map(|d| {
            let p = lab
                .as_ref()
                .and_then(|l| l.socket_path(&d.name))
                .unwrap_or_else(|| sock_dir.join(format!("{}.sock", d.name)));
            (d.name.clone(), p)
        })
        .collect();

    let qargs = qemu::args(&Launch {
        topo: &topo,
        kernel: &kernel.path,
        initrd: &initrd,
        accel,
        cmdline: cmdline.clone(),
        sockets,
        run_dir: &run_dir,
        shell: args.shell,
        extra: &args.qemu_args,
        witness: plugin.as_deref().map(|p| (p, run_dir.join("witness.sock"))),
        shares: shares.clone(),
    })?;
    let mut cmd = qemu_bin.command();
    cmd.args(&qargs);
    let argv: Vec<String> = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    let resolved = json!({
        "topology_file": config,
        "topology": topo.name,
        "description": topo.description,
        "topology_toml": std::fs::read_to_string(&config).unwrap_or_default(),
        "args": &args,
        "cases": cases.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "guest_run_json": guest_run,
        "kernel": {"path": kernel.path, "pvh": kernel.pvh, "release": mods.release()},
        "toolroot": tr.describe(),
        "qemu_binary": qemu_bin.describe(),
        "shares": shares.iter().map(|(t, d)| json!({"tag": t, "dir": d})).collect::<Vec<_>>(),
        "modules": mods.dir,
        "p2pgpu_ko": kmod,
        "initrd_layers": layers,
        "accel": accel,
        "cmdline": cmdline,
        "qemu": argv,
        "runner": runner,
        "cpu_witness": plugin,
        "lab": remote.as_ref().map(|(_, d)| d),
    });
    std::fs::write(
        run_dir.join("run.json"),
        serde_json::to_string_pretty(&resolved)?,
    )?;
    eprintln!(
        "p2plab: booting {} ({}, {}, -cpu {}) with {} case(s): {}",
        kernel
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        if kernel.pvh { "PVH" } else { "bzImage" },
        match accel {
            Accel::Kvm => "KVM".to_string(),
            _ => format!("TCG, {}", qemu::TCG_KERNEL_PARAMS),
        },
        crate::qemu::guest_cpu(&topo.machine.cpu, accel),
        cases.len(),
        cases.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
    );

    let timeout = match (args.timeout, args.shell) {
        (Some(0), _) | (None, true) => None,
        (Some(s), _) => Some(Duration::from_secs(s)),
        (None, false) => Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    };
    let result = if args.shell {
        supervise::shell(cmd, &run_dir, timeout)
    } else {
        supervise::supervise(
            cmd,
            &Supervision {
                topo: &topo,
                cases: &cases,
                lab: view,
                run_dir: &run_dir,
                timeout,
                boot_timeout: (args.boot_timeout > 0)
                    .then(|| Duration::from_secs(args.boot_timeout)),
                kernel_elf: kernel.pvh.then_some(kernel.path.as_path()),
                image_secs,
                verbose: args.verbose,
                cpu_witness: args.cpu_witness,
            },
        )
    };
    // Whole-run counters for every run, a free-form --shell included (its proof). With
    // --lab they are the serving lab's, over its whole life.
    if let Some(view) = view {
        let _ = std::fs::write(
            run_dir.join("counters.json"),
            serde_json::to_string_pretty(&view.snapshot())?,
        );
        if let Some(lab) = lab {
            lab.shutdown();
        }
    } else {
        std::fs::write(
            run_dir.join("counters.json"),
            serde_json::to_string_pretty(&json!({"devices": []}))?,
        )?;
    }
    let code = result?;
    eprintln!("p2plab: run directory {}", run_dir.display());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kasan_vmlinux_is_refused_and_its_bzimage_is_not() {
        let base: String = p2plab_toolroot::kconfig::LAB_REQUIRED
            .iter()
            .map(|o| format!("{o}=y\n"))
            .collect::<String>()
            + "CONFIG_PVH=y\n";
        assert_eq!(config_refusal(&base, true), None);
        let kasan = base.clone() + "CONFIG_KASAN=y\n";
        assert!(config_refusal(&kasan, true).is_some_and(|w| w.contains("bzImage")));
        assert_eq!(config_refusal(&kasan, false), None);
        let no_p2p = base.replace("CONFIG_PCI_P2PDMA=y\n", "");
        assert!(config_refusal(&no_p2p, false).is_some_and(|w| w.contains("CONFIG_PCI_P2PDMA")));
    }

    #[test]
    fn tcg_guests_boot_without_the_clocksource_watchdog_and_kvm_guests_with_it() {
        let words = |v, a| -> Vec<String> {
            base_cmdline(v, a)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert!(words(false, Accel::Tcg).contains(&"tsc=nowatchdog".to_string()));
        assert!(words(true, Accel::Tcg).contains(&"tsc=nowatchdog".to_string()));
        assert!(!words(false, Accel::Kvm)
            .iter()
            .any(|w| w.starts_with("tsc=")));
        // Quiet boots keep warnings on the console (splat detection needs them).
        assert!(words(false, Accel::Kvm).contains(&"loglevel=5".to_string()));
        assert!(!words(true, Accel::Kvm).contains(&"quiet".to_string()));
    }
}
