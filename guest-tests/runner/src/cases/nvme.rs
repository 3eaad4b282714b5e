//! NVMe controller cases: binding, identity, CMB publication.

use super::Ctx;
use p2plab_guest_abi::Marker;

fn sysfs(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn identify(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role(Role::Client)?;
    if !c.info.is_nvme() {
        return Err(format!(
            "client {} is a {}, not an NVMe controller",
            c.info.name, c.info.kind
        ));
    }
    let ctrl = c.ctrl.as_deref().ok_or("no controller")?;
    let bdf = c.bdf.as_deref().unwrap_or_default();
    let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()));
    if driver.as_deref() != Some("nvme") {
        return Err(format!("{bdf} is bound to {driver:?}, want nvme"));
    }
    let base = format!("/sys/class/nvme/{ctrl}");
    let serial = sysfs(&format!("{base}/serial")).unwrap_or_default();
    let state = sysfs(&format!("{base}/state")).unwrap_or_default();
    let model = sysfs(&format!("{base}/model")).unwrap_or_default();
    let fw = sysfs(&format!("{base}/firmware_rev")).unwrap_or_default();
    ctx.diag(&format!(
        "{} = {ctrl} at {bdf}: serial '{serial}' model '{model}' fw '{fw}' state {state}",
        c.info.name
    ));
    if serial != c.info.serial.trim() {
        return Err(format!("serial '{serial}', want '{}'", c.info.serial));
    }
    if state != "live" {
        return Err(format!("{ctrl} state is '{state}', want live"));
    }
    let ns =
        c.ns.as_deref()
            .ok_or_else(|| format!("{ctrl} has no namespace"))?;
    if !std::path::Path::new(ns).exists() {
        return Err(format!("{ns} does not exist"));
    }
    Ok(())
}

/// The kernel log (SYSLOG_ACTION_READ_ALL).
fn dmesg() -> String {
    // SAFETY: action 10 (SIZE_BUFFER) takes no buffer.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) }.max(1 << 16) as usize;
    let mut buf = vec![0u8; size];
    // SAFETY: buf is valid for `size` bytes.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), size as libc::c_int) };
    buf.truncate(n.max(0) as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn cmb_p2pmem(ctx: &mut Ctx) -> Result<(), String> {
    const MIN: u64 = 64 << 20;
    let mut checked = 0;
    let log = dmesg();
    let names: Vec<String> = [ctx.env.roles.client.clone(), ctx.env.roles.provider.clone()]
        .into_iter()
        .flatten()
        .collect();
    for name in names {
        let Some(d) = ctx.env.device(&name) else {
            continue;
        };
        if !d.info.is_nvme() || d.info.cmb_size == 0 {
            continue;
        }
        let bdf = d
            .bdf
            .as_deref()
            .ok_or_else(|| format!("{name} not found in the guest"))?;
        let size_s =
            sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/size")).ok_or_else(|| {
                format!("{name} ({bdf}): no p2pmem published (CMB not mapped by nvme)")
            })?;
        let size: u64 = size_s
            .parse()
            .map_err(|_| format!("{name}: p2pmem/size '{size_s}'"))?;
        let avail =
            sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/available")).unwrap_or_default();
        let published =
            sysfs(&format!("/sys/bus/pci/devices/{bdf}/p2pmem/published")).unwrap_or_default();
        ctx.diag(&format!(
            "{name} ({bdf}): p2pmem size {size} available {avail} published {published}"
        ));
        if size < MIN {
            return Err(format!("{name}: p2pmem/size {size} < {MIN}"));
        }
        if published != "1" {
            return Err(format!("{name}: p2pmem/published is '{published}'"));
        }
        if !log
            .lines()
            .any(|l| l.contains(bdf) && l.contains("added peer-to-peer DMA memory"))
        {
            return Err(format!(
                "{name}: no 'added peer-to-peer DMA memory' for {bdf} in dmesg"
            ));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no NVMe client/provider with a CMB in this topology".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Data cases on the client controller: its own CMB, its SQs in the CMB, the vendor log,
// fio verification, and the NVMe → NVMe-CMB → NVMe copy.
//
// Namespace regions (1 GiB namespaces; each case its own so they never read another
// case's data): p2p cases 0..64M, cmb-read 64M.., nvme-nvme-copy 128M.., sqs-in-cmb
// 192M.., vendor-log 200M.., fio-verify 256M..320M; bench (its own boot) 0..192M and
// 512M..1G.

use crate::devices::{Found, Role};
use crate::mem::{direct_io, open_direct, Mapping, MIB};
use nvme_spec::feature::InterruptCoalescing;
use std::time::Instant;

const CMB_READ_OFF: u64 = 64 << 20;
const COPY_LEN: usize = 64 * MIB;
const COPY_OFF: u64 = 128 << 20;
const SQS_OFF: u64 = 192 << 20;
const SQS_READS: usize = 1000;
const VLOG_OFF: u64 = 200 << 20;
const VLOG_READ: usize = 8 * MIB;
const FIO_OFF: u64 = 256 << 20;
const FIO_SIZE: u64 = 64 << 20;

fn rate(len: usize, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!(
        "{:.2} s, {:.1} MiB/s",
        s,
        len as f64 / MIB as f64 / s.max(1e-9)
    )
}

/// A seed that differs per boot, so data left on a reused namespace file by an earlier
/// run can never pass a verification.
fn fresh_seed(tag: u64) -> u64 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    tag ^ ns.rotate_left(17)
}

/// The client as an NVMe controller with a namespace (and its PCI address).
fn nvme_role<'a>(ctx: &Ctx<'a>, role: Role) -> Result<(&'a Found, String, String), String> {
    let d = ctx.env.role(role)?;
    if !d.info.is_nvme() {
        return Err(format!(
            "{role} {} is a {}, not an NVMe controller",
            d.info.name, d.info.kind
        ));
    }
    let bdf = d
        .bdf
        .clone()
        .ok_or_else(|| format!("{role} {} has no PCI address", d.info.name))?;
    let ns =
        d.ns.clone()
            .ok_or_else(|| format!("{role} {} has no namespace block device", d.info.name))?;
    Ok((d, bdf, ns))
}

/// Write `len` bytes of pattern `seed` at `off` of `ns` from RAM (O_DIRECT, 1 MiB chunks).
fn stage(ctx: &mut Ctx, ns: &str, off: u64, len: usize, seed: u64) -> Result<(), String> {
    let ram = Mapping::ram(len)?;
    ram.fill(seed);
    let f = open_direct(ns)?;
    let t = Instant::now();
    direct_io(&f, &ram, off, MIB, true)
        .map_err(|e| format!("staging pwrite RAM -> {ns}@{off:#x}: {e}"))?;
    ctx.diag(&format!(
        "staged {} MiB RAM -> {ns}@{}M: {}",
        len / MIB,
        off >> 20,
        rate(len, t)
    ));
    Ok(())
}

/// `p2pmem` size and available bytes of a device.
fn p2pmem_stats(bdf: &str) -> Result<(u64, u64), String> {
    let get = |f: &str| -> Result<u64, String> {
        let p = format!("/sys/bus/pci/devices/{bdf}/p2pmem/{f}");
        sysfs(&p)
            .ok_or_else(|| format!("no {p} (CMB not published as p2pmem)"))?
            .parse()
            .map_err(|_| format!("{p}: not a number"))
    };
    Ok((get("size")?, get("available")?))
}

/// cmb-read: O_DIRECT 64 MiB (16 MiB on a QEMU NVMe, see [`super::p2p::case_len`]) from the
/// client's namespace into its OWN CMB (p2pmem).
pub fn cmb_read(ctx: &mut Ctx) -> Result<(), String> {
    let (c, bdf, ns) = nvme_role(ctx, Role::Client)?;
    let len = super::p2p::case_len(c, c);
    let (size, avail) = p2pmem_stats(&bdf)?;
    ctx.diag(&format!(
        "{} ({bdf}) p2pmem: size {} MiB, available {} MiB (the rest holds SQs)",
        c.info.name,
        size >> 20,
        avail >> 20
    ));
    if avail < len as u64 {
        return Err(format!(
            "{}: only {avail} bytes of p2pmem available, need {len}",
            c.info.name
        ));
    }
    let seed = fresh_seed(0x636d_6272);
    stage(ctx, &ns, CMB_READ_OFF, len, seed)?;
    let cmb = Mapping::p2pmem(&bdf, len)?;
    cmb.fill(!seed);
    let f = open_direct(&ns)?;
    let t = Instant::now();
    direct_io(&f, &cmb, CMB_READ_OFF, MIB, false)
        .map_err(|e| format!("pread {ns} -> own CMB p2pmem ({bdf}): {e}"))?;
    ctx.diag(&format!(
        "read {ns} -> {} CMB p2pmem: {}",
        c.info.name,
        rate(len, t)
    ));
    let t = Instant::now();
    cmb.verify(seed)?;
    ctx.diag(&format!(
        "verified {} MiB in the CMB: {}",
        len / MIB,
        rate(len, t)
    ));
    Ok(())
}

/// sqs-in-cmb: the driver put the I/O SQs in the CMB, and an I/O burst works (the host
/// rule proves the controller fetched the SQEs from its own CMB).
pub fn sqs_in_cmb(ctx: &mut Ctx) -> Result<(), String> {
    let (c, bdf, ns) = nvme_role(ctx, Role::Client)?;
    let param = sysfs("/sys/module/nvme/parameters/use_cmb_sqes")
        .ok_or("no /sys/module/nvme/parameters/use_cmb_sqes")?;
    if param != "Y" {
        return Err(format!(
            "nvme.use_cmb_sqes is '{param}': the driver keeps SQs out of the CMB"
        ));
    }
    // SQs are allocated from the CMB's p2pmem pool: with nothing else mapped, the
    // difference between size and available is the SQ memory.
    let (size, avail) = p2pmem_stats(&bdf)?;
    let used = size - avail;
    let ctrl = c.ctrl.as_deref().unwrap_or("?");
    let qcount =
        sysfs(&format!("/sys/class/nvme/{ctrl}/queue_count")).unwrap_or_else(|| "?".into());
    ctx.diag(&format!("{} ({bdf}): use_cmb_sqes=Y, p2pmem in use {used} bytes of {size} (SQ memory), queue_count {qcount}", c.info.name));
    if used == 0 {
        return Err(format!(
            "{}: no p2pmem in use: the I/O SQs are not in the CMB",
            c.info.name
        ));
    }
    const BS: usize = 4096;
    const SPAN: usize = 1024; // distinct 4 KiB blocks (4 MiB)
    let seed = fresh_seed(0x7371_7363);
    stage(ctx, &ns, SQS_OFF, SPAN * BS, seed)?;
    let f = open_direct(&ns)?;
    let buf = Mapping::ram(BS)?;
    let words = buf.ptr().cast::<u64>();
    let t = Instant::now();
    for i in 0..SQS_READS {
        let blk = (i * 389) % SPAN; // a permutation stride: scattered, not sequential
        let off = SQS_OFF + (blk * BS) as u64;
        // SAFETY: buf is a live 4 KiB mapping.
        let r = unsafe {
            libc::pread(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                buf.ptr().cast(),
                BS,
                off as libc::off_t,
            )
        };
        if r != BS as isize {
            return Err(format!(
                "read {i} ({ns}@{off:#x}): {} (returned {r})",
                std::io::Error::last_os_error()
            ));
        }
        for w in [0usize, 511] {
            // SAFETY: w < 512 words of the 4 KiB mapping.
            let got = unsafe { words.add(w).read_volatile() };
            let want = crate::mem::pattern(seed, (blk * BS / 8 + w) as u64);
            if got != want {
                return Err(format!(
                    "read {i} ({ns}@{off:#x}) word {w}: got {got:#x}, want {want:#x}"
                ));
            }
        }
    }
    let s = t.elapsed().as_secs_f64();
    ctx.diag(&format!(
        "{SQS_READS} x 4 KiB O_DIRECT reads, verified: {s:.2} s, {:.0} IOPS",
        SQS_READS as f64 / s.max(1e-9)
    ));
    Ok(())
}

/// Run `prog args` and return stdout; a non-zero exit is an error carrying stderr.
fn run_tool(prog: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    let o = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{prog} {} failed ({}): {}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout)
                .chars()
                .take(400)
                .collect::<String>()
        ));
    }
    Ok(o.stdout)
}

/// Interrupts taken so far by controller `ctrl`'s I/O queues (`<ctrl>q1`, `<ctrl>q2`, …
/// in /proc/interrupts, every CPU's column).
fn io_queue_interrupts(ctrl: &str) -> Result<u64, String> {
    queue_interrupts(ctrl, false)
}

/// Interrupts taken so far on the vectors of `ctrl`'s queues (`<ctrl>qN` lines of
/// /proc/interrupts, all CPUs): the I/O queues', and the admin queue's (q0) with `admin`.
fn queue_interrupts(ctrl: &str, admin: bool) -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/interrupts")
        .map_err(|e| format!("/proc/interrupts: {e}"))?;
    let ncpus = text
        .lines()
        .next()
        .map_or(0, |h| h.split_whitespace().count());
    let prefix = format!("{ctrl}q");
    let mut total = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let name = words.clone().last().unwrap_or_default();
        let is_io_queue = name.strip_prefix(&prefix).is_some_and(|q| {
            (admin || q != "0") && !q.is_empty() && q.bytes().all(|b| b.is_ascii_digit())
        });
        if !is_io_queue {
            continue;
        }
        words.next(); // "NN:"
        total += words
            .take(ncpus)
            .map(|w| w.parse::<u64>().unwrap_or(0))
            .sum::<u64>();
    }
    Ok(total)
}

/// Interrupt Coalescing for [`irq_coalescing`]: THR 255 (256 entries, more than QD 32
/// can ever have complete) and TIME 255 (25.5 ms). Every interrupt waits out its time
/// and carries every I/O in flight: the host cannot submit more before it sees them,
/// and 25.5 ms is long enough for a TCG guest on a loaded host to have resubmitted all
/// 32 (at 2 ms the suite under CI-like load saw 23–27 per interrupt).
const IRQ_COALESCING: InterruptCoalescing = InterruptCoalescing::new().with_thr(255).with_time(255);
/// The fewest I/Os per interrupt [`irq_coalescing`] accepts with it: QD 32 less room for
/// the run's start and end (~40 interrupts in a 1 s run). Without coalescing a TCG guest
/// sees 3–20 (the most under two CPU hogs and two parallel rows).
const IRQ_COALESCED_MIN_PER_IRQ: f64 = 24.0;

/// fio 4 KiB randread at QD 32 on `ns` for 1 s, pinned to CPU 0 (so one I/O queue and
/// one vector carry it all): (I/Os, interrupts of `ctrl`'s I/O queues, seconds fio spent
/// reading).
fn qd32_ios_per_irq(ns: &str, ctrl: &str) -> Result<(u64, u64, f64), String> {
    let before = io_queue_interrupts(ctrl)?;
    let v = fio_json(&[
        "--name=irq-coalescing",
        &format!("--filename={ns}"),
        "--cpus_allowed=0",
        "--direct=1",
        "--ioengine=io_uring",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=32",
        &format!("--offset={FIO_OFF}"),
        &format!("--size={FIO_SIZE}"),
        "--time_based",
        "--runtime=1",
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ])?;
    let irqs = io_queue_interrupts(ctrl)?.saturating_sub(before);
    let job = &v["jobs"][0];
    if job["error"].as_i64() != Some(0) {
        return Err(format!("fio randread QD 32: error {}", job["error"]));
    }
    let ios = job["read"]["total_ios"]
        .as_u64()
        .ok_or("fio JSON has no read.total_ios")?;
    let ms = job["read"]["runtime"]
        .as_f64()
        .ok_or("fio JSON has no read.runtime")?;
    Ok((ios, irqs, ms / 1000.0))
}

/// irq-coalescing: the controller applies Interrupt Coalescing. Linux never sets it;
/// nvme-cli does here, and the guest's own interrupt counts show the aggregation. A
/// threshold no QD 32 run can reach also tests the time limit: without it the I/O would
/// never complete.
pub fn irq_coalescing(ctx: &mut Ctx) -> Result<(), String> {
    let (c, _bdf, ns) = nvme_role(ctx, Role::Client)?;
    let ctrl = c.ctrl.clone().ok_or("client has no controller")?;
    let (_, time) = IRQ_COALESCING
        .aggregation()
        .ok_or("IRQ_COALESCING turns coalescing off")?;
    let (ios0, irqs0, _) = qd32_ios_per_irq(&ns, &ctrl)?;
    set_interrupt_coalescing(c, IRQ_COALESCING)?;
    let coalesced = qd32_ios_per_irq(&ns, &ctrl);
    set_interrupt_coalescing(c, InterruptCoalescing::new())?;
    let (ios1, irqs1, secs) = coalesced?;
    let per = |ios: u64, irqs: u64| ios as f64 / irqs.max(1) as f64;
    ctx.diag(&format!(
        "{ctrl} QD 32: {ios0} I/Os / {irqs0} interrupts ({:.1} each) without coalescing, {ios1} / {irqs1} ({:.1} each) with THR 255 TIME 255 (25.5 ms) over {secs:.2} s",
        per(ios0, irqs0),
        per(ios1, irqs1)
    ));
    if ios1 == 0 {
        return Err("no I/O completed with coalescing on".into());
    }
    if per(ios1, irqs1) < IRQ_COALESCED_MIN_PER_IRQ {
        return Err(format!(
            "with Interrupt Coalescing THR 255 TIME 25.5 ms at QD 32: {:.1} I/Os per interrupt, want >= {IRQ_COALESCED_MIN_PER_IRQ} (each interrupt held for its time)",
            per(ios1, irqs1)
        ));
    }
    // THR is never reached, so each interrupt ends a 25.5 ms hold that began with the
    // first entry after the one before: at most one per 25.5 ms of reading (+ the I/Os
    // still in flight when fio stops, + slack). Without coalescing: 225–4,200 a second.
    let most = (secs / time.as_secs_f64()).floor() as u64 + 5;
    if irqs1 > most {
        return Err(format!(
            "with Interrupt Coalescing TIME 25.5 ms: {irqs1} interrupts in {secs:.2} s, want <= {most}"
        ));
    }
    Ok(())
}

/// What [`polled_io`] writes and verifies through the poll queue.
const POLLED_SIZE: u64 = 16 << 20;
/// The NVMe driver's poll-queue count (read at each controller reset).
const POLL_QUEUES: &str = "/sys/module/nvme/parameters/poll_queues";

/// polled-io: the driver's poll queues work on the controller. Linux creates a poll
/// queue's CQ without interrupts (IEN 0, IV 0) and reaps it by reading it; io_uring's
/// IOPOLL (fio `--hipri`) sends its I/O there. The driver sizes its queue maps when it
/// binds, so the case rebinds the client with one poll queue, has fio write and verify
/// 16 MiB polled while none of the controller's vectors may fire (a device that
/// signalled a CQ with IEN 0 would show on vector 0, the admin queue's; I/O that went
/// to an interrupt-driven queue on its vector), and rebinds it with the boot's setting.
pub fn polled_io(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role(Role::Client)?.clone();
    let boot = std::fs::read_to_string(POLL_QUEUES)
        .map_err(|e| format!("{POLL_QUEUES}: {e}"))?
        .trim()
        .to_string();
    let polled = rebind_with_poll_queues(&c, "1").and_then(|d| {
        let ctrl = d.ctrl.clone().unwrap_or_default();
        let ns = d.ns.clone().unwrap_or_default();
        polled_fio(ctx, &ctrl, &ns)
    });
    let back = rebind_with_poll_queues(&c, &boot).and_then(|d| {
        // The run's other cases use the names found at boot.
        if d.ctrl != c.ctrl || d.ns != c.ns {
            return Err(format!(
                "the client came back as {:?} {:?}, the run's other cases use {:?} {:?}",
                d.ctrl, d.ns, c.ctrl, c.ns
            ));
        }
        Ok(())
    });
    polled.and(back)
}

/// Unbind the controller `c` from nvme, set the driver's poll-queue count to `n`, bind
/// it again, and wait for its namespace; the namespace must take polled I/O iff n > 0.
fn rebind_with_poll_queues(c: &Found, n: &str) -> Result<Found, String> {
    use super::pci::{driver_of, rediscover, write_sysfs};
    let bdf = c.bdf.as_deref().ok_or("client has no PCI address")?;
    if driver_of(bdf).as_deref() == Some("nvme") {
        write_sysfs(&format!("/sys/bus/pci/devices/{bdf}/driver/unbind"), bdf)?;
    }
    let set = write_sysfs(POLL_QUEUES, n);
    write_sysfs("/sys/bus/pci/drivers/nvme/bind", bdf)?;
    set?;
    let d = rediscover(&c.info)?;
    let ns = d.ns.as_deref().unwrap_or_default();
    let name = ns.rsplit('/').next().unwrap_or(ns);
    let io_poll = super::pci::read_sysfs(&format!("/sys/class/block/{name}/queue/io_poll"))?;
    if (io_poll == "1") != (n != "0") {
        return Err(format!(
            "{ns} rebound with poll_queues={n}: queue/io_poll reads {io_poll}"
        ));
    }
    Ok(d)
}

/// fio random writes + verify of [`POLLED_SIZE`] on `ns`, all polled; no interrupt of
/// `ctrl` may come meanwhile.
fn polled_fio(ctx: &mut Ctx, ctrl: &str, ns: &str) -> Result<(), String> {
    let before = queue_interrupts(ctrl, true)?;
    let t = Instant::now();
    let f = FioVerify::run(
        "polled-io",
        ns,
        &["--ioengine=io_uring", "--hipri"],
        "4k",
        8,
        POLLED_SIZE,
    )?;
    let irqs = queue_interrupts(ctrl, true)?.saturating_sub(before);
    ctx.diag(&format!(
        "{ns} polled (io_uring --hipri, QD 8, 4 KiB): wrote {} MiB, verified {} MiB, error {}, {irqs} interrupts of {ctrl} meanwhile, {:.1} s",
        f.wrote >> 20,
        f.verified >> 20,
        f.err,
        t.elapsed().as_secs_f64()
    ));
    f.check("fio --hipri", POLLED_SIZE)?;
    if irqs != 0 {
        return Err(format!(
            "{irqs} interrupts of {ctrl} during polled I/O (its poll queue's CQ has IEN 0; nothing else ran on it)"
        ));
    }
    Ok(())
}

/// Set Features Interrupt Coalescing (08h) on `d`'s controller, CDW11 = `value`, and
/// check that Get Features reads it back.
pub(super) fn set_interrupt_coalescing(
    d: &Found,
    value: InterruptCoalescing,
) -> Result<(), String> {
    let value = value.into_bits();
    let ctrl = d
        .ctrl
        .as_deref()
        .ok_or_else(|| format!("{} has no NVMe controller", d.info.name))?;
    let dev = format!("/dev/{ctrl}");
    run_tool(
        "nvme",
        &[
            "set-feature",
            &dev,
            "--feature-id=8",
            &format!("--value={value}"),
        ],
    )?;
    let got = get_feature(&dev, 8)?;
    if got != value {
        return Err(format!(
            "{dev}: Interrupt Coalescing set to {value:#x}, reads back {got:#x}"
        ));
    }
    Ok(())
}

/// Get Features `fid` (current value) on controller `dev`: its CQE dword 0.
fn get_feature(dev: &str, fid: u8) -> Result<u32, String> {
    let out = run_tool(
        "nvme",
        &["get-feature", dev, &format!("--feature-id={fid}")],
    )?;
    let text = String::from_utf8_lossy(&out);
    // "get-feature:0x08 (Interrupt Coalescing), Current value:0x00000107"
    let v = text
        .split("Current value:")
        .nth(1)
        .map(|t| t.split_whitespace().next().unwrap_or_default())
        .ok_or_else(|| format!("nvme get-feature {dev} -f {fid}: {:.200}", text.trim()))?;
    let (digits, radix) = match v.strip_prefix("0x") {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    u32::from_str_radix(digits, radix)
        .map_err(|e| format!("nvme get-feature {dev} -f {fid}: {v:?}: {e}"))
}

const VLOG_LEN: usize = 64 * 1024;

/// The vendor log page 0xC0 of controller `ctrl` as JSON (nvme-cli's get-log).
pub(super) fn vendor_log(ctrl: &str) -> Result<(serde_json::Value, String), String> {
    let dev = format!("/dev/{ctrl}");
    let len = VLOG_LEN.to_string();
    let raw = run_tool(
        "nvme",
        &[
            "get-log",
            &dev,
            "--log-id=0xc0",
            &format!("--log-len={len}"),
            "--raw-binary",
        ],
    )?;
    if raw.len() != VLOG_LEN {
        return Err(format!(
            "nvme get-log returned {} bytes, asked for {VLOG_LEN}",
            raw.len()
        ));
    }
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("vendor log fills all {VLOG_LEN} bytes: truncated JSON"))?;
    if raw[end..].iter().any(|&b| b != 0) {
        return Err(format!(
            "vendor log: non-zero bytes after the JSON's end at {end}"
        ));
    }
    let text = String::from_utf8(raw[..end].to_vec())
        .map_err(|_| "vendor log is not UTF-8".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("vendor log is not JSON ({e}): {:.200}", text))?;
    Ok((v, text))
}

pub(super) fn log_counter(v: &serde_json::Value, dev: &str, path: &[&str]) -> Result<u64, String> {
    let d = v["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == dev))
        .ok_or_else(|| format!("vendor log has no device '{dev}'"))?;
    let mut x = d;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .ok_or_else(|| format!("vendor log: {dev}.{} is not a number", path.join(".")))
}

/// vendor-log: page 0xC0 carries the fabric's counters; they move as the guest's I/O does.
pub fn vendor_log_case(ctx: &mut Ctx) -> Result<(), String> {
    let (c, _bdf, ns) = nvme_role(ctx, Role::Client)?;
    let name = c.info.name.clone();
    let ctrl = c.ctrl.clone().ok_or("client has no controller")?;
    let (v1, _) = vendor_log(&ctrl)?;
    // Every p2plab device of the run must be in it.
    for d in ctx.env.devices.iter().filter(|d| d.info.kind.is_p2plab()) {
        log_counter(&v1, &d.info.name, &["dma", "host_memory", "write_bytes"])?;
    }
    let hw = ["dma", "host_memory", "write_bytes"];
    let w1 = log_counter(&v1, &name, &hw)?;
    let ram = Mapping::ram(VLOG_READ)?;
    let f = open_direct(&ns)?;
    direct_io(&f, &ram, VLOG_OFF, MIB, false).map_err(|e| format!("pread {ns}: {e}"))?;
    let (v2, text) = vendor_log(&ctrl)?;
    let w2 = log_counter(&v2, &name, &hw)?;
    let d = w2.checked_sub(w1).ok_or_else(|| {
        format!("{name}.dma.host_memory.write_bytes went backwards: {w1} -> {w2}")
    })?;
    ctx.diag(&format!("vendor log {ctrl}: {name}.dma.host_memory.write_bytes {w1} -> {w2} (+{d}) around a {VLOG_READ}-byte O_DIRECT read"));
    // The read itself, plus the first log's data (64 KiB) and completions.
    let slack = (VLOG_LEN + 64 * 1024) as u64;
    if d < VLOG_READ as u64 || d > VLOG_READ as u64 + slack {
        return Err(format!(
            "{name}.dma.host_memory.write_bytes grew by {d}, want {VLOG_READ}..={}",
            VLOG_READ as u64 + slack
        ));
    }
    // Monotonic everywhere.
    for dev in v2["devices"].as_array().into_iter().flatten() {
        let n = dev["name"].as_str().unwrap_or("?");
        for dir in ["host_memory", "self", "client_relay"] {
            for k in ["read_bytes", "write_bytes"] {
                let a = log_counter(&v1, n, &["dma", dir, k])?;
                let b = log_counter(&v2, n, &["dma", dir, k])?;
                if b < a {
                    return Err(format!(
                        "vendor log: {n}.dma.{dir}.{k} went backwards: {a} -> {b}"
                    ));
                }
            }
        }
    }
    // For the host: the counters the controller reported, compared with its snapshots.
    ctx.diag(&Marker::VendorLog(&text).to_string());
    Ok(())
}

/// Run the image's fio with `args` (which must include `--output-format=json`) and parse
/// its report; fio may print notices before the JSON.
pub(super) fn fio_json(args: &[&str]) -> Result<serde_json::Value, String> {
    if !std::path::Path::new("/usr/bin/fio").exists() {
        return Err("fio is not in the image (the case must list tools: [\"fio\"])".into());
    }
    let out = run_tool("/usr/bin/fio", args)?;
    let text = String::from_utf8_lossy(&out);
    let json = text
        .find('{')
        .map(|i| &text[i..])
        .ok_or_else(|| format!("fio printed no JSON: {text:.300}"))?;
    serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))
}

/// fio-verify: randwrite + verify over 64 MiB of the client namespace, QD 1 and 32.
///
/// The checksum is xxhash: every block carries fio's verify header (offset, length, seed,
/// checksum), so a lost, torn or misplaced write fails just as with crc32c, but under TCG
/// crc32c's `crc32` instructions each run through a helper and made this case 4× slower
/// (a 64 MiB QD 1 pass: 13.1 s with crc32c, 3.0 s with xxhash).
pub fn fio_verify(ctx: &mut Ctx) -> Result<(), String> {
    let (_c, _bdf, ns) = nvme_role(ctx, Role::Client)?;
    for (qd, bs) in [(1u32, "64k"), (32, "16k")] {
        let t = Instant::now();
        let f = FioVerify::run(
            &format!("verify-qd{qd}"),
            &ns,
            &["--ioengine=libaio"],
            bs,
            qd,
            FIO_SIZE,
        )?;
        ctx.diag(&format!(
            "fio QD{qd} bs {bs}: wrote {} MiB ({} MiB/s, {:.0} IOPS), verified {} MiB ({} MiB/s), error {}, {:.1} s",
            f.wrote >> 20,
            f.write_mibs,
            f.write_iops,
            f.verified >> 20,
            f.read_mibs,
            f.err,
            t.elapsed().as_secs_f64()
        ));
        f.check(&format!("fio QD{qd}"), FIO_SIZE)?;
    }
    Ok(())
}

/// A fio random-write + xxhash-verify job's figures ([`FioVerify::run`]).
struct FioVerify {
    err: i64,
    wrote: u64,
    verified: u64,
    write_mibs: u64,
    read_mibs: u64,
    write_iops: f64,
}

impl FioVerify {
    /// fio randwrite of `size` bytes at [`FIO_OFF`] of `ns` (O_DIRECT, `bs`, QD `qd`,
    /// `engine` arguments), every block verified after (xxhash, fatal).
    fn run(
        name: &str,
        ns: &str,
        engine: &[&str],
        bs: &str,
        qd: u32,
        size: u64,
    ) -> Result<Self, String> {
        let mut args = vec![
            format!("--name={name}"),
            format!("--filename={ns}"),
            "--direct=1".into(),
            "--rw=randwrite".into(),
            format!("--bs={bs}"),
            format!("--iodepth={qd}"),
            format!("--offset={FIO_OFF}"),
            format!("--size={size}"),
            "--verify=xxhash".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
            "--verify_backlog=0".into(),
            "--output-format=json".into(),
        ];
        args.extend(engine.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = fio_json(&args)?;
        let job = &v["jobs"][0];
        let n = |dir: &str, k: &str| job[dir][k].as_u64().unwrap_or(0);
        Ok(FioVerify {
            err: job["error"]
                .as_i64()
                .ok_or("fio JSON has no jobs[0].error")?,
            wrote: n("write", "io_bytes"),
            verified: n("read", "io_bytes"),
            write_mibs: n("write", "bw") / 1024,
            read_mibs: n("read", "bw") / 1024,
            write_iops: job["write"]["iops"].as_f64().unwrap_or(0.0),
        })
    }

    /// The job failed, or wrote or verified less than `size`: an error naming `what`.
    fn check(&self, what: &str, size: u64) -> Result<(), String> {
        if self.err != 0 {
            return Err(format!("{what}: error {}", self.err));
        }
        if self.wrote < size || self.verified < size {
            return Err(format!(
                "{what}: wrote {} and verified {} bytes, want >= {size} each",
                self.wrote, self.verified
            ));
        }
        Ok(())
    }
}

/// nvme-nvme-copy: client namespace → peer's CMB (p2pmem) → peer namespace, verified by
/// reading the peer namespace back into RAM.
pub fn nvme_nvme_copy(ctx: &mut Ctx) -> Result<(), String> {
    let (c, _cbdf, cns) = nvme_role(ctx, Role::Client)?;
    let (p, pbdf, pns) = nvme_role(ctx, Role::Peer)?;
    let seed = fresh_seed(0x6e6e_6370);
    stage(ctx, &cns, COPY_OFF, COPY_LEN, seed)?;
    let cmb = Mapping::p2pmem(&pbdf, COPY_LEN)?;
    cmb.fill(!seed);
    let cf = open_direct(&cns)?;
    let t = Instant::now();
    direct_io(&cf, &cmb, COPY_OFF, MIB, false)
        .map_err(|e| format!("pread {cns} -> {} CMB p2pmem: {e}", p.info.name))?;
    ctx.diag(&format!(
        "{} ({cns}) -> {} CMB: {}",
        c.info.name,
        p.info.name,
        rate(COPY_LEN, t)
    ));
    cmb.verify(seed)
        .map_err(|e| format!("{} CMB after the P2P read: {e}", p.info.name))?;
    let pf = open_direct(&pns)?;
    let t = Instant::now();
    direct_io(&pf, &cmb, COPY_OFF, MIB, true)
        .map_err(|e| format!("pwrite {} CMB -> {pns}: {e}", p.info.name))?;
    ctx.diag(&format!(
        "{} CMB -> {} ({pns}): {}",
        p.info.name,
        p.info.name,
        rate(COPY_LEN, t)
    ));
    drop(cmb);
    let ram = Mapping::ram(COPY_LEN)?;
    direct_io(&pf, &ram, COPY_OFF, MIB, false)
        .map_err(|e| format!("read-back {pns} -> RAM: {e}"))?;
    ram.verify(seed)
        .map_err(|e| format!("{pns} read back: {e}"))?;
    ctx.diag(&format!("verified {} MiB on {pns}", COPY_LEN / MIB));
    Ok(())
}

/// The root port above a PCI function (`0000:00:02.0` for `/sys/devices/pci0000:00/0000:00:02.0/...`).
fn root_port(bdf: &str) -> Result<String, String> {
    let p = std::fs::canonicalize(format!("/sys/bus/pci/devices/{bdf}"))
        .map_err(|e| format!("{bdf}: {e}"))?;
    let parts: Vec<String> = p.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let i = parts
        .iter()
        .position(|s| s.starts_with("pci"))
        .ok_or_else(|| format!("{}: no pci root", p.display()))?;
    if parts.len() < i + 3 {
        return Err(format!(
            "{bdf} sits on the root bus ({}), not below a root port",
            p.display()
        ));
    }
    Ok(parts[i + 1].clone())
}

/// p2p-host-bridge: client and provider on different root ports, an AMD (family >= 0x17)
/// CPU: the host bridge is whitelisted and the P2P read works.
pub fn p2p_host_bridge(ctx: &mut Ctx) -> Result<(), String> {
    let c = ctx.env.role(Role::Client)?;
    let p = ctx.env.role(Role::Provider)?;
    let (cb, pb) = (
        c.bdf.clone().unwrap_or_default(),
        p.bdf.clone().unwrap_or_default(),
    );
    let (cr, pr) = (root_port(&cb)?, root_port(&pb)?);
    ctx.diag(&format!(
        "{} {cb} below root port {cr}; {} {pb} below root port {pr}",
        c.info.name, p.info.name
    ));
    if cr == pr {
        return Err(format!(
            "{} and {} share root port {cr}: this is not the host-bridge path",
            c.info.name, p.info.name
        ));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    };
    let vendor = field("vendor_id").unwrap_or_default();
    let family: u32 = field("cpu family")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    ctx.diag(&format!("CPU {vendor} family {family:#x}"));
    if vendor != "AuthenticAMD" || family < 0x17 {
        return Err(format!("CPU {vendor} family {family:#x}: Linux whitelists the host bridge only for AMD family >= 0x17"));
    }
    super::p2p::read(ctx)
}
