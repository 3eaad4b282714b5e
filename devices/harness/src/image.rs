//! Guest image: the toolroot, the kernel (an uncompressed vmlinux for PVH boot), and
//! the initramfs layers (base, optional fio, per-run).
//!
//! The base initramfs is cached in `$P2PLAB_HOME/images/base-<key>.cpio`, keyed by a hash
//! of every input (runner binary, guest module, kernel modules, tools, /init), so a rerun
//! only writes the small per-run layer carrying `/etc/p2plab/run.json`. Linux unpacks
//! concatenated newc archives in order, so the layers are simply appended.

use anyhow::{bail, Context, Result};
use p2plab_guest_abi::run::RUN_JSON_PATH;
use p2plab_toolroot::stamp::{Stamp, STAMP_FILE};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bump when the image layout changes (invalidates every cached image).
const IMAGE_FORMAT: u32 = 2;

/// `$P2PLAB_HOME`, default `~/.cache/p2plab`.
pub fn p2plab_home() -> PathBuf {
    if let Some(h) = std::env::var_os("P2PLAB_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/p2plab")
}

/// FNV-1a (64-bit): a stable, dependency-free cache key.
#[derive(Clone)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(p2plab_pci::FNV1A_BASIS)
    }
}

impl KeyHasher {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0 = p2plab_pci::fnv1a(self.0, b);
        // Length separator so ("ab","c") != ("a","bc").
        self.0 = p2plab_pci::fnv1a(self.0, &(b.len() as u64).to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    /// A file by identity (path, size, mtime): cheap, for large toolroot files.
    pub fn file_meta(&mut self, p: &Path) -> &mut Self {
        let m = std::fs::metadata(p).ok();
        self.str(&p.to_string_lossy());
        self.bytes(&m.as_ref().map_or(0, |m| m.size()).to_le_bytes());
        self.bytes(&m.as_ref().map_or(0, |m| m.mtime()).to_le_bytes())
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The lab toolroot (a Debian trixie root built by `scripts/setup`), as its stamp says
/// it was resolved: the kernel release and QEMU version come from there, never from a
/// constant, so a toolroot resolved from a later archive works unchanged.
pub struct Toolroot {
    pub root: PathBuf,
    /// The toolroot kernel's release (e.g. `7.3.4+deb13-amd64`), from the stamp.
    pub kver: String,
    /// What `scripts/setup` resolved and installed.
    pub stamp: Stamp,
}

impl Toolroot {
    pub fn locate(home: &Path) -> Result<Toolroot> {
        let root = home.join("toolroot");
        let stamp = Stamp::read(&root).with_context(|| {
            format!(
                "no lab toolroot at {} (run scripts/setup first)",
                root.display()
            )
        })?;
        let kver = stamp
            .kernel_release()
            .with_context(|| {
                format!(
                    "the toolroot stamp {} names no kernel (run scripts/setup to upgrade it)",
                    root.join(STAMP_FILE).display()
                )
            })?
            .to_string();
        if !root
            .join("usr/lib/modules")
            .join(&kver)
            .join("modules.dep")
            .is_file()
        {
            bail!(
                "the toolroot's kernel {kver} (its stamp) has no modules.dep; run scripts/setup --force"
            );
        }
        Ok(Toolroot { root, kver, stamp })
    }

    /// The kernel headers' build directory inside the root (`/usr/src/linux-headers-<kver>`).
    pub fn headers_dir(&self) -> PathBuf {
        PathBuf::from(format!("/usr/src/linux-headers-{}", self.kver))
    }

    /// What produced a result, for `run.json`: the stamp's fields and the root.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"root": self.root});
        for (k, val) in &self.stamp.fields {
            v[k] = serde_json::json!(val);
        }
        v
    }

    pub fn loader(&self) -> PathBuf {
        self.root.join("usr/lib64/ld-linux-x86-64.so.2")
    }

    /// Library directories of the root (ld.so.conf plus their subdirectories, e.g. ceph/).
    pub fn lib_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = vec![
            self.root.join("usr/lib/x86_64-linux-gnu"),
            self.root.join("usr/lib"),
        ];
        if let Ok(rd) = std::fs::read_dir(self.root.join("etc/ld.so.conf.d")) {
            for e in rd.flatten() {
                for l in std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                {
                    let l = l.trim();
                    if l.starts_with('/') {
                        dirs.push(self.root.join(l.trim_start_matches('/')));
                    }
                }
            }
        }
        let mut out = vec![];
        for d in dirs {
            let Ok(c) = d.canonicalize() else { continue };
            if out.contains(&c) {
                continue;
            }
            // Subdirectories holding shared objects (e.g. ceph/, which fio's libs need).
            let has_so = |d: &Path| {
                std::fs::read_dir(d).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().contains(".so"))
                })
            };
            let subs: Vec<PathBuf> = std::fs::read_dir(&c)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir() && has_so(p))
                        .collect()
                })
                .unwrap_or_default();
            out.push(c);
            for s in subs {
                if let Ok(s) = s.canonicalize() {
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    pub fn library_path(&self) -> String {
        self.lib_dirs()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A command running the root's `bin` (path inside the root) through its own loader.
    pub fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(self.loader());
        c.arg("--library-path")
            .arg(self.library_path())
            .arg(self.root.join(bin.trim_start_matches('/')));
        c
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.kver))
    }

    /// Shared libraries `bin` (a path on the host, inside the root) needs:
    /// guest path (inside the root) → host file holding it.
    pub fn shared_libs(&self, bin: &Path) -> Result<Vec<(String, PathBuf)>> {
        let out = Command::new(self.loader())
            .arg("--library-path")
            .arg(self.library_path())
            .arg("--list")
            .arg(bin)
            .output()
            .with_context(|| format!("running the toolroot loader on {}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("not found") {
            bail!(
                "cannot resolve the libraries of {}: {}{}",
                bin.display(),
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut libs = vec![];
        for l in text.lines() {
            // "libz.so.1 => /ROOT/usr/lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux... => /ROOT/..."
            let Some((_, rhs)) = l.split_once("=>") else {
                continue;
            };
            let host = PathBuf::from(rhs.trim().split(" (").next().unwrap_or("").trim());
            if !host.is_absolute() {
                continue;
            }
            let dir = host
                .parent()
                .and_then(|d| d.canonicalize().ok())
                .context("library dir")?;
            let name = host.file_name().context("library name")?;
            let guest = self.guest_path(&dir.join(name))?;
            libs.push((guest, host.canonicalize()?));
        }
        Ok(libs)
    }

    /// `/usr/lib/...` for a host path inside the root.
    pub fn guest_path(&self, host: &Path) -> Result<String> {
        let root = self.root.canonicalize()?;
        let rel = host
            .strip_prefix(&root)
            .with_context(|| format!("{} is outside the toolroot", host.display()))?;
        Ok(format!("/{}", rel.to_string_lossy()))
    }
}

// ---------------------------------------------------------------------------------------
// newc (SVR4 "070701") cpio writer

/// A minimal newc archive writer (what the kernel's initramfs unpacker reads).
pub struct Cpio<W: Write> {
    w: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub fn new(w: W) -> Self {
        Cpio {
            w,
            ino: 1,
            written: 0,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0
        );
        self.ino += 1;
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100000 | (mode & 0o7777), (0, 0), data)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, 0o120777, (0, 0), target.as_bytes())
    }
    pub fn char_dev(
        &mut self,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.entry(name, 0o020000 | (mode & 0o7777), (major, minor), &[])
    }
    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A file tree to archive: guest path → what it is. Parents are created implicitly.
#[derive(Default)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

pub enum Node {
    Dir,
    File { mode: u32, src: Src },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

pub enum Src {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Tree {
    pub fn add(&mut self, path: &str, node: Node) {
        let path = format!("/{}", path.trim_start_matches('/'));
        let mut p = Path::new(&path).parent();
        while let Some(d) = p {
            let s = d.to_string_lossy().into_owned();
            if s == "/" {
                break;
            }
            self.entries.entry(s).or_insert(Node::Dir);
            p = d.parent();
        }
        self.entries.insert(path, node);
    }
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let mode = std::fs::metadata(host)
            .with_context(|| format!("{}", host.display()))?
            .mode()
            & 0o7777;
        self.add(
            path,
            Node::File {
                mode,
                src: Src::Host(host.to_path_buf()),
            },
        );
        Ok(())
    }

    /// Write the tree as one newc archive (parents sort before children).
    pub fn write<W: Write>(&self, w: W) -> Result<W> {
        let mut c = Cpio::new(w);
        for (path, node) in &self.entries {
            match node {
                Node::Dir => c.dir(path)?,
                Node::Symlink(t) => c.symlink(path, t)?,
                Node::CharDev { major, minor } => c.char_dev(path, 0o600, *major, *minor)?,
                Node::File { mode, src } => {
                    let data = match src {
                        Src::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                        Src::Host(p) => std::borrow::Cow::Owned(
                            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                        ),
                    };
                    c.file(path, *mode, &data)?;
                }
            }
        }
        Ok(c.finish()?)
    }
}

// ---------------------------------------------------------------------------------------
// kernel

/// What `--kernel` (or the toolroot default) boots.
pub struct Kernel {
    pub path: PathBuf,
    /// An ELF vmlinux booted through its PVH entry (else a bzImage).
    pub pvh: bool,
}

fn is_elf(p: &Path) -> bool {
    let mut b = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok()
        && b == *b"\x7fELF"
}

/// The kernel to boot: `--kernel` as given (ELF → PVH, else bzImage), or the toolroot's
/// vmlinuz decompressed to a cached vmlinux.
pub fn kernel(tr: &Toolroot, home: &Path, user: Option<&Path>) -> Result<Kernel> {
    if let Some(p) = user {
        if !p.is_file() {
            bail!("--kernel {}: no such file", p.display());
        }
        return Ok(Kernel {
            path: p.to_path_buf(),
            pvh: is_elf(p),
        });
    }
    let vmlinuz = tr.vmlinuz();
    let key = KeyHasher::default().file_meta(&vmlinuz).hex();
    let out = home.join(format!("images/vmlinux-{}-{key}", tr.kver));
    if !out.is_file() {
        extract_vmlinux(tr, &vmlinuz, &out)?;
    }
    Ok(Kernel {
        path: out,
        pvh: true,
    })
}

/// Find the compressed payload inside a bzImage by its magic and decompress it with the
/// toolroot's decompressor until an ELF comes out (what scripts/extract-vmlinux does).
pub fn extract_vmlinux(tr: &Toolroot, bz: &Path, out: &Path) -> Result<()> {
    let data = std::fs::read(bz).with_context(|| format!("reading {}", bz.display()))?;
    let formats: [(&[u8], &str, &[&str]); 4] = [
        (b"\x28\xb5\x2f\xfd", "usr/bin/zstd", &["-dc", "-q"]),
        (b"\xfd7zXZ\x00", "usr/bin/xz", &["-dc", "-q"]),
        (b"\x1f\x8b\x08", "usr/bin/gzip", &["-dc", "-q"]),
        (b"\x02\x21\x4c\x18", "usr/bin/lz4", &["-dc", "-q"]),
    ];
    for (magic, tool, args) in formats {
        let mut start = 0;
        let mut tries = 0;
        while let Some(pos) = find(&data[start..], magic).map(|p| p + start) {
            start = pos + 1;
            tries += 1;
            if tries > 8 || !tr.root.join(tool).exists() {
                break;
            }
            let mut child = tr
                .command(tool)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the toolroot's {tool}"))?;
            let mut stdin = child.stdin.take().context("stdin")?;
            let payload = data[pos..].to_vec();
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
            let o = child.wait_with_output()?;
            let _ = feeder.join();
            // Trailing bytes after the stream make the tool complain; the ELF is what counts.
            if o.stdout.len() > 1 << 20 && o.stdout.starts_with(b"\x7fELF") {
                std::fs::create_dir_all(out.parent().context("parent")?)?;
                // Per process: runs started together (scripts/test --jobs) may both
                // extract; each renames a whole file into place.
                let tmp = out.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &o.stdout)?;
                std::fs::rename(&tmp, out)?;
                return Ok(());
            }
        }
    }
    bail!("no decompressible vmlinux found in {}", bz.display())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// modules

/// A kernel module tree (`modules.dep` and the files it names).
pub struct ModuleTree {
    pub dir: PathBuf,
    deps: BTreeMap<String, (String, Vec<String>)>, // name → (rel path, dep names)
}

fn module_name(rel: &str) -> String {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleTree {
    /// The kernel release these modules are for (the directory's name).
    pub fn release(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `dir` holds `modules.dep`, or is an INSTALL_MOD_PATH with one `lib/modules/<ver>`.
    pub fn open(dir: &Path) -> Result<ModuleTree> {
        let mut d = dir.to_path_buf();
        if !d.join("modules.dep").is_file() {
            let lm = dir.join("lib/modules");
            let found: Vec<PathBuf> = std::fs::read_dir(&lm)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.join("modules.dep").is_file())
                        .collect()
                })
                .unwrap_or_default();
            match found.as_slice() {
                [one] => d = one.clone(),
                [] => bail!(
                    "{}: no modules.dep (give /lib/modules/<release> or an INSTALL_MOD_PATH)",
                    dir.display()
                ),
                _ => bail!(
                    "{}: several kernel releases under lib/modules; name one",
                    dir.display()
                ),
            }
        }
        let text = std::fs::read_to_string(d.join("modules.dep"))?;
        let mut deps = BTreeMap::new();
        for l in text.lines() {
            let Some((m, ds)) = l.split_once(':') else {
                continue;
            };
            let ds: Vec<String> = ds.split_whitespace().map(module_name).collect();
            deps.insert(module_name(m), (m.to_string(), ds));
        }
        Ok(ModuleTree { dir: d, deps })
    }

    /// `names` and their dependencies, dependencies first; names not in the tree
    /// (built in) are skipped.
    pub fn resolve(&self, names: &[&str]) -> Vec<(String, PathBuf)> {
        fn visit(
            t: &ModuleTree,
            n: &str,
            seen: &mut BTreeSet<String>,
            out: &mut Vec<(String, PathBuf)>,
        ) {
            if !seen.insert(n.to_string()) {
                return;
            }
            let Some((rel, ds)) = t.deps.get(n) else {
                return;
            };
            for d in ds {
                visit(t, d, seen, out);
            }
            out.push((n.to_string(), t.dir.join(rel)));
        }
        let mut seen = BTreeSet::new();
        let mut out = vec![];
        for n in names {
            visit(self, &n.replace('-', "_"), &mut seen, &mut out);
        }
        out
    }
}

/// A module file's bytes, decompressed (.ko.xz / .ko.zst / .ko.gz) with the toolroot's tools.
fn module_bytes(tr: &Toolroot, p: &Path) -> Result<Vec<u8>> {
    let s = p.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        "usr/bin/xz"
    } else if s.ends_with(".zst") {
        "usr/bin/zstd"
    } else if s.ends_with(".gz") {
        "usr/bin/gzip"
    } else {
        return Ok(std::fs::read(p)?);
    };
    let o = tr
        .command(tool)
        .arg("-dc")
        .arg(p)
        .stderr(Stdio::inherit())
        .output()?;
    if !o.status.success() {
        bail!("decompressing {} failed", p.display());
    }
    Ok(o.stdout)
}

// ---------------------------------------------------------------------------------------
// the guest module (guest-tests/kmod)

/// Build `p2pgpu.ko` with `guest-tests/kmod/build.sh TOOLROOT KDIR OUTDIR` (KDIR: a
/// developer's kernel build dir, else the toolroot's headers for its stamped kernel).
/// Cached by the module sources, the kernel release and package, and KDIR.
/// `Ok(None)` only when the script is absent; a failed build is an error carrying the
/// compiler's last lines (the caller decides whether the topology needs the module).
pub fn build_kmod(
    repo: &Path,
    tr: &Toolroot,
    kdir: Option<&Path>,
    home: &Path,
    verbose: bool,
) -> Result<Option<PathBuf>> {
    let src = repo.join("guest-tests/kmod");
    let script = src.join("build.sh");
    if !script.is_file() {
        if verbose {
            eprintln!(
                "p2plab: {} absent; the image has no p2pgpu.ko",
                script.display()
            );
        }
        return Ok(None);
    }
    let kdir = kdir.map_or_else(|| tr.headers_dir(), Path::to_path_buf);
    let mut key = KeyHasher::default();
    key.str(&tr.kver)
        .str(tr.stamp.get("kernel_package").unwrap_or_default())
        .str(&kdir.to_string_lossy());
    // A developer's tree is rebuilt in place: the key covers its build (configuration
    // and exported symbols), not only its path.
    for f in [
        ".config",
        "Module.symvers",
        "include/generated/utsrelease.h",
    ] {
        key.str(f)
            .bytes(&std::fs::read(kdir.join(f)).unwrap_or_default());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in &files {
        key.str(&f.to_string_lossy())
            .bytes(&std::fs::read(f).unwrap_or_default());
    }
    let out = home.join("kmod").join(key.hex());
    let ko = out.join("p2pgpu.ko");
    if ko.is_file() {
        return Ok(Some(ko));
    }
    // Built in a directory of this process's own, then renamed into place whole: runs
    // started together (scripts/test --jobs) never load a half-copied module, and the
    // first to finish wins (the others' builds are identical and dropped).
    let staging = home
        .join("kmod")
        .join(format!("{}.tmp{}", key.hex(), std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut c = Command::new("bash");
    c.arg(&script).arg(&tr.root).arg(&kdir).arg(&staging);
    if verbose {
        eprintln!(
            "p2plab: building p2pgpu.ko against {} ({})",
            kdir.display(),
            script.display()
        );
    }
    let o = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if o.status.success() && staging.join("p2pgpu.ko").is_file() {
        // rename(2) refuses a non-empty target: another run's build got there first, or
        // a failed build's leftover (no module in it) is in the way.
        if std::fs::rename(&staging, &out).is_err() && !ko.is_file() {
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::rename(&staging, &out);
        }
        let _ = std::fs::remove_dir_all(&staging);
        if ko.is_file() {
            return Ok(Some(ko));
        }
        bail!("{} is missing after a successful build", ko.display());
    }
    // A failed build's directory stays: build.sh's message names its build.log.
    let err = String::from_utf8_lossy(&o.stderr);
    let tail: Vec<&str> = err.lines().rev().take(12).collect();
    bail!(
        "building p2pgpu.ko against {} failed ({}):\n{}",
        kdir.display(),
        o.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

// ---------------------------------------------------------------------------------------
// initramfs layers

/// The guest's /init (see [`init`], which fills in its console prefix). Module parameters
/// given on the kernel command line as `module.param=value` are passed to insmod, as
/// modprobe would.
const INIT_TEMPLATE: &str = r#"#!/bin/sh
# p2plab guest /init (generated by p2plab; devices/harness/src/image.rs)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
read -r cmdline </proc/cmdline
params() {
	for w in $cmdline; do
		case "$w" in "$1".*=*) echo "${w#*.}" ;; esac
	done
}
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
while read -r ko; do
	[ -n "$ko" ] || continue
	name=${ko%.ko}
	insmod "/usr/lib/modules/p2plab/$ko" $(params "$name") || echo "@INIT_NOTE@ insmod $ko failed"
done </etc/p2plab/modules
# Host directories over virtio-9p (p2plab run --share / --userland).
p9() { mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 "$1" "$2"; }
case " $cmdline " in *" p2plab.host=1 "*)
	mkdir -p /host && p9 host /host || echo "@INIT_NOTE@ cannot mount the shared directory at /host"
esac
case " $cmdline " in *" p2plab.troot=1 "*)
	# The toolroot's Debian userland: read-only lower layer, writable tmpfs on top.
	ul=/run/userland
	mkdir -p $ul/lower $ul/rw /userland
	p9 troot $ul/lower || echo "@INIT_NOTE@ cannot mount the toolroot userland"
	mount -t tmpfs -o mode=0755 tmpfs $ul/rw
	mkdir -p $ul/rw/upper $ul/rw/work
	mount -t overlay overlay -o lowerdir=$ul/lower,upperdir=$ul/rw/upper,workdir=$ul/rw/work /userland ||
		{ echo "@INIT_NOTE@ no overlayfs: the userland is read-only"; mount --bind $ul/lower /userland; }
	for d in dev proc sys; do mkdir -p /userland/$d; mount --rbind /$d /userland/$d; done
	mkdir -p /userland/tmp && mount -t tmpfs tmpfs /userland/tmp
	if [ -d /host ]; then mkdir -p /userland/host && mount --bind /host /userland/host; fi
	rel=$(uname -r)
	case " $cmdline " in *" p2plab.kmods=1 "*)
		mkdir -p /userland/usr/lib/modules/$rel && p9 kmods /userland/usr/lib/modules/$rel
	esac
esac
case " $cmdline " in
*" p2plab.shell=1 "*)
	echo "p2plab: guest shell. Run cases: p2plab-guest --no-ack [CASE...] (list: p2plab-guest --list)."
	echo "p2plab: leave with 'poweroff' or Ctrl-D; Ctrl-A X kills QEMU."
	if [ -x /userland/bin/bash ]; then
		echo "p2plab: in the toolroot userland (/userland); leave with 'exit' or Ctrl-D."
		setsid -c chroot /userland /bin/bash -l <>/dev/ttyS0 >&0 2>&1
	else
		ENV=/etc/p2plab/shrc setsid -c sh <>/dev/ttyS0 >&0 2>&1
	fi
	;;
*)
	p2plab-guest
	;;
esac
sync
poweroff -f
"#;

/// The guest's /init: `INIT_TEMPLATE` with its messages prefixed by
/// [`INIT_NOTE`](p2plab_guest_abi::markers::INIT_NOTE), which the host's console filter
/// shows.
pub fn init() -> String {
    INIT_TEMPLATE.replace("@INIT_NOTE@", p2plab_guest_abi::markers::INIT_NOTE)
}

/// The guest shell's startup file (`--shell`).
pub const SHRC: &str = r#"# p2plab guest shell (generated; devices/harness/src/image.rs)
PS1='p2plab# '
poweroff() { sync; busybox poweroff -f; }
halt() { sync; busybox poweroff -f; }
reboot() { sync; busybox reboot -f; }
"#;

/// Inputs of the base image.
pub struct BaseInputs<'a> {
    pub toolroot: &'a Toolroot,
    pub runner: &'a Path,
    pub modules: &'a ModuleTree,
    /// What to load from `modules` (with dependencies), in order.
    pub module_names: &'a [&'a str],
    pub kmod: Option<&'a Path>,
}

/// Modules every guest loads (with their dependencies).
pub const GUEST_MODULES: &[&str] = &["nvme"];

/// Modules for host directories shared over virtio-9p (`--share`, `--userland`) and the
/// userland's writable overlay; skipped where built in.
pub const SHARE_MODULES: &[&str] = &["9pnet_virtio", "9p", "overlay"];

fn merged_usr(t: &mut Tree) {
    for (l, d) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        t.add(&format!("/{d}"), Node::Dir);
        t.add(l, Node::Symlink(d.into()));
    }
}

fn add_binary(tr: &Toolroot, t: &mut Tree, guest: &str) -> Result<()> {
    let host = tr.root.join(guest.trim_start_matches('/'));
    t.host_file(guest, &host)?;
    for (g, h) in tr.shared_libs(&host)? {
        if !t.contains(&g) {
            t.host_file(&g, &h)?;
        }
    }
    Ok(())
}

/// The cached base initramfs (built when its key changes). Returns its path.
pub fn base_image(inp: &BaseInputs, home: &Path) -> Result<PathBuf> {
    let tr = inp.toolroot;
    let mods = inp.modules.resolve(inp.module_names);
    let mut key = KeyHasher::default();
    key.str(&format!("format {IMAGE_FORMAT}"))
        .str(&init())
        .str(SHRC);
    key.bytes(
        &std::fs::read(inp.runner)
            .with_context(|| format!("guest runner {}", inp.runner.display()))?,
    );
    if let Some(k) = inp.kmod {
        key.bytes(&std::fs::read(k)?);
    }
    for (n, p) in &mods {
        key.str(n).file_meta(p);
    }
    for b in ["usr/bin/busybox", "usr/sbin/nvme"] {
        key.file_meta(&tr.root.join(b));
    }
    let out = home.join(format!("images/base-{}.cpio", key.hex()));
    if out.is_file() {
        return Ok(out);
    }

    let mut t = Tree::default();
    merged_usr(&mut t);
    for d in [
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/run",
        "/root",
        "/etc/p2plab",
        "/mnt",
    ] {
        t.add(d, Node::Dir);
    }
    t.add("/dev/console", Node::CharDev { major: 5, minor: 1 });
    t.add(
        "/dev/ttyS0",
        Node::CharDev {
            major: 4,
            minor: 64,
        },
    );
    t.add("/dev/null", Node::CharDev { major: 1, minor: 3 });
    t.add(
        "/init",
        Node::File {
            mode: 0o755,
            src: Src::Bytes(init().into_bytes()),
        },
    );
    t.add(
        "/etc/passwd",
        Node::File {
            mode: 0o644,
            src: Src::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        },
    );
    t.add(
        "/etc/group",
        Node::File {
            mode: 0o644,
            src: Src::Bytes(b"root:x:0:\n".to_vec()),
        },
    );

    // busybox and its applets
    let bb = tr.root.join("usr/bin/busybox");
    t.host_file("/usr/bin/busybox", &bb)?;
    let list = Command::new(&bb)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        let a = a.trim();
        let g = if let Some(r) = a.strip_prefix("usr/") {
            format!("/usr/{r}")
        } else if let Some(r) = a.strip_prefix("sbin/") {
            format!("/usr/sbin/{r}")
        } else if let Some(r) = a.strip_prefix("bin/") {
            format!("/usr/bin/{r}")
        } else {
            continue;
        };
        if !t.contains(&g) && !g.ends_with("/busybox") {
            t.add(&g, Node::Symlink("/usr/bin/busybox".into()));
        }
    }
    // busybox poweroff/reboot/halt signal PID 1, a plain shell script here, and ash runs
    // applets before PATH: shell functions (via $ENV) make them act directly.
    t.add(
        "/etc/p2plab/shrc",
        Node::File {
            mode: 0o644,
            src: Src::Bytes(SHRC.as_bytes().to_vec()),
        },
    );
    add_binary(tr, &mut t, "/usr/sbin/nvme")?;
    t.host_file("/usr/bin/p2plab-guest", inp.runner)?;

    // modules, decompressed, with their load order
    let mut order = String::new();
    for (n, p) in &mods {
        let ko = format!("{n}.ko");
        t.add(
            &format!("/usr/lib/modules/p2plab/{ko}"),
            Node::File {
                mode: 0o644,
                src: Src::Bytes(module_bytes(tr, p)?),
            },
        );
        order.push_str(&ko);
        order.push('\n');
    }
    if let Some(k) = inp.kmod {
        t.add(
            "/usr/lib/modules/p2plab/p2pgpu.ko",
            Node::File {
                mode: 0o644,
                src: Src::Host(k.to_path_buf()),
            },
        );
        order.push_str("p2pgpu.ko\n");
    }
    t.add(
        "/etc/p2plab/modules",
        Node::File {
            mode: 0o644,
            src: Src::Bytes(order.into_bytes()),
        },
    );

    write_atomic(&out, |w| t.write(w).map(|_| ()))?;
    Ok(out)
}

/// The cached fio layer (fio and its shared libraries, ~57 MB: only when a case needs it).
pub fn fio_layer(tr: &Toolroot, home: &Path) -> Result<PathBuf> {
    let fio = tr.root.join("usr/bin/fio");
    let key = KeyHasher::default()
        .str(&format!("fio {IMAGE_FORMAT}"))
        .file_meta(&fio)
        .hex();
    let out = home.join(format!("images/fio-{key}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    let mut t = Tree::default();
    merged_usr(&mut t);
    add_binary(tr, &mut t, "/usr/bin/fio")?;
    write_atomic(&out, |w| t.write(w).map(|_| ()))?;
    Ok(out)
}

/// The per-run layer: `/etc/p2plab/run.json` ([`RUN_JSON_PATH`]).
pub fn run_layer(run_json: &[u8]) -> Result<Vec<u8>> {
    let mut t = Tree::default();
    t.add(
        RUN_JSON_PATH,
        Node::File {
            mode: 0o644,
            src: Src::Bytes(run_json.to_vec()),
        },
    );
    t.write(Vec::new())
}

fn write_atomic(
    out: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(out.parent().context("no parent")?)?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    f(&mut w)?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Concatenate initramfs layers into `out`.
pub fn concat(layers: &[&Path], tail: &[u8], out: &Path) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    for l in layers {
        let mut f = std::fs::File::open(l)?;
        std::io::copy(&mut f, &mut w)?;
    }
    w.write_all(tail)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reports_under_the_prefix_the_host_shows() {
        let init = init();
        assert!(!init.contains('@'));
        let echoes: Vec<&str> = init
            .lines()
            .filter(|l| l.contains("|| echo") || l.contains("{ echo"))
            .collect();
        assert_eq!(echoes.len(), 4);
        for l in echoes {
            assert!(
                l.contains(&format!("echo \"{}", p2plab_guest_abi::markers::INIT_NOTE)),
                "{l}"
            );
        }
    }

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new(Vec::new());
        c.file("/etc/x", 0o644, b"hello").unwrap();
        let v = c.finish().unwrap();
        assert!(v.starts_with(b"070701"));
        // header 110 + "etc/x\0" (6) = 116, 4-aligned; data 5 → pad to 124
        assert_eq!(&v[110..116], b"etc/x\0");
        assert_eq!(&v[116..121], b"hello");
        assert_eq!(&v[124..130], b"070701");
        assert_eq!(v.len() % 4, 0);
        // filesize field (7th) of the first entry
        assert_eq!(&v[6 + 6 * 8..6 + 7 * 8], b"00000005");
    }

    #[test]
    fn tree_adds_parents_before_children() {
        let mut t = Tree::default();
        t.add("/a/b/c", Node::Symlink("x".into()));
        let v = t.write(Vec::new()).unwrap();
        let s = String::from_utf8_lossy(&v);
        let a = s.find("a\0").unwrap();
        let ab = s.find("a/b\0").unwrap();
        let abc = s.find("a/b/c\0").unwrap();
        assert!(a < ab && ab < abc);
        assert!(s.contains("TRAILER!!!"));
    }

    #[test]
    fn module_names_normalise() {
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko.xz"),
            "nvme_core"
        );
        assert_eq!(module_name("nvme.ko"), "nvme");
    }

    #[test]
    fn key_hasher_separates_fields() {
        let a = KeyHasher::default().str("ab").str("c").hex();
        let b = KeyHasher::default().str("a").str("bc").hex();
        assert_ne!(a, b);
    }
}
