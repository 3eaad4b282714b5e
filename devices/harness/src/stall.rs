//! What a stuck guest was doing: taken when a run stops without its results (boot
//! limit, timeout), so that a hang on a CI machine can be told apart from a slow one
//! and placed without a rerun.
//!
//! Two views. QEMU's, over its QMP socket (`-qmp unix:RUN_DIR/qmp.sock`): each vCPU's
//! `RIP`, interrupt flag and `HLT` state from `info registers -a`, sampled a few times
//! (a RIP that moves is a guest spinning, `HLT=1` is a guest waiting for an interrupt that
//! never comes). The host's, from `/proc`: the state, wait channel and current system call
//! of every QEMU thread (a vCPU thread asleep in `recvmsg` waits on a device's reply) and
//! of every thread of this process (the lab's servers, when it runs here).
//!
//! RIPs are named from the booted vmlinux's symbol table when it has one (a kernel
//! developer's own build does; the toolroot's Debian image is stripped): a PVH boot runs
//! the kernel at its link address.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// QMP socket name in the run directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// How many times the vCPU registers are sampled, and how far apart.
const SAMPLES: usize = 3;
const SAMPLE_GAP: Duration = Duration::from_millis(300);

/// A QMP session (JSON lines; events are skipped).
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self> {
        let s =
            UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut q = Qmp {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        let greeting = q.line()?;
        anyhow::ensure!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        q.execute("qmp_capabilities", serde_json::json!({}))?;
        Ok(q)
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let mut l = String::new();
        anyhow::ensure!(self.r.read_line(&mut l)? > 0, "QMP closed");
        Ok(serde_json::from_str(&l)?)
    }

    fn execute(&mut self, cmd: &str, args: serde_json::Value) -> Result<serde_json::Value> {
        let req = serde_json::json!({"execute": cmd, "arguments": args});
        self.w.write_all(format!("{req}\n").as_bytes())?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                anyhow::bail!("QMP {cmd}: {e}");
            }
            // An asynchronous event: not ours.
        }
    }

    fn hmp(&mut self, line: &str) -> Result<String> {
        let r = self.execute(
            "human-monitor-command",
            serde_json::json!({"command-line": line}),
        )?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }
}

/// The function symbols of an ELF64 little-endian image (`.symtab`), sorted by address.
pub struct Symbols(Vec<(u64, u64, String)>);

impl Symbols {
    /// Reads the section headers, `.symtab` and its string table only (a vmlinux with
    /// debug info is large). None: not ELF64 LE, or no symbol table (stripped).
    pub fn load(path: &Path) -> Option<Symbols> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).ok()?;
        let mut eh = [0u8; 64];
        f.read_exact(&mut eh).ok()?;
        // ELF magic, ELFCLASS64, ELFDATA2LSB.
        if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
            return None;
        }
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at =
            |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at =
            |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let (shoff, shentsize, shnum) = (u64_at(&eh, 0x28), u16_at(&eh, 0x3a), u16_at(&eh, 0x3c));
        if shentsize != 64 || shnum == 0 {
            return None;
        }
        let mut sh = vec![0u8; 64 * usize::from(shnum)];
        f.seek(SeekFrom::Start(shoff)).ok()?;
        f.read_exact(&mut sh).ok()?;
        let section = |i: usize| sh.get(i * 64..i * 64 + 64);
        // SHT_SYMTAB = 2; sh_offset 0x18, sh_size 0x20, sh_link 0x28.
        let symtab = (0..usize::from(shnum))
            .filter_map(section)
            .find(|h| u32_at(h, 4) == 2)?;
        let strtab = section(u32_at(symtab, 0x28) as usize)?;
        let mut read = |off: u64, len: u64| -> Option<Vec<u8>> {
            // At most 1 GiB: anything bigger is not a symbol table.
            if len > 1 << 30 {
                return None;
            }
            let mut b = vec![0u8; usize::try_from(len).ok()?];
            f.seek(SeekFrom::Start(off)).ok()?;
            f.read_exact(&mut b).ok()?;
            Some(b)
        };
        let syms = read(u64_at(symtab, 0x18), u64_at(symtab, 0x20))?;
        let strs = read(u64_at(strtab, 0x18), u64_at(strtab, 0x20))?;
        let mut out = vec![];
        for e in syms.chunks_exact(24) {
            // st_name, st_info (type in the low nibble: STT_FUNC = 2), st_value, st_size.
            let (name, kind, value, size) = (u32_at(e, 0), e[4] & 0xf, u64_at(e, 8), u64_at(e, 16));
            if kind != 2 || value == 0 {
                continue;
            }
            let Some(tail) = strs.get(name as usize..) else {
                continue;
            };
            let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
            out.push((
                value,
                size,
                String::from_utf8_lossy(&tail[..end]).into_owned(),
            ));
        }
        out.sort_unstable_by_key(|s| s.0);
        (!out.is_empty()).then_some(Symbols(out))
    }

    /// `name+0xoff` of the function holding `addr` (within its size; or the nearest one
    /// below when sizes are missing).
    pub fn name(&self, addr: u64) -> Option<String> {
        let i = self.0.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.0[i];
        let off = addr - start;
        (*size == 0 || off < *size).then(|| format!("{name}+{off:#x}"))
    }
}

/// One vCPU's state in `info registers -a` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuRegs {
    pub cpu: usize,
    pub rip: String,
    /// `RFL` bit 9: interrupts enabled.
    pub interrupts: Option<bool>,
    pub halted: Option<bool>,
}

/// Parse `info registers -a`: one `CPU#n` header per vCPU, then its `RIP=… RFL=… HLT=…`
/// line (32-bit guests print `EIP=`).
pub fn parse_registers(text: &str) -> Vec<VcpuRegs> {
    let mut out: Vec<VcpuRegs> = vec![];
    let mut cpu = 0usize;
    for l in text.lines() {
        let l = l.trim();
        if let Some(n) = l.strip_prefix("CPU#") {
            cpu = n.trim().parse().unwrap_or(out.len());
            continue;
        }
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let Some(rip) = field("RIP=").or_else(|| field("EIP=")) else {
            continue;
        };
        let interrupts = field("RFL=")
            .and_then(|f| u64::from_str_radix(&f, 16).ok())
            .map(|f| f & (1 << 9) != 0);
        let halted = field("HLT=").map(|h| h == "1");
        out.push(VcpuRegs {
            cpu,
            rip,
            interrupts,
            halted,
        });
    }
    out
}

/// `state wchan syscall` of every thread of process `pid`, one line each.
fn threads(pid: u32) -> String {
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("  (no /proc/{pid}/task)\n");
    };
    let mut tids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let base = format!("/proc/{pid}/task/{tid}");
        let read = |f: &str| std::fs::read_to_string(format!("{base}/{f}")).unwrap_or_default();
        let comm = read("comm");
        // The state follows the ")" that closes the command name.
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let wchan = read("wchan");
        let syscall = read("syscall");
        let syscall = syscall.split_whitespace().next().unwrap_or("?");
        let _ = writeln!(
            out,
            "  {tid:>7} {:<16} state {state} wchan {} syscall {}",
            comm.trim(),
            if wchan.is_empty() || wchan == "0" {
                "-"
            } else {
                wchan.trim()
            },
            syscall_name(syscall),
        );
    }
    out
}

/// x86-64 names of the system calls a blocked thread of ours is likely in.
fn syscall_name(nr: &str) -> String {
    let name = match nr {
        "0" => "read",
        "1" => "write",
        "7" => "poll",
        "17" => "pread64",
        "18" => "pwrite64",
        "35" => "nanosleep",
        "45" => "recvfrom",
        "46" => "sendmsg",
        "47" => "recvmsg",
        "202" => "futex",
        "230" => "clock_nanosleep",
        "232" => "epoll_wait",
        "271" => "ppoll",
        "281" => "epoll_pwait",
        "288" => "accept4",
        "426" => "io_uring_enter",
        "running" => return "- (running)".to_string(),
        _ => return nr.to_string(),
    };
    format!("{nr} ({name})")
}

/// The report: vCPU registers (sampled), then QEMU's and this process's threads.
pub fn report(run_dir: &Path, qemu_pid: u32, kernel: Option<&Path>) -> String {
    let mut out = String::new();
    let symbols = kernel.and_then(Symbols::load);
    let sock = run_dir.join(QMP_SOCKET);
    match Qmp::connect(&sock) {
        Ok(mut q) => {
            let status = q
                .execute("query-status", serde_json::json!({}))
                .map(|v| {
                    v.get("status")
                        .and_then(|s| s.as_str())
                        .unwrap_or("?")
                        .to_string()
                })
                .unwrap_or_else(|e| format!("? ({e:#})"));
            let _ = writeln!(out, "QEMU run state: {status}");
            if let Ok(cpus) = q.execute("query-cpus-fast", serde_json::json!({})) {
                for c in cpus.as_array().into_iter().flatten() {
                    let _ = writeln!(
                        out,
                        "vCPU {} is QEMU thread {}",
                        c.get("cpu-index").unwrap_or(&serde_json::Value::Null),
                        c.get("thread-id").unwrap_or(&serde_json::Value::Null),
                    );
                }
            }
            for i in 0..SAMPLES {
                if i > 0 {
                    std::thread::sleep(SAMPLE_GAP);
                }
                match q.hmp("info registers -a") {
                    Ok(text) => {
                        let regs = parse_registers(&text);
                        let line: Vec<String> = regs
                            .iter()
                            .map(|r| {
                                let sym = u64::from_str_radix(&r.rip, 16)
                                    .ok()
                                    .and_then(|a| symbols.as_ref()?.name(a))
                                    .map(|n| format!(" ({n})"))
                                    .unwrap_or_default();
                                format!(
                                    "cpu{} RIP={}{sym} IF={} HLT={}",
                                    r.cpu,
                                    r.rip,
                                    r.interrupts.map_or("?", |b| if b { "1" } else { "0" }),
                                    r.halted.map_or("?", |b| if b { "1" } else { "0" }),
                                )
                            })
                            .collect();
                        let _ = writeln!(out, "sample {}: {}", i + 1, line.join("  "));
                    }
                    Err(e) => {
                        let _ = writeln!(out, "sample {}: info registers: {e:#}", i + 1);
                    }
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "QMP: {e:#}");
        }
    }
    if kernel.is_some() && symbols.is_none() {
        let _ = writeln!(
            out,
            "(the kernel image has no symbol table: map RIPs with the booted kernel's /proc/kallsyms)"
        );
    }
    let _ = writeln!(out, "QEMU threads (pid {qemu_pid}):");
    out.push_str(&threads(qemu_pid));
    let _ = writeln!(out, "this process's threads (the lab, when it runs here):");
    out.push_str(&threads(std::process::id()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_of_two_vcpus() {
        let text = "CPU#0\nRAX=0000000000000000 RBX=ffffffff82a0c940\n\
                    RIP=ffffffff81e3c6a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
                    CPU#1\nRIP=ffffffff8104f2e0 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n";
        let r = parse_registers(text);
        assert_eq!(
            r,
            vec![
                VcpuRegs {
                    cpu: 0,
                    rip: "ffffffff81e3c6a4".into(),
                    interrupts: Some(true),
                    halted: Some(true),
                },
                VcpuRegs {
                    cpu: 1,
                    rip: "ffffffff8104f2e0".into(),
                    interrupts: Some(false),
                    halted: Some(false),
                },
            ]
        );
    }

    #[test]
    fn garbage_gives_nothing() {
        assert!(parse_registers("no such command\n").is_empty());
    }

    #[test]
    fn symbols_of_this_test_binary_name_an_address_inside_a_function() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let Some(syms) = Symbols::load(&exe) else {
            panic!("{} has no .symtab (a stripped test binary?)", exe.display());
        };
        // Some sized function: an address 1 byte in is named after it, +0x1.
        let (start, size, name) = syms.0.iter().find(|s| s.1 > 1).unwrap().clone();
        let want = format!("{name}+0x1");
        let got = syms.name(start + 1).unwrap();
        // Aliases share an address; any of them will do, the offset must be right.
        assert!(got.ends_with("+0x1"), "{got} for {want}");
        assert!(syms
            .name(start + size)
            .is_none_or(|n| n != format!("{name}+{size:#x}")));
        assert!(Symbols::load(Path::new("/dev/null")).is_none());
    }

    #[test]
    fn threads_of_this_process_are_listed() {
        let t = threads(std::process::id());
        assert!(t.contains("state "), "{t}");
    }
}
