//! `p2plab run`: the guest launcher.
//!
//! Builds (or reuses) the guest image, starts the topology's p2plab devices in-process
//! (`lab::Lab`), boots QEMU with the topology's PCIe hierarchy, streams the serial
//! console, snapshots the devices' counters at each case boundary the guest runner marks
//! (`P2PLAB-CASE-BEGIN/END <case>`, answered with `P2PLAB-ACK <case>`), and writes the run
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

use crate::assertions;
use crate::config::{DeviceKind, Topology};
use crate::counters;
use crate::image::{self, ModuleTree, Toolroot};
use crate::ktap::{self, Verdict};
use crate::lab::Lab;
use crate::qemu::{self, Accel, Launch};
use crate::witness::{self, Witness};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// PCI ids the guest uses to find p2plab GPU-kind devices (the gpu crate's).
pub const GPU_PCI_IDS: (u16, u16) = (p2plab_gpu::pci::VENDOR_ID, p2plab_gpu::pci::DEVICE_ID);

const DEFAULT_TIMEOUT_SECS: u64 = 900;

/// The case an `--exec` command runs as (the runner knows the name too).
const EXEC_CASE: &str = "exec";

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
    /// Comma-separated cases (default: every case valid for the topology, or none with
    /// --exec/--shell; "all": every valid case; "none": boot only).
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
    /// Extra QEMU argument, appended verbatim (repeatable).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Extra guest kernel command line (e.g. `nvme.use_cmb_sqes=0`; module.param=value
    /// words are passed to insmod by the guest's /init).
    #[arg(long)]
    pub append: Option<String>,
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
    let mut required = p2plab_toolroot::kconfig::LAB_REQUIRED.to_vec();
    if pvh {
        required.push("CONFIG_PVH");
    }
    let missing = p2plab_toolroot::kconfig::missing_builtin(&text, &required);
    if !missing.is_empty() {
        bail!(
            "{} cannot run the lab: {} lacks {} (=y); scripts/build-kernel merges scripts/kconfig/lab.config for you",
            kernel.display(),
            path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The repository this binary was built from, else the first ancestor of the cwd with
/// `qemu-configs/`.
fn repo_root() -> PathBuf {
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

fn resolve_config(p: &Path, repo: &Path) -> Result<PathBuf> {
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

/// A guest case as the runner's `--list-json` describes it.
#[derive(Debug, Clone, serde::Deserialize)]
struct CaseInfo {
    name: String,
    #[serde(default)]
    when: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    /// Further topology conditions (see the runner's `cases::NEEDS`).
    #[serde(default)]
    needs: Vec<String>,
}

fn case_table(runner: &Path) -> Result<Vec<CaseInfo>> {
    let o = Command::new(runner)
        .arg("--list-json")
        .output()
        .with_context(|| format!("running {}", runner.display()))?;
    if !o.status.success() {
        bail!("{} --list-json failed", runner.display());
    }
    serde_json::from_slice(&o.stdout).context("parsing the runner's case table")
}

/// Why `c` does not apply to `t` (None: it does).
fn not_applicable(c: &CaseInfo, t: &Topology) -> Option<String> {
    for r in &c.roles {
        let set = match r.as_str() {
            "client" => t.roles.client.is_some(),
            "provider" => t.roles.provider.is_some(),
            "peer" => t.roles.peer.is_some(),
            "importer" => t.roles.importer.is_some(),
            "exporter" => t.roles.exporter.is_some(),
            _ => false,
        };
        if !set {
            return Some(format!("needs roles.{r}"));
        }
    }
    let role_dev = |r: &Option<String>| r.as_deref().and_then(|n| t.device(n));
    for n in &c.needs {
        let ok = match n.as_str() {
            "p2plab-client" => {
                role_dev(&t.roles.client).is_some_and(|d| d.kind == DeviceKind::Nvme)
            }
            "client-cmb" => role_dev(&t.roles.client)
                .is_some_and(|d| d.kind != DeviceKind::Gpu && d.cmb_size() > 0),
            "p2plab-peer" => role_dev(&t.roles.peer)
                .is_some_and(|d| d.kind == DeviceKind::Nvme && d.cmb_size() > 0),
            "root-ports" => match (role_dev(&t.roles.client), role_dev(&t.roles.provider)) {
                (Some(c), Some(p)) => {
                    c.port == crate::config::Port::Root || p.port == crate::config::Port::Root
                }
                _ => false,
            },
            "p2plab-device" => t.devices.iter().any(|d| d.kind.is_p2plab()),
            "gpu-provider" => {
                role_dev(&t.roles.provider).is_some_and(|d| d.kind == DeviceKind::Gpu)
            }
            // Benchmarks run only when named (`--cases bench`, `p2plab bench`).
            "on-request" => false,
            _ => false,
        };
        if !ok {
            return Some(format!("needs {n}"));
        }
    }
    match (c.when.as_str(), qemu::p2p_allowed(t)) {
        ("p2p-allowed", Some(false)) => Some("P2P is refused on this topology".into()),
        ("p2p-refused", Some(true)) => Some("P2P is allowed on this topology".into()),
        _ => None,
    }
}

fn select_cases(args: &RunArgs, table: &[CaseInfo], t: &Topology) -> Result<Vec<CaseInfo>> {
    let want: Vec<&str> = args
        .cases
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if want == ["none"] {
        return Ok(vec![]);
    }
    if want.is_empty() || want == ["all"] {
        return Ok(table
            .iter()
            .filter(|c| not_applicable(c, t).is_none())
            .cloned()
            .collect());
    }
    let mut out = vec![];
    for w in want {
        let c = table.iter().find(|c| c.name == w).with_context(|| {
            format!(
                "unknown case '{w}' (known: {})",
                table
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        if let Some(why) = not_applicable(c, t).filter(|w| w != "needs on-request") {
            eprintln!(
                "p2plab: warning: case {w} may not apply to topology {}: {why}",
                t.name
            );
        }
        out.push(c.clone());
    }
    Ok(out)
}

/// `/etc/p2plab/run.json` for the guest.
fn guest_run_json(t: &Topology, cases: &[CaseInfo]) -> Value {
    let devices: Vec<Value> = t
        .devices
        .iter()
        .map(|d| {
            let mut v = json!({"name": d.name, "kind": d.kind.as_str()});
            match d.kind {
                DeviceKind::Nvme | DeviceKind::QemuNvme => {
                    v["serial"] = json!(d.serial());
                    v["cmb_size"] = json!(d.cmb_size());
                }
                DeviceKind::Gpu => {
                    v["vendor"] = json!(GPU_PCI_IDS.0);
                    v["device"] = json!(GPU_PCI_IDS.1);
                    v["vram_size"] = json!(d.vram_size());
                    v["p2pmem"] = json!(d.publishes_p2pmem());
                }
            }
            v
        })
        .collect();
    json!({
        "cases": cases.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "devices": devices,
        "roles": {"client": t.roles.client, "provider": t.roles.provider, "peer": t.roles.peer,
                  "importer": t.roles.importer, "exporter": t.roles.exporter},
    })
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

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
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
    let t = l.trim_start();
    t.starts_with("KTAP version")
        || t.starts_with("1..")
        || t.starts_with("ok ")
        || t.starts_with("not ok ")
        || t.starts_with("# ")
        || [
            "Kernel panic",
            "BUG:",
            "Oops",
            "Call Trace",
            "error",
            "Error",
            "failed",
            "WARNING:",
            "p2plab-init",
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

pub fn run_main(args: RunArgs) -> Result<i32> {
    let repo = repo_root();
    let runner = find_runner(&args, &repo)?;
    if args.list {
        let o = Command::new(&runner)
            .arg("--list")
            .output()
            .with_context(|| format!("running {}", runner.display()))?;
        std::io::stdout().write_all(&o.stdout)?;
        return Ok(0);
    }
    let config = resolve_config(&args.config, &repo)?;
    let topo = Topology::load(&config)?;
    let table = case_table(&runner)?;
    let mut cases = if (args.shell || args.exec.is_some()) && args.cases.is_empty() {
        vec![]
    } else {
        select_cases(&args, &table, &topo)?
    };
    if args.exec.is_some() {
        if args.shell {
            bail!("--exec and --shell exclude each other");
        }
        cases.push(CaseInfo {
            name: EXEC_CASE.into(),
            when: "any".into(),
            roles: vec![],
            tools: vec!["fio".into()],
            needs: vec![],
        });
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
    crate::lab::create_private_dir(&run_dir)?;
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
    if args.shell || cases.iter().any(|c| c.tools.iter().any(|t| t == "fio")) {
        layers.push(image::fio_layer(&tr, &home)?);
    }
    let mut guest_json = guest_run_json(&topo, &cases);
    if let Some(cmd) = &args.exec {
        guest_json["exec"] = json!({"command": cmd, "userland": args.userland});
    }
    let run_layer = image::run_layer(serde_json::to_string_pretty(&guest_json)?.as_bytes())?;
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
    // printk.time: kernel reports are told from the runner's output by their stamp.
    let mut cmdline = String::from("console=ttyS0 panic=-1 reboot=t printk.time=1");
    if !args.verbose {
        // Quiet, but warnings (KERN_WARNING = 4) still reach the console: a WARN, a
        // lockdep or KASAN report during a case fails it (ktap::splat).
        cmdline.push_str(" quiet loglevel=5");
    }
    for extra in [
        topo.machine.cmdline.as_str(),
        args.append.as_deref().unwrap_or(""),
    ] {
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
    install_signal_handlers();
    if args.shell {
        // The guest owns the terminal (raw); Ctrl-C goes to the guest, not to us.
        // SAFETY: setting a disposition; no handler code runs.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    }
    let lab = if has_p2plab {
        Some(Lab::start(&topo, &run_dir).context("starting the lab's devices")?)
    } else {
        None
    };
    let sockets: Vec<(String, PathBuf)> = topo
        .devices
        .iter()
        .filter(|d| d.kind.is_p2plab())
        .map(|d| {
            let p = lab
                .as_ref()
                .and_then(|l| l.socket_path(&d.name))
                .unwrap_or_else(|| run_dir.join(format!("{}.sock", d.name)));
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
        "cases": cases.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "guest_run_json": guest_json,
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
    });
    std::fs::write(
        run_dir.join("run.json"),
        serde_json::to_string_pretty(&resolved)?,
    )?;
    eprintln!(
        "p2plab: booting {} ({}, {}) with {} case(s): {}",
        kernel
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        if kernel.pvh { "PVH" } else { "bzImage" },
        match accel {
            Accel::Kvm => "KVM",
            _ => "TCG",
        },
        cases.len(),
        cases
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );

    let timeout = match (args.timeout, args.shell) {
        (Some(0), _) | (None, true) => None,
        (Some(s), _) => Some(Duration::from_secs(s)),
        (None, false) => Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    };
    let result = if args.shell {
        shell(cmd, &run_dir, timeout)
    } else {
        supervise(
            cmd,
            &args,
            &topo,
            &cases,
            lab.as_ref(),
            &run_dir,
            timeout,
            image_secs,
        )
    };
    // Whole-run counters for every run, a free-form --shell included (its proof).
    if let Some(lab) = lab {
        let _ = std::fs::write(
            run_dir.join("counters.json"),
            serde_json::to_string_pretty(&lab.snapshot())?,
        );
        lab.shutdown();
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

fn shell(mut cmd: Command, run_dir: &Path, timeout: Option<Duration>) -> Result<i32> {
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
    begin: Option<(Instant, Value)>,
    seconds: Option<f64>,
    delta: Option<Value>,
    /// CPU witness: the windows armed at BEGIN and the snapshot then.
    cpu_begin: Option<(Vec<crate::lab::BarWindow>, tcg_witness::Snapshot)>,
    /// CPU witness: the case's `cpu.json`.
    cpu: Option<Value>,
    /// Counter snapshots the guest reported during the case (`P2PLAB-VENDOR-LOG <json>`,
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

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename these"
)]
fn supervise(
    mut cmd: Command,
    args: &RunArgs,
    topo: &Topology,
    cases: &[CaseInfo],
    lab: Option<&Lab>,
    run_dir: &Path,
    timeout: Option<Duration>,
    image_secs: f64,
) -> Result<i32> {
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

    let snap = || lab.map_or_else(|| json!({"devices": []}), Lab::snapshot);
    // The plugin binds its socket at QEMU start; connect lazily at the first case.
    let mut cpu = args
        .cpu_witness
        .then(|| Witness::new(run_dir.join("witness.sock")));
    let mut cpu_secs = 0.0f64;
    let mut runs: BTreeMap<String, CaseRun> = BTreeMap::new();
    // The case between its BEGIN and END markers (guest reports are attached to it).
    let mut open_case: Option<String> = None;
    // Kernel reports outside any case (boot, between cases, shutdown).
    let mut outside_splats: Vec<String> = vec![];
    let mut ktap: Vec<String> = vec![];
    let mut in_ktap = false;
    let mut reached_end = false;
    let mut first_case: Option<f64> = None;
    let mut stop_reason: Option<String> = None;
    let ack = |stdin: &mut std::process::ChildStdin, name: &str| {
        let _ = stdin.write_all(format!("P2PLAB-ACK {name}\n").as_bytes());
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
                break;
            }
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
        if args.verbose {
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
        if let Some(r) = open_case.as_ref().and_then(|c| runs.get_mut(c)) {
            if !l.trim_start().starts_with("P2PLAB-CASE-") {
                r.output.push(l.clone());
            }
            if !r.splats.is_empty() && ktap::is_kernel_line(&l) && r.splat_log.len() < 200 {
                r.splat_log.push(l.clone());
            }
        }
        if let (Some(i), Some(c)) = (l.find("P2PLAB-VENDOR-LOG "), open_case.as_ref()) {
            runs.entry(c.clone())
                .or_default()
                .reported
                .push(l[i + "P2PLAB-VENDOR-LOG ".len()..].trim().to_string());
        }
        if let Some(i) = l.find("P2PLAB-CASE-BEGIN ") {
            let name = l[i + "P2PLAB-CASE-BEGIN ".len()..].trim().to_string();
            first_case.get_or_insert(t0.elapsed().as_secs_f64());
            let r = runs.entry(name.clone()).or_default();
            if let Some(w) = cpu.as_mut() {
                // BARs are programmed after boot: take the windows as they are now.
                let tw = Instant::now();
                let windows = lab.map(Lab::bar_windows).unwrap_or_default();
                match w.set_ranges(&windows).and_then(|()| w.snapshot()) {
                    Ok(s) => r.cpu_begin = Some((windows, s)),
                    Err(e) => eprintln!("p2plab: warning: CPU witness at {name} begin: {e:#}"),
                }
                cpu_secs += tw.elapsed().as_secs_f64();
            }
            r.begin = Some((Instant::now(), snap()));
            open_case = Some(name.clone());
            ack(&mut stdin, &name);
        } else if let Some(i) = l.find("P2PLAB-CASE-END ") {
            let name = l[i + "P2PLAB-CASE-END ".len()..].trim().to_string();
            let end = snap();
            let r = runs.entry(name.clone()).or_default();
            if let Some((t, begin)) = &r.begin {
                r.seconds = Some(t.elapsed().as_secs_f64());
                let d = counters::delta(begin, &end);
                let dir = run_dir.join("cases").join(&name);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("counters.json"), serde_json::to_string_pretty(&d)?)?;
                r.delta = Some(d);
                r.reported_fails = assertions::check_reported(begin, &end, &r.reported);
                if name == EXEC_CASE {
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
        } else if l.contains("P2PLAB-RUN-END") {
            reached_end = true;
            in_ktap = false;
        } else if let Some(i) = l.find("KTAP version") {
            // SeaBIOS leaves "Booting from ROM.." without a newline before it.
            in_ktap = true;
            ktap.push(l[i..].to_string());
        } else if in_ktap && ktap_line(&l) {
            ktap.push(l.trim_start().to_string());
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
            if args.cpu_witness {
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
        if !seen.contains_key(&c.name) {
            out.push(format!(
                "not ok {} {} # missing: {why_missing}",
                i + 1,
                c.name
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
    std::fs::write(run_dir.join("results.ktap"), out.join("\n") + "\n")?;

    let mut all_ok = reached_end && stop_reason.is_none() && outside_splats.is_empty();
    let mut timing = json!({"image_seconds": image_secs, "boot_to_first_case_seconds": first_case, "total_seconds": total, "cases": {}});
    if args.cpu_witness {
        timing["cpu_witness_control_seconds"] = json!(cpu_secs);
    }
    eprintln!("p2plab: {:<16} {:<8} {:>8}", "case", "result", "seconds");
    for c in cases {
        let (verdict, msg) =
            seen.get(&c.name)
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
        let secs = runs.get(&c.name).and_then(|r| r.seconds);
        timing["cases"][&c.name] = json!(secs);
        let fails = seen.get(&c.name).map(|s| s.2.clone()).unwrap_or_default();
        let dir = run_dir.join("cases").join(&c.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("result.json"),
            serde_json::to_string_pretty(&json!({
                "case": c.name, "topology": topo.name, "result": verdict.as_str(),
                "seconds": secs, "message": msg, "host_failures": fails,
            }))?,
        )?;
        eprintln!(
            "p2plab: {:<16} {:<8} {:>8}{}",
            c.name,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(s: &str) -> Topology {
        let t: Topology = toml::from_str(s).unwrap();
        t.validate().unwrap();
        t
    }

    #[test]
    fn applicability_follows_the_topology_rules() {
        let sw = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='qemu-nvme'\n[[device]]\nname='b'\nkind='qemu-nvme'\n");
        let rp = topo("[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='qemu-nvme'\nport='root'\n[[device]]\nname='b'\nkind='qemu-nvme'\nport='root'\n");
        let epyc = topo("[machine]\ncpu='EPYC'\n[roles]\nclient='a'\nprovider='b'\n[[device]]\nname='a'\nkind='nvme'\nport='root'\n[[device]]\nname='b'\nkind='gpu'\nport='root'\n");
        let case = |when: &str| CaseInfo {
            name: "x".into(),
            when: when.into(),
            roles: vec!["client".into(), "provider".into()],
            tools: vec![],
            needs: vec![],
        };
        assert!(not_applicable(&case("p2p-allowed"), &sw).is_none());
        assert!(not_applicable(&case("p2p-refused"), &sw).is_some());
        assert!(not_applicable(&case("p2p-refused"), &rp).is_none());
        assert!(not_applicable(&case("p2p-allowed"), &epyc).is_none());
        let none = topo("[[device]]\nname='a'\nkind='nvme'\n");
        assert!(not_applicable(&case("any"), &none)
            .unwrap()
            .contains("roles.client"));
    }
}
