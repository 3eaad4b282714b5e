//! The QEMU command line of a topology, and the accelerator choice.
//!
//! Topology rules (shared/DESIGN.md §4): `port = "switch"` devices sit below one emulated
//! PCIe switch (`pcie-root-port` → `x3130-upstream` → one `xio3130-downstream` each, no
//! ACS: P2P allowed); `port = "root"` devices get their own `pcie-root-port` (P2P refused
//! unless the CPU is AMD family >= 0x17, e.g. `-cpu EPYC`). Guest RAM is a shared memfd so
//! it reaches the vfio-user servers by fd.

use crate::image::{KeyHasher, Toolroot};
use anyhow::{bail, Context, Result};
use p2plab_lab::config::{DeviceKind, Port, Topology};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// vfio-user request timeout QEMU applies (ms); DESIGN §3: a stall beyond it is fatal.
pub const VFIO_USER_MSG_TIMEOUT_MS: u32 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Tcg,
    Kvm,
}

/// CPUID features whose string instructions TCG runs one element per step: with them the
/// guest kernel's `memcpy`, `copy_{to,from}_user` and `clear_page` use `rep movsb` /
/// `rep stosb`, eight times the steps of the `movsq` / `stosq` forms it falls back to.
/// Measured (switch, `-cpu max`, TCG): the `copy-engine` case's 64 MiB `copy_from_user`
/// ran at 8.7–12.8 MiB/s with them and at 78–96 MiB/s without.
pub const TCG_SLOW_STRING_OPS: [&str; 2] = ["erms", "fsrm"];

/// The `-cpu` value for a topology's `machine.cpu`: under TCG the features of
/// [`TCG_SLOW_STRING_OPS`] are turned off, unless the topology names one of them itself
/// (`cpu = "max,+erms"` keeps ERMS). KVM gets the model as written.
pub fn guest_cpu(cpu: &str, accel: Accel) -> String {
    let lower = cpu.to_ascii_lowercase();
    let named = |f: &str| {
        lower
            .split(',')
            .skip(1)
            .any(|o| o.trim_start_matches(['+', '-']).split('=').next() == Some(f))
    };
    if accel == Accel::Kvm || TCG_SLOW_STRING_OPS.iter().any(|f| named(f)) {
        return cpu.to_string();
    }
    let mut s = cpu.to_string();
    for f in TCG_SLOW_STRING_OPS {
        s.push_str(&format!(",-{f}"));
    }
    s
}

/// Kernel parameter the harness adds under TCG, before the topology's and `--append`'s
/// words (a later `tsc=watchdog` turns the watchdog back on).
///
/// Linux 7.x's clocksource watchdog (the 2026 rewrite) checks each other CPU's TSC
/// against the boot CPU's from its timer with interrupts off, giving the other CPU 50 µs
/// measured by `ktime_get_raw_fast_ns()`. Until `fs_initcall` timekeeping runs on
/// jiffies, so with interrupts off on both CPUs that clock stands still: when the other
/// CPU sits in `stop_machine()` with interrupts off, waiting for this one, neither moves
/// again. A TCG guest meets it when the host starves a vCPU thread (1 boot in 67 with
/// three guests and two CPU hogs on 2 cores; once in CI): vCPU 0 in
/// `watchdog_check_skew`, vCPU 1 in `multi_cpu_stop`, both with interrupts off, no
/// console output. Under TCG the TSC is QEMU's reading of the host's monotonic clock:
/// there is nothing for the watchdog to catch. KVM guests get no parameter.
pub const TCG_KERNEL_PARAMS: &str = "tsc=nowatchdog";

/// Lowest QEMU with `-device vfio-user-pci`.
pub const MIN_QEMU: (u32, u32) = (10, 1);

/// The QEMU that boots the lab: the toolroot's (through its own loader), or a host build
/// the developer names (`--qemu` / `P2PLAB_QEMU`), checked up front.
pub struct Qemu {
    /// The binary (inside the toolroot, or the developer's).
    pub binary: PathBuf,
    /// `11.1.3`.
    pub version: String,
    /// `toolroot` or `host`.
    pub source: &'static str,
    toolroot: Option<(PathBuf, String, PathBuf, PathBuf)>,
}

/// `QEMU emulator version 11.1.3 (Debian …)` → `11.1.3`.
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("QEMU emulator version "))?;
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// `(major, minor)` of a version string.
fn major_minor(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

impl Qemu {
    /// `user` (a path or a name on PATH) when given, else the toolroot's.
    pub fn select(tr: &Toolroot, user: Option<&Path>) -> Result<Qemu> {
        let Some(user) = user else {
            let mut q = Qemu {
                binary: tr.root.join("usr/bin/qemu-system-x86_64"),
                version: tr.stamp.get("qemu_version").unwrap_or_default().to_string(),
                source: "toolroot",
                toolroot: Some((
                    tr.loader(),
                    tr.library_path(),
                    tr.root.join("usr/share/qemu"),
                    tr.root.join("usr/share/seabios"),
                )),
            };
            if q.version.is_empty() {
                q.version = probe_version(q.command())?;
            }
            return Ok(q);
        };
        let binary = if user.components().count() == 1 && !user.exists() {
            find_on_path(user)
                .with_context(|| format!("--qemu {}: not found on PATH", user.display()))?
        } else {
            user.to_path_buf()
        };
        let version = probe_version(Command::new(&binary))
            .with_context(|| format!("--qemu {}", binary.display()))?;
        if major_minor(&version) < MIN_QEMU {
            bail!(
                "--qemu {}: QEMU {version} is too old; the lab needs >= {}.{} (vfio-user-pci)",
                binary.display(),
                MIN_QEMU.0,
                MIN_QEMU.1
            );
        }
        let o = Command::new(&binary)
            .args(["-device", "help"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("--qemu {}: -device help", binary.display()))?;
        if !String::from_utf8_lossy(&o.stdout).contains("\"vfio-user-pci\"") {
            bail!(
                "--qemu {}: QEMU {version} has no vfio-user-pci device (configure with --enable-vfio-user-client)",
                binary.display()
            );
        }
        Ok(Qemu {
            binary,
            version,
            source: "host",
            toolroot: None,
        })
    }

    /// A command starting this QEMU (firmware search path set for the toolroot's).
    pub fn command(&self) -> Command {
        match &self.toolroot {
            Some((loader, libs, qemu_share, seabios)) => {
                let mut c = Command::new(loader);
                c.arg("--library-path")
                    .arg(libs)
                    .arg(&self.binary)
                    .arg("-L")
                    .arg(qemu_share)
                    .arg("-L")
                    .arg(seabios);
                if let Some(root) = self.binary.parent().and_then(Path::parent) {
                    c.env("QEMU_MODULE_DIR", root.join("lib/x86_64-linux-gnu/qemu"));
                }
                c
            }
            None => Command::new(&self.binary),
        }
    }

    /// For `run.json`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"binary": self.binary, "version": self.version, "source": self.source})
    }
}

fn probe_version(mut c: Command) -> Result<String> {
    let o = c
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("running QEMU --version")?;
    let text = String::from_utf8_lossy(&o.stdout);
    parse_qemu_version(&text).with_context(|| {
        format!(
            "QEMU --version printed no version ({}): {}{}",
            o.status,
            text.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Everything the command line depends on besides the topology.
pub struct Launch<'a> {
    pub topo: &'a Topology,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel, // Tcg or Kvm (resolved)
    pub cmdline: String,
    /// vfio-user socket per p2plab device name.
    pub sockets: Vec<(String, PathBuf)>,
    pub run_dir: &'a Path,
    /// Interactive: serial muxed with the monitor on the terminal, logged by QEMU.
    pub shell: bool,
    pub extra: &'a [String],
    /// CPU witness: the TCG plugin and its control socket (TCG only).
    pub witness: Option<(&'a Path, PathBuf)>,
    /// Host directories shared read-only with the guest over virtio-9p: (mount tag, dir).
    pub shares: Vec<(&'static str, PathBuf)>,
}

/// The QEMU arguments (after the binary and its -L options).
pub fn args(l: &Launch) -> Result<Vec<String>> {
    let t = l.topo;
    let m = &t.machine;
    let mem = m.memory.0;
    let mut a: Vec<String> = vec![];
    let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
    push(&["-nodefaults", "-nographic", "-no-reboot"]);
    push(&["-machine", "q35,memory-backend=ram"]);
    match l.accel {
        Accel::Kvm => push(&["-accel", "kvm"]),
        _ => push(&["-accel", "tcg"]),
    }
    let mut cpu = guest_cpu(&m.cpu, l.accel);
    if let Some(pb) = m.phys_bits {
        cpu.push_str(&format!(",phys-bits={pb}"));
    }
    push(&["-cpu", &cpu, "-smp", &m.smp.to_string()]);
    push(&["-m", &format!("{}M", mem >> 20)]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=ram,size={}M,share=on", mem >> 20),
    ]);
    push(&[
        "-kernel",
        &l.kernel.to_string_lossy(),
        "-initrd",
        &l.initrd.to_string_lossy(),
        "-append",
        &l.cmdline,
    ]);
    if l.shell {
        let log = l.run_dir.join("console.log");
        push(&[
            "-chardev",
            &format!("stdio,id=con,mux=on,signal=off,logfile={}", log.display()),
        ]);
        push(&[
            "-serial",
            "chardev:con",
            "-mon",
            "chardev=con,mode=readline",
        ]);
    } else {
        push(&[
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
            "-monitor",
            "none",
        ]);
        // QMP for the stall report (crate::stall): vCPU registers of a stuck guest. A
        // socket path must fit sun_path (108 bytes with its NUL); a longer run directory
        // boots without it (the report then says QMP could not be reached).
        let qmp = l.run_dir.join(crate::stall::QMP_SOCKET);
        let path = qmp.to_string_lossy();
        if path.len() < 108 && !path.contains(',') {
            push(&["-qmp", &format!("unix:{path},server=on,wait=off")]);
        }
    }

    // Read-only host directories (virtio-9p on pcie.0, away from the lab's hierarchy).
    for (tag, dir) in &l.shares {
        let path = dir.to_string_lossy();
        if path.contains(',') {
            anyhow::bail!("shared directory {path}: a ',' cannot be passed to -fsdev");
        }
        push(&[
            "-fsdev",
            &format!("local,id=fs-{tag},path={path},security_model=none,readonly=on"),
            "-device",
            &format!("virtio-9p-pci,fsdev=fs-{tag},mount_tag={tag}"),
        ]);
    }

    // PCIe hierarchy
    let on_switch = t.devices.iter().filter(|d| d.port == Port::Switch).count();
    let mut slot = 1;
    if on_switch > 0 {
        push(&[
            "-device",
            &format!("pcie-root-port,id=rp-switch,bus=pcie.0,chassis=1,slot={slot}"),
        ]);
        slot += 1;
        push(&["-device", "x3130-upstream,id=switch-up,bus=rp-switch"]);
    }
    let mut down = 0;
    for d in &t.devices {
        let bus = match d.port {
            Port::Switch => {
                let id = format!("switch-dn{down}");
                push(&[
                    "-device",
                    &format!("xio3130-downstream,id={id},bus=switch-up,chassis=2,slot={down}"),
                ]);
                down += 1;
                id
            }
            Port::Root => {
                let id = format!("rp-{}", d.name);
                push(&[
                    "-device",
                    &format!("pcie-root-port,id={id},bus=pcie.0,chassis=1,slot={slot}"),
                ]);
                slot += 1;
                id
            }
        };
        match d.kind {
            DeviceKind::Nvme | DeviceKind::Gpu => {
                let sock = l
                    .sockets
                    .iter()
                    .find(|(n, _)| *n == d.name)
                    .map(|(_, p)| p.clone())
                    .with_context(|| format!("no vfio-user socket for {}", d.name))?;
                let dev = serde_json::json!({
                    "driver": "vfio-user-pci",
                    "id": d.name,
                    "socket": {"type": "unix", "path": sock},
                    "bus": bus,
                    "x-msg-timeout": VFIO_USER_MSG_TIMEOUT_MS,
                });
                push(&["-device", &dev.to_string()]);
            }
            DeviceKind::QemuNvme => {
                let mut nsdevs = vec![];
                for (i, _ns) in d.namespaces().iter().enumerate() {
                    let f = d.namespace_file(i, l.run_dir);
                    let drv = format!("drv-{}-{}", d.name, i + 1);
                    push(&[
                        "-drive",
                        &format!(
                            "file={},if=none,id={drv},format=raw",
                            qemu_escape(&f.to_string_lossy())
                        ),
                    ]);
                    nsdevs.push(drv);
                }
                let mut dev = format!("nvme,id={},serial={},bus={bus}", d.name, d.serial());
                if let Some(first) = nsdevs.first() {
                    dev.push_str(&format!(",drive={first}"));
                }
                let cmb = d.cmb_size();
                if cmb > 0 {
                    dev.push_str(&format!(",cmb_size_mb={}", cmb >> 20));
                }
                if !d.qemu_options.trim().is_empty() {
                    dev.push(',');
                    dev.push_str(d.qemu_options.trim().trim_start_matches(','));
                }
                push(&["-device", &dev]);
                for (i, drv) in nsdevs.iter().enumerate().skip(1) {
                    push(&[
                        "-device",
                        &format!("nvme-ns,drive={drv},bus={},nsid={}", d.name, i + 1),
                    ]);
                }
            }
        }
    }
    if let Some((plugin, sock)) = &l.witness {
        // out=: the whole run's cumulative counts, written by the plugin at QEMU exit.
        a.push("-plugin".into());
        a.push(format!(
            "{},control={},out={}",
            qemu_escape(&plugin.to_string_lossy()),
            qemu_escape(&sock.to_string_lossy()),
            qemu_escape(&l.run_dir.join("cpu.json").to_string_lossy())
        ));
    }
    a.extend(m.extra_args.iter().cloned());
    a.extend(l.extra.iter().cloned());
    Ok(a)
}

/// QEMU option values escape ',' as ',,'.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Create missing namespace backing files of QEMU's own NVMe devices (sparse).
pub fn prepare_qemu_nvme_files(t: &Topology, run_dir: &Path) -> Result<()> {
    for d in t.devices.iter().filter(|d| d.kind == DeviceKind::QemuNvme) {
        for (i, ns) in d.namespaces().iter().enumerate() {
            let f = d.namespace_file(i, run_dir);
            if let Some(p) = f.parent() {
                std::fs::create_dir_all(p)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&f)
                .with_context(|| format!("{}", f.display()))?;
            if file.metadata()?.len() < ns.size.0 {
                file.set_len(ns.size.0)?;
            }
        }
    }
    Ok(())
}

/// Resolve `auto`: KVM only if /dev/kvm opens and a probe boot of `kernel` gets through
/// early boot (these machines' /dev/kvm is PVM, which cannot run a stock kernel). The
/// verdict is cached in `$P2PLAB_HOME/kvm-verdict` per kernel and QEMU.
pub fn resolve_accel(
    want: Accel,
    qemu: &Qemu,
    home: &Path,
    kernel: &Path,
    verbose: bool,
) -> Result<Accel> {
    match want {
        Accel::Tcg => return Ok(Accel::Tcg),
        Accel::Kvm => {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .context("--accel kvm: cannot open /dev/kvm")?;
            return Ok(Accel::Kvm);
        }
        Accel::Auto => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    // KVM usability is a property of the host and QEMU, not of the guest kernel.
    let mut uts: libc::utsname = unsafe_zeroed_utsname();
    // SAFETY: uname fills the struct it is given.
    unsafe { libc::uname(&mut uts) };
    let release: String = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    let key = KeyHasher::default()
        .str(&release)
        .file_meta(&qemu.binary)
        .hex();
    let cache = home.join("kvm-verdict");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        if let Some((k, v)) = s.trim().split_once(' ') {
            if k == key {
                return Ok(if v == "kvm" { Accel::Kvm } else { Accel::Tcg });
            }
        }
    }
    eprintln!("p2plab: /dev/kvm opens; probing whether it boots a stock kernel (once; verdict cached in {})", cache.display());
    let ok = probe_kvm(qemu, kernel).unwrap_or(false);
    if verbose || ok {
        eprintln!(
            "p2plab: KVM probe: {}",
            if ok {
                "usable"
            } else {
                "not usable, using TCG"
            }
        );
    }
    let _ = std::fs::create_dir_all(home);
    let _ = std::fs::write(
        &cache,
        format!("{key} {}\n", if ok { "kvm" } else { "tcg" }),
    );
    Ok(if ok { Accel::Kvm } else { Accel::Tcg })
}

fn unsafe_zeroed_utsname() -> libc::utsname {
    // SAFETY: utsname is plain old data (arrays of c_char); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Boot `kernel` with no initramfs under KVM: a working KVM reaches "Kernel panic"
/// (no root fs) and QEMU exits (-no-reboot, panic=-1); a broken one stalls or errors.
fn probe_kvm(qemu: &Qemu, kernel: &Path) -> Result<bool> {
    let mut c = qemu.command();
    c.args([
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ]);
    c.arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/p2plab-none"]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    Ok(s.contains("Kernel panic") || s.contains("VFS:"))
}

/// Can P2P go between `client` and `provider` in this topology? (DESIGN §4)
pub fn p2p_allowed(t: &Topology) -> Option<bool> {
    let c = t.device(t.roles.client.as_deref()?)?;
    let p = t.device(t.roles.provider.as_deref()?)?;
    if c.port == Port::Switch && p.port == Port::Switch {
        return Some(true);
    }
    Some(t.machine.cpu.to_ascii_lowercase().starts_with("epyc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_turns_the_slow_string_ops_off() {
        assert_eq!(guest_cpu("max", Accel::Tcg), "max,-erms,-fsrm");
        assert_eq!(
            guest_cpu("EPYC,phys-bits=48", Accel::Tcg),
            "EPYC,phys-bits=48,-erms,-fsrm"
        );
        // KVM runs string instructions natively: the model as written.
        assert_eq!(guest_cpu("max", Accel::Kvm), "max");
        // A topology that names one of them decides itself.
        assert_eq!(guest_cpu("max,+erms", Accel::Tcg), "max,+erms");
        assert_eq!(guest_cpu("max,fsrm=on", Accel::Tcg), "max,fsrm=on");
        // Only the options count, not the model's name.
        assert_eq!(guest_cpu("ermsish", Accel::Tcg), "ermsish,-erms,-fsrm");
    }
}
