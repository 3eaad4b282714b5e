//! The lab: the p2plab devices of one topology, their vfio-user servers, the fabric
//! they sit behind, and the control socket.
//!
//! Each device is a pure state machine implementing the device contract
//! [`PciFunction`] (`p2plab-nvme`, `p2plab-gpu`); this module is the host glue around
//! it, written once for every function (crosvm's `impl<T: PciDevice> BusDevice for T`):
//! `LabDevice` holds the live PCI config space, the memfds behind memory BARs and the
//! worker thread that runs the function, and is the vfio-user `Device`. Every config
//! event is handled in one place, `LabDevice::config_write`:
//! - BAR moves, Command (Memory Space, Bus Master) and PM state (D0/D3hot) resync the
//!   fabric's windows and Bus Master and the function's view (`LabDevice::sync_config`):
//!   outside D0 or with MSE clear the BARs do not decode (trapped accesses read all-ones,
//!   writes are dropped; peers no longer reach the memory BARs) and with BME clear or
//!   outside D0 the device issues no DMA;
//! - a Function Level Reset resets the function (its queues and engines) as well as the
//!   config space; QEMU emulates the BAR registers, so their addresses survive an FLR as
//!   the guest sees them.
//!
//! The lab keeps its door shut: a run directory it creates is 0700, its sockets are
//! 0600 and admit only the owner's (and root's) connections, a stale socket left by a
//! killed lab is replaced while a live lab's is never taken, and the BAR memfds QEMU
//! receives are size-sealed so it cannot truncate them under our own mappings.
//!
//! The worker follows the contract of [`p2plab_pci::function`]: it runs
//! `process` while there is work, polls briefly after a burst, then sleeps until a BAR
//! write returns `true` or a config event leaves `needs_processing` set. No timer wakes
//! it.

use crate::config::{DeviceConfig, DeviceKind, Topology};
use anyhow::Context;
use p2plab_counters::{Counters, ProcessSnapshot};
use p2plab_fabric::{DeviceId, Fabric};
use p2plab_memory::{memfd_create_sealed, InterruptSink, MmapRegion};
use p2plab_pci::regs::{PCIE_CONFIG_SPACE_SIZE, PCI_BASE_ADDRESS_0, PCI_NUM_BARS};
use p2plab_pci::{ConfigSpace, PciFunction, UNCLAIMED_READ};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};
use vfio_user_server as vfu;

/// One BAR window of a p2plab device as the guest programmed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarWindow {
    pub device: String,
    pub bar: u32,
    pub start: u64,
    pub len: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A vfio-user region index of a PCI device, decoded (`VFIO_PCI_*_REGION_INDEX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    /// BAR 0..=5.
    Bar(usize),
    /// The expansion ROM (none: size 0).
    Rom,
    /// The configuration space.
    Config,
    /// Legacy VGA ranges (none: size 0).
    Vga,
}

impl Region {
    fn from_index(index: u32) -> Option<Self> {
        use vfu::proto::{
            PCI_BAR0_REGION_INDEX as BAR0, PCI_BAR5_REGION_INDEX as BAR5,
            PCI_CONFIG_REGION_INDEX as CONFIG, PCI_ROM_REGION_INDEX as ROM,
            PCI_VGA_REGION_INDEX as VGA,
        };
        match index {
            BAR0..=BAR5 => usize::try_from(index - BAR0).ok().map(Region::Bar),
            ROM => Some(Region::Rom),
            CONFIG => Some(Region::Config),
            VGA => Some(Region::Vga),
            _ => None,
        }
    }
}

/// A vfio-user IRQ index of a PCI device, decoded (`VFIO_PCI_*_IRQ_INDEX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    Intx,
    Msi,
    Msix,
    /// Error notification (AER).
    Err,
    /// Device request (the host wants the device back).
    Req,
}

impl Irq {
    fn from_index(index: u32) -> Option<Self> {
        use vfu::proto::{
            PCI_ERR_IRQ_INDEX as ERR, PCI_INTX_IRQ_INDEX as INTX, PCI_MSIX_IRQ_INDEX as MSIX,
            PCI_MSI_IRQ_INDEX as MSI, PCI_REQ_IRQ_INDEX as REQ,
        };
        match index {
            INTX => Some(Irq::Intx),
            MSI => Some(Irq::Msi),
            MSIX => Some(Irq::Msix),
            ERR => Some(Irq::Err),
            REQ => Some(Irq::Req),
            _ => None,
        }
    }
}

/// Interrupts go to whichever client is connected (none: dropped, like a real device
/// with MSI-X disabled).
#[derive(Default)]
struct ClientIrqs(RwLock<Option<Arc<vfu::Irqs>>>);

impl InterruptSink for ClientIrqs {
    fn signal(&self, vector: u16) {
        if let Some(irqs) = self.0.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            irqs.signal(vector);
        }
    }
    fn msix_enabled(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|irqs| irqs.msix_enabled())
    }
}

/// Wakes the worker thread: a BAR write that recorded work, a config event that left
/// `needs_processing` set, shutdown.
#[derive(Default)]
struct Kick {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Kick {
    fn kick(&self) {
        *lock(&self.pending) = true;
        self.cv.notify_one();
    }
    /// Sleep until kicked (returns at once if a kick is pending); clears the kick.
    fn wait(&self) {
        let mut p = lock(&self.pending);
        while !*p {
            p = self.cv.wait(p).unwrap_or_else(|p| p.into_inner());
        }
        *p = false;
    }
}

/// How long the worker keeps polling after the last piece of work before it sleeps.
/// Short: the lab has two cores and a TCG guest keeps both busy (DESIGN.md §5).
const POLL_AFTER_WORK: Duration = Duration::from_micros(300);
/// Pause asked for between paced polls. The host's timers decide the real one: on the
/// 2-core VM host a 20 µs `nanosleep` returned after ~100 µs at the median (55 µs with a
/// 1 ns timer slack) and now and then after 2–4 ms.
const POLL_INTERVAL: Duration = Duration::from_micros(20);
/// The adaptive worker spins at most this long after the last piece of work, then paces:
/// long enough for a 4 KiB QD 1 reader's next command under TCG (completion interrupt,
/// the guest's block layer and fio: ~100–200 µs), short enough that a guest which
/// spends a millisecond preparing each 1 MiB request does not lose a core to the spin.
const SPIN_AFTER_WORK: Duration = Duration::from_micros(200);
/// The adaptive worker measures the completion rate over windows this long.
const RATE_WINDOW: Duration = Duration::from_millis(2);
/// Below this many completions per millisecond the adaptive worker spins (yielding)
/// between polls; from here on it paces them. Measured on a 2-core TCG host: 4 KiB
/// QD 1 runs at 2–5 completions/ms, QD 32 at 9–20.
const SPIN_BELOW_PER_MS: u64 = 8;

/// How the worker waits between polls after a burst (`P2PLAB_POLL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Spin for up to 200 µs after work while the function's completion rate is
    /// low, pace while it is high or the spin found nothing (default).
    Adaptive,
    /// Always spin (`sched_yield` between polls): lowest latency, a core while I/O runs.
    Spin,
    /// Always pace (20 µs sleeps).
    Paced,
}

impl PollMode {
    /// `P2PLAB_POLL` = `adaptive` | `spin` | `paced`; unset: adaptive.
    pub fn from_env() -> anyhow::Result<PollMode> {
        Self::parse(std::env::var("P2PLAB_POLL").ok().as_deref())
    }

    fn parse(v: Option<&str>) -> anyhow::Result<PollMode> {
        match v {
            None | Some("adaptive") => Ok(PollMode::Adaptive),
            Some("spin") => Ok(PollMode::Spin),
            Some("paced") => Ok(PollMode::Paced),
            Some(other) => anyhow::bail!("P2PLAB_POLL={other}: want adaptive, spin or paced"),
        }
    }
}

/// Chooses spin or pace from the completion rate (adaptive mode).
struct PollPolicy {
    mode: PollMode,
    /// Adaptive mode: the last judgement of the completion rate (low: spin).
    spin: bool,
    window_start: Instant,
    window_base: Option<u64>,
}

impl PollPolicy {
    fn new(mode: PollMode, completed: Option<u64>) -> Self {
        PollPolicy {
            mode,
            // A function that does not count completions is paced.
            spin: completed.is_some(),
            window_start: Instant::now(),
            window_base: completed,
        }
    }

    /// Whether to spin before the next poll, `since_work` after the last piece of work:
    /// always (`Spin`), never (`Paced`), or (`Adaptive`) while the completion rate —
    /// re-judged once per [`RATE_WINDOW`] — is low and [`SPIN_AFTER_WORK`] has not passed.
    fn spin(&mut self, since_work: Duration, completed: impl FnOnce() -> Option<u64>) -> bool {
        match self.mode {
            PollMode::Spin => true,
            PollMode::Paced => false,
            PollMode::Adaptive => since_work < SPIN_AFTER_WORK && self.rate_is_low(completed),
        }
    }

    /// Adaptive mode: whether the last judged completion rate is below
    /// [`SPIN_BELOW_PER_MS`], judging it again once per [`RATE_WINDOW`].
    fn rate_is_low(&mut self, completed: impl FnOnce() -> Option<u64>) -> bool {
        let elapsed = self.window_start.elapsed();
        if elapsed >= RATE_WINDOW {
            let now = completed();
            if let (Some(now), Some(base)) = (now, self.window_base) {
                let per_ms = now.saturating_sub(base) * 1000 / (elapsed.as_micros().max(1) as u64);
                self.spin = per_ms < SPIN_BELOW_PER_MS;
            }
            self.window_start = Instant::now();
            self.window_base = now;
        }
        self.spin
    }
}

/// The worker: `process` while it works or asks for more, a short poll after a burst
/// (shadow doorbells the driver writes meanwhile are picked up without an MMIO write),
/// then sleep until kicked. Correctness never depends on the poll. Between polls it
/// spins (yielding the core to any runnable thread) or sleeps [`POLL_INTERVAL`], as
/// [`PollPolicy`] says: on a host whose timers and wake-ups are slow (a VM), each paced
/// poll costs a context switch and ~100 µs of latency (measured there), which a 4 KiB
/// QD 1 read pays on every command; at high rates pacing lets one pass complete
/// several commands per interrupt and leaves the cores to the vCPUs.
fn run_worker<F: PciFunction + ?Sized>(
    function: &F,
    kick: &Kick,
    stop: &AtomicBool,
    mode: PollMode,
) {
    let mut policy = PollPolicy::new(mode, function.completed());
    while !stop.load(Ordering::Relaxed) {
        let mut last_work = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if function.process() || function.needs_processing() {
                last_work = Instant::now();
            } else if last_work.elapsed() > POLL_AFTER_WORK {
                // From here on the guest's submissions trap (and wake us); one that
                // slipped in while arming is served before sleeping.
                if function.arm_notifications() {
                    last_work = Instant::now();
                    continue;
                }
                break;
            } else if policy.spin(last_work.elapsed(), || function.completed()) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        kick.wait();
    }
}

/// One p2plab device: config space + function + BAR memory, as a vfio-user `Device`.
struct LabDevice<F: PciFunction> {
    name: String,
    fabric: Fabric,
    id: DeviceId,
    cfg: Mutex<ConfigSpace>,
    power_on_cfg: ConfigSpace,
    function: Arc<F>,
    /// The memfd behind each memory-backed BAR (mmapped by QEMU).
    memory_bars: [Option<Arc<File>>; PCI_NUM_BARS],
    msix_vectors: u32,
    irqs: Arc<ClientIrqs>,
    kick: Arc<Kick>,
    stop: Arc<AtomicBool>,
    /// Memory Space Enable in D0, as last synced: trapped BAR accesses reach the
    /// function only while set.
    decoding: AtomicBool,
}

/// The BAR registers (0x10..0x28) as the guest last wrote them.
type BarRegisters = [u8; 4 * PCI_NUM_BARS];

fn bar_registers(cfg: &ConfigSpace) -> BarRegisters {
    let mut regs = [0; 4 * PCI_NUM_BARS];
    cfg.read(PCI_BASE_ADDRESS_0 as u64, &mut regs);
    regs
}

impl<F: PciFunction + 'static> LabDevice<F> {
    fn new(name: &str, fabric: &Fabric, wiring: Wiring, function: Arc<F>) -> Arc<Self> {
        let cfg = function.config_space();
        // The function holds a fabric port: a weak reference breaks the cycle.
        let errors = Arc::downgrade(&function);
        fabric.set_error_source(
            wiring.id,
            Box::new(move || {
                errors
                    .upgrade()
                    .map(|f| f.error_counters())
                    .unwrap_or_default()
            }),
        );
        let msix_vectors = u32::from(cfg.msix().map_or(0, |m| m.vectors));
        Arc::new(Self {
            name: name.to_string(),
            fabric: fabric.clone(),
            id: wiring.id,
            power_on_cfg: cfg.clone(),
            cfg: Mutex::new(cfg),
            function,
            memory_bars: wiring.memory_bars,
            msix_vectors,
            irqs: wiring.irqs,
            kick: Arc::new(Kick::default()),
            stop: Arc::new(AtomicBool::new(false)),
            decoding: AtomicBool::new(false),
        })
    }

    /// Push decoding, BAR windows and Bus Master from config space to fabric and
    /// function; wake the worker if that gave the function work (queued commands may
    /// run once Bus Master is back).
    fn sync_config(&self, cfg: &ConfigSpace) {
        // memory_enabled and bus_master are both false outside D0 (D3hot).
        let decoding = cfg.memory_enabled();
        self.decoding.store(decoding, Ordering::Release);
        for bar in 0..PCI_NUM_BARS {
            let size = cfg.bar_size(bar);
            if size == 0 {
                continue;
            }
            let addr = cfg.bar_address(bar);
            let window = addr.filter(|_| decoding).map(|a| (a, size));
            self.fabric.set_bar_window(self.id, bar, window);
            self.function.bar_moved(bar, addr);
        }
        let bme = cfg.bus_master();
        self.fabric.set_bus_master(self.id, bme);
        self.function.set_bus_master(bme);
        self.wake_if_asked();
    }

    fn wake_if_asked(&self) {
        if self.function.needs_processing() {
            self.kick.kick();
        }
    }

    /// A guest config write and every event it raises.
    fn config_write(&self, offset: u64, data: &[u8]) {
        let mut cfg = lock(&self.cfg);
        let bars = bar_registers(&cfg);
        let ev = cfg.write(offset, data);
        if ev.flr_requested {
            log::info!("{}: function level reset", self.name);
            self.function.reset();
            // The config model reset the BAR registers, as hardware does. But QEMU
            // emulates them: the guest still sees its addresses, and the PCI core's
            // restore after the FLR rewrites only registers that read back different, so
            // it never sends them again. Keep ours in step with the guest's view.
            cfg.write(PCI_BASE_ADDRESS_0 as u64, &bars);
        }
        if ev.command_changed || ev.bars_changed || ev.pm_state_changed || ev.flr_requested {
            if ev.pm_state_changed {
                log::info!("{}: power state {:?}", self.name, cfg.pm_state());
            }
            self.sync_config(&cfg);
        }
    }

    /// Back to `cfg` with the function reset (DEVICE_RESET, client gone).
    fn reset_to(&self, cfg: Option<&ConfigSpace>) {
        self.function.reset();
        let mut live = lock(&self.cfg);
        match cfg {
            Some(c) => *live = c.clone(),
            None => live.reset(),
        }
        self.sync_config(&live);
    }

    /// Zero the memory BARs (VRAM, CMB) and give their pages back: the next client is
    /// a new VM, which must find neither the last one's data (a leak between guests,
    /// and stale state for its tests: p2p-read checks VRAM does not already hold its
    /// pattern) nor keep the lab's memory resident after it has gone.
    fn scrub_memory_bars(&self) {
        for (bar, f) in self.memory_bars.iter().enumerate() {
            let Some(f) = f else { continue };
            let len = f.metadata().map_or(0, |m| m.len());
            if let Err(e) = punch_hole(f, 0, len) {
                log::warn!("{}: zeroing BAR{bar} memory: {e}", self.name);
            }
        }
    }

    fn spawn_worker(&self) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let function = self.function.clone();
        let kick = self.kick.clone();
        let stop = self.stop.clone();
        let mode = PollMode::from_env()?;
        Ok(std::thread::Builder::new()
            .name(format!("{}-worker", self.name))
            .spawn(move || run_worker(&*function, &kick, &stop, mode))?)
    }
}

fn region(size: u64, flags: u32) -> vfu::RegionInfo {
    vfu::RegionInfo {
        size,
        flags,
        mmap_areas: vec![],
        fd: None,
        fd_offset: 0,
    }
}

impl<F: PciFunction + 'static> vfu::Device for LabDevice<F> {
    fn device_info(&self) -> vfu::DeviceInfo {
        vfu::DeviceInfo {
            flags: vfu::proto::DEVICE_FLAGS_PCI | vfu::proto::DEVICE_FLAGS_RESET,
            num_regions: vfu::proto::PCI_NUM_REGIONS,
            num_irqs: vfu::proto::PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<vfu::RegionInfo> {
        use vfu::proto::{
            REGION_INFO_FLAG_MMAP as MMAP, REGION_INFO_FLAG_READ as R, REGION_INFO_FLAG_WRITE as W,
        };
        Some(match Region::from_index(index)? {
            Region::Bar(bar) => {
                let size = lock(&self.cfg).bar_size(bar);
                match (&self.memory_bars[bar], size) {
                    (_, 0) => region(0, 0),
                    (Some(file), _) => vfu::RegionInfo {
                        size,
                        flags: R | W | MMAP,
                        mmap_areas: vec![vfu::SparseArea { offset: 0, size }],
                        fd: Some(file.clone()),
                        fd_offset: 0,
                    },
                    (None, _) => region(size, R | W),
                }
            }
            // QEMU refuses a config region smaller than 4 KiB: no PCIe capability.
            Region::Config => region(PCIE_CONFIG_SPACE_SIZE as u64, R | W),
            Region::Rom | Region::Vga => region(0, 0),
        })
    }

    fn irq_info(&self, index: u32) -> Option<vfu::IrqInfo> {
        use vfu::proto::{
            IRQ_INFO_EVENTFD as EVENTFD, IRQ_INFO_MASKABLE as MASKABLE,
            IRQ_INFO_NORESIZE as NORESIZE,
        };
        let (count, flags) = match Irq::from_index(index)? {
            Irq::Intx => (1, EVENTFD | MASKABLE),
            Irq::Msix => (self.msix_vectors, EVENTFD | NORESIZE),
            // MSI: not offered (MSI-X only).
            Irq::Msi => (0, EVENTFD),
            // One eventfd each, so QEMU can register its error and request notifiers
            // (nothing raises them yet).
            Irq::Err | Irq::Req => (1, EVENTFD),
        };
        Some(vfu::IrqInfo { count, flags })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), vfu::Errno> {
        match Region::from_index(index) {
            Some(Region::Bar(bar)) => {
                if !self.decoding.load(Ordering::Acquire) {
                    // MSE clear or D3hot: the BAR does not decode (master abort).
                    buf.fill(UNCLAIMED_READ);
                    return Ok(());
                }
                self.function.bar_read(bar, offset, buf);
                self.fabric.count_cpu_mmio(self.id, buf.len() as u64, 0);
                Ok(())
            }
            Some(Region::Config) => {
                check_config_access(offset, buf.len())?;
                lock(&self.cfg).read(offset, buf);
                Ok(())
            }
            _ => Err(vfu::Errno(libc::EINVAL)),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), vfu::Errno> {
        match Region::from_index(index) {
            Some(Region::Bar(bar)) => {
                if !self.decoding.load(Ordering::Acquire) {
                    return Ok(()); // not decoded: dropped
                }
                let work = self.function.bar_write(bar, offset, data);
                self.fabric.count_cpu_mmio(self.id, 0, data.len() as u64);
                if work {
                    self.kick.kick();
                }
                Ok(())
            }
            Some(Region::Config) => {
                check_config_access(offset, data.len())?;
                self.config_write(offset, data);
                Ok(())
            }
            _ => Err(vfu::Errno(libc::EINVAL)),
        }
    }

    fn reset(&self) {
        log::info!("{}: device reset", self.name);
        self.reset_to(None);
    }

    fn connected(&self, client: Arc<vfu::Client>) {
        log::info!("{}: client connected", self.name);
        // Again here: a worker step that was still finishing when the last client
        // left may have written after the scrub at its disconnect.
        self.scrub_memory_bars();
        self.fabric.set_client(self.id, Some(client.dma().clone()));
        *self.irqs.0.write().unwrap_or_else(|p| p.into_inner()) = Some(client.irqs().clone());
    }

    fn disconnected(&self) {
        log::info!("{}: client disconnected; back to power-on state", self.name);
        *self.irqs.0.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.fabric.set_client(self.id, None);
        self.reset_to(Some(&self.power_on_cfg));
        self.scrub_memory_bars();
    }
}

/// A config access must lie inside the 4 KiB config space.
fn check_config_access(offset: u64, len: usize) -> Result<(), vfu::Errno> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|e| e > PCIE_CONFIG_SPACE_SIZE as u64) {
        return Err(vfu::Errno(libc::EINVAL));
    }
    Ok(())
}

/// What `start_device` prepared for a function before it is served.
struct Wiring {
    id: DeviceId,
    irqs: Arc<ClientIrqs>,
    memory_bars: [Option<Arc<File>>; PCI_NUM_BARS],
}

struct Running {
    name: String,
    kind: DeviceKind,
    socket: PathBuf,
    server: vfu::Server,
    memory_bars: Vec<Arc<File>>,
    kick: Arc<Kick>,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// A running lab.
pub struct Lab {
    fabric: Fabric,
    devices: Vec<Running>,
    control: Option<crate::control::Control>,
}

/// Mode of a directory the lab creates for its sockets: the owner's only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Create `dir` (and missing parents) with mode 0700, so nobody else can even reach
/// the sockets inside. An existing directory is used as it is (it may be the user's):
/// a warning says so if others may write to it, since they could then replace our
/// sockets with their own (the sockets themselves are 0600 and check peer uids).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode();
            let sticky = mode & 0o1000 != 0;
            if mode & 0o022 != 0 && !sticky {
                log::warn!(
                    "{}: others may write to this directory (mode {:o}); they could replace \
                     the lab's sockets",
                    dir.display(),
                    mode & 0o7777
                );
            }
            Ok(())
        }
        Ok(_) => anyhow::bail!("{} exists and is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn open_namespace(path: &Path, size: u64) -> anyhow::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening namespace file {}", path.display()))?;
    let len = f.metadata()?.len();
    if len < size {
        f.set_len(size)
            .with_context(|| format!("sizing {}", path.display()))?;
    }
    Ok(f)
}

/// A memory BAR's memfd, size-sealed (QEMU receives the fd and could otherwise truncate
/// it under our own mapping), and our mapping of it.
fn memory_bar(name: &str, size: u64) -> anyhow::Result<(Arc<File>, Arc<MmapRegion>)> {
    let file = memfd_create_sealed(name, size)
        .with_context(|| format!("memfd for {name} ({size} bytes)"))?;
    let len = usize::try_from(size).context("BAR larger than the address space")?;
    let file = Arc::new(file);
    let region =
        MmapRegion::new(file.clone(), 0, len, true).with_context(|| format!("mapping {name}"))?;
    Ok((file, Arc::new(region)))
}

/// Dataset Management deallocate / Write Zeroes with DEAC: punch a hole in the
/// namespace file so deallocated blocks read back as zeroes and cost no disk.
struct PunchHole;

impl p2plab_nvme::Deallocate for PunchHole {
    fn punch_hole(&self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        punch_hole(file, offset, len)
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: the range reads back as zeroes and its storage
/// (disk blocks, or shmem pages of a memfd) is freed; the size stays.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a valid open fd with plain integer arguments.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Lab {
    /// Start servers for every p2plab device of `topo`; sockets at `run_dir/<name>.sock`,
    /// the control socket at `run_dir/control.sock`. A missing `run_dir` is created
    /// 0700 ([`create_private_dir`]); sockets are 0600, a stale one (left by a killed
    /// lab) is replaced and a live one refused. If any piece fails, what was started is
    /// stopped again.
    pub fn start(topo: &Topology, run_dir: &Path) -> anyhow::Result<Lab> {
        create_private_dir(run_dir)?;
        let mut lab = Lab {
            fabric: Fabric::new(),
            devices: Vec::new(),
            control: None,
        };
        // The NVMe vendor log reports what the control socket does (BAR residency, the
        // process's RSS): it learns the BAR memfds once every device has started.
        let all_bars: Arc<OnceLock<MemoryBars>> = Arc::default();
        for dc in topo.devices.iter().filter(|d| d.kind.is_p2plab()) {
            lab.devices
                .push(start_device(&lab.fabric, dc, run_dir, &all_bars)?);
        }
        let f = lab.fabric.clone();
        let bars = lab.memory_bars();
        let _ = all_bars.set(bars.clone());
        lab.control = Some(crate::control::spawn(
            &run_dir.join("control.sock"),
            Arc::new(move |cmd: &str| match cmd {
                "stats" => serde_json::to_string(&snapshot_of(&f, &bars)).ok(),
                "windows" => serde_json::to_string(&windows_of(&f)).ok(),
                _ => None,
            }),
        )?);
        Ok(lab)
    }

    /// Each device's name and the memfds behind its memory BARs.
    fn memory_bars(&self) -> MemoryBars {
        self.devices
            .iter()
            .map(|d| (d.name.clone(), d.memory_bars.clone()))
            .collect()
    }

    /// Every device served: name, kind, vfio-user socket.
    pub fn served(&self) -> impl Iterator<Item = (&str, DeviceKind, &Path)> {
        self.devices
            .iter()
            .map(|d| (d.name.as_str(), d.kind, d.socket.as_path()))
    }

    /// vfio-user socket of device `name`.
    pub fn socket_path(&self, name: &str) -> Option<PathBuf> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.socket.clone())
    }

    /// All counters (the counter contract), with each device's `bar_resident_bytes`
    /// (host memory actually backing its memory BARs: a sparse VRAM costs only what was
    /// touched) and this process's resident set. The control socket's `stats` answers
    /// the same document.
    pub fn snapshot(&self) -> Counters {
        snapshot_of(&self.fabric, &self.memory_bars())
    }

    /// Memory BAR windows currently decoded (for the CPU witness).
    pub fn bar_windows(&self) -> Vec<BarWindow> {
        windows_of(&self.fabric)
    }

    /// Host memory resident in the devices' memory BARs (bytes), per device.
    pub fn resident_bytes(&self) -> Vec<(String, u64)> {
        resident_bytes_of(&self.memory_bars())
    }

    /// Stop every device's server and worker and remove the sockets.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    /// Stop everything this lab started; sockets are unlinked only while they are
    /// still the ones it bound (never another lab's).
    fn stop_all(&mut self) {
        for d in &mut self.devices {
            d.stop.store(true, Ordering::Relaxed);
            d.kick.kick();
            d.server.shutdown();
            if let Some(w) = d.worker.take() {
                let _ = w.join();
            }
            log::debug!("{} ({}) stopped", d.name, d.kind.as_str());
        }
        if let Some(mut c) = self.control.take() {
            c.shutdown();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// What a guest run needs from the lab serving its devices: the counters and the
/// decoded memory BAR windows. A [`Lab`] in this process, or one behind its control
/// socket ([`crate::control::RemoteLab`], `p2plab serve`).
pub trait LabView: Send + Sync {
    /// All counters, in the counter contract's JSON shape ([`Lab::snapshot`]).
    fn snapshot(&self) -> Counters;
    /// Memory BAR windows currently decoded (for the CPU witness).
    fn bar_windows(&self) -> Vec<BarWindow>;
}

impl LabView for Lab {
    fn snapshot(&self) -> Counters {
        Lab::snapshot(self)
    }
    fn bar_windows(&self) -> Vec<BarWindow> {
        Lab::bar_windows(self)
    }
}

/// The fabric's counters with each device's `bar_resident_bytes` and the process's
/// `rss_bytes` added.
fn snapshot_of(fabric: &Fabric, bars: &[(String, Vec<Arc<File>>)]) -> Counters {
    let mut c = fabric.snapshot();
    add_resident_bytes(&mut c, &resident_bytes_of(bars));
    c.process = Some(ProcessSnapshot {
        rss_bytes: process_rss_bytes(),
    });
    c
}

fn resident_bytes_of(bars: &[(String, Vec<Arc<File>>)]) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    // st_blocks of a memfd counts the shmem pages allocated: cheap even for 128 GiB.
    let allocated = |f: &Arc<File>| f.metadata().map_or(0, |m| m.blocks() * 512);
    bars.iter()
        .map(|(name, files)| (name.clone(), files.iter().map(allocated).sum()))
        .collect()
}

/// Sets each device's `bar_resident_bytes`, matched by name.
fn add_resident_bytes(counters: &mut Counters, resident: &[(String, u64)]) {
    for d in &mut counters.devices {
        if let Some((_, bytes)) = resident.iter().find(|(n, _)| *n == d.name) {
            d.bar_resident_bytes = *bytes;
        }
    }
}

fn windows_of(f: &Fabric) -> Vec<BarWindow> {
    f.memory_windows()
        .into_iter()
        .map(|(device, bar, start, len)| BarWindow {
            device,
            bar,
            start,
            len,
        })
        .collect()
}

/// Each device's name and the memfds behind its memory BARs.
type MemoryBars = Vec<(String, Vec<Arc<File>>)>;

fn start_device(
    fabric: &Fabric,
    dc: &DeviceConfig,
    run_dir: &Path,
    all_bars: &Arc<OnceLock<MemoryBars>>,
) -> anyhow::Result<Running> {
    let id = fabric.add_device(&dc.name, dc.kind.as_str());
    let port = fabric.port(id);
    let mut wiring = Wiring {
        id,
        irqs: Arc::new(ClientIrqs::default()),
        memory_bars: Default::default(),
    };
    match dc.kind {
        DeviceKind::Nvme => {
            let mut namespaces = Vec::new();
            for (i, ns) in dc.namespaces().iter().enumerate() {
                let path = dc.namespace_file(i, run_dir);
                namespaces.push(p2plab_nvme::NamespaceConfig {
                    file: open_namespace(&path, ns.size.0)?,
                    size: ns.size.0,
                    lba_size: ns.lba_size,
                });
            }
            let cmb = dc.cmb_size();
            let mut cfg = p2plab_nvme::NvmeConfig::new(dc.serial(), namespaces);
            cfg.cmb_size = cmb;
            cfg.deallocate = Some(Arc::new(PunchHole));
            if let Some(q) = dc.io_queues {
                cfg.max_io_queues = q;
            }
            let ctrl = Arc::new(
                p2plab_nvme::NvmeController::new(cfg, port, wiring.irqs.clone())
                    .with_context(|| format!("{}: NVMe controller", dc.name))?,
            );
            let (f, bars) = (fabric.clone(), all_bars.clone());
            ctrl.set_vendor_log_source(Box::new(move || {
                let bars = bars.get().map_or(&[][..], Vec::as_slice);
                serde_json::to_vec(&snapshot_of(&f, bars)).unwrap_or_default()
            }));
            if cmb > 0 {
                let (file, region) = memory_bar(&format!("{}-cmb", dc.name), cmb)?;
                let bar = p2plab_nvme::NvmeController::CMB_BAR;
                fabric.set_bar_memory(id, bar, region);
                wiring.memory_bars[bar] = Some(file);
            }
            serve(fabric, dc, run_dir, wiring, ctrl)
        }
        DeviceKind::Gpu => {
            let size = dc.vram_size();
            let (file, region) = memory_bar(&format!("{}-vram", dc.name), size)?;
            let bar = p2plab_gpu::GpuDevice::VRAM_BAR;
            fabric.set_bar_memory(id, bar, region.clone());
            wiring.memory_bars[bar] = Some(file);
            let cfg = p2plab_gpu::GpuConfig {
                vram_size: size,
                serial: p2plab_pci::dsn_from_str(&dc.name),
            };
            let gpu = Arc::new(
                p2plab_gpu::GpuDevice::new(cfg, port, wiring.irqs.clone(), region)
                    .with_context(|| format!("{}: GPU device", dc.name))?,
            );
            serve(fabric, dc, run_dir, wiring, gpu)
        }
        DeviceKind::QemuNvme => anyhow::bail!("{} is QEMU's own device, not p2plab's", dc.name),
    }
}

/// Serve `function` on `run_dir/<name>.sock` with its worker thread: the one adapter
/// every device kind goes through.
fn serve<F: PciFunction + 'static>(
    fabric: &Fabric,
    dc: &DeviceConfig,
    run_dir: &Path,
    wiring: Wiring,
    function: Arc<F>,
) -> anyhow::Result<Running> {
    let device = LabDevice::new(&dc.name, fabric, wiring, function);
    let worker = Some(device.spawn_worker()?);
    let socket = run_dir.join(format!("{}.sock", dc.name));
    let started = vfu::Server::bind(&socket, device.clone())
        .with_context(|| format!("{}: binding {}", dc.name, socket.display()))
        .and_then(|server| {
            server
                .spawn()
                .with_context(|| format!("{}: starting its server", dc.name))?;
            Ok(server)
        });
    let server = match started {
        Ok(server) => server,
        Err(e) => {
            device.stop.store(true, Ordering::Relaxed);
            device.kick.kick();
            return Err(e);
        }
    };
    Ok(Running {
        name: dc.name.clone(),
        kind: dc.kind,
        socket,
        server,
        memory_bars: device.memory_bars.iter().flatten().cloned().collect(),
        kick: device.kick.clone(),
        stop: device.stop.clone(),
        worker,
    })
}

/// This process's resident set size (VmRSS), 0 if unknown.
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .flatten()
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2plab_pci::pcie::{PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR};
    use p2plab_pci::pm::{PowerState, PCI_PM_CTRL};
    use p2plab_pci::regs::{
        PCI_CAP_ID_EXP, PCI_CAP_ID_PM, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY,
    };
    use p2plab_pci::{BarDef, BarKind, PciIds};
    use vfu::proto::{PCI_BAR0_REGION_INDEX, PCI_CONFIG_REGION_INDEX, PCI_MSIX_IRQ_INDEX};
    use vfu::Device as _;

    /// The adaptive policy spins at a low completion rate, paces at a high one, and
    /// re-judges only once per window; fixed modes and functions without a count never
    /// change.
    #[test]
    fn poll_policy_follows_the_completion_rate() {
        let back = |p: &mut PollPolicy| p.window_start -= RATE_WINDOW * 2;
        let now = Duration::ZERO;
        let mut p = PollPolicy::new(PollMode::Adaptive, Some(0));
        assert!(p.spin(now, || unreachable!("no re-judging inside a window")));
        // 2 ms windows (the window start moved back by 4 ms): 100 completions is
        // 25 per ms, above the threshold.
        back(&mut p);
        assert!(!p.spin(now, || Some(100)), "high rate: paced");
        back(&mut p);
        assert!(p.spin(now, || Some(101)), "low rate: spin");
        assert!(
            !p.spin(SPIN_AFTER_WORK, || unreachable!()),
            "low rate, but the spin after work is over: paced"
        );
        let mut none = PollPolicy::new(PollMode::Adaptive, None);
        back(&mut none);
        assert!(
            !none.spin(now, || None),
            "a function without a count is paced"
        );
        for (mode, want) in [(PollMode::Spin, true), (PollMode::Paced, false)] {
            let mut p = PollPolicy::new(mode, Some(0));
            back(&mut p);
            assert_eq!(p.spin(now, || Some(1_000_000)), want, "{mode:?}");
            back(&mut p);
            assert_eq!(
                p.spin(SPIN_AFTER_WORK * 10, || Some(1_000_001)),
                want,
                "{mode:?}"
            );
        }
    }

    #[test]
    fn poll_mode_parses_p2plab_poll() {
        for (v, want) in [
            (None, Some(PollMode::Adaptive)),
            (Some("adaptive"), Some(PollMode::Adaptive)),
            (Some("spin"), Some(PollMode::Spin)),
            (Some("paced"), Some(PollMode::Paced)),
            (Some("fast"), None),
        ] {
            assert_eq!(PollMode::parse(v).ok(), want, "{v:?}");
        }
    }

    const REG_BAR: usize = 0;
    const MEM_BAR: usize = 2;
    const REG_ADDR: u64 = 0xfe00_0000;
    const MEM_ADDR: u64 = 0x80_0000_0000;
    const MEM_SIZE: u64 = 2 << 20;

    /// What the glue asked of the function.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Read(usize),
        Write(usize),
        BarMoved(usize, Option<u64>),
        BusMaster(bool),
        Reset,
    }

    /// A function that records every call and follows the worker contract: Bus Master
    /// Enable, a reset and (when `writes_are_work`) a BAR write ask for processing.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        work: AtomicBool,
        writes_are_work: AtomicBool,
        passes: std::sync::atomic::AtomicUsize,
    }

    impl Recorder {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *lock(&self.calls))
        }
        fn record(&self, c: Call) {
            lock(&self.calls).push(c);
        }
    }

    impl PciFunction for Recorder {
        fn config_space(&self) -> ConfigSpace {
            let ids = PciIds {
                vendor: p2plab_guest_abi::ids::VENDOR_ID,
                device: 0x00ff,
                class: 0x05_80_00,
                ..Default::default()
            };
            let bar = |size, prefetchable| BarDef {
                size,
                kind: BarKind::Mem64,
                prefetchable,
            };
            ConfigSpace::builder(ids)
                .bar(REG_BAR, bar(4096, false))
                .bar(MEM_BAR, bar(MEM_SIZE, true))
                .power_management()
                .pcie_endpoint()
                .build()
                .expect("valid test declaration")
        }
        fn bar_read(&self, bar: usize, _offset: u64, buf: &mut [u8]) {
            self.record(Call::Read(bar));
            buf.fill(0x11);
        }
        fn bar_write(&self, bar: usize, _offset: u64, _data: &[u8]) -> bool {
            self.record(Call::Write(bar));
            let work = self.writes_are_work.load(Ordering::SeqCst);
            if work {
                self.work.store(true, Ordering::SeqCst);
            }
            work
        }
        fn bar_moved(&self, bar: usize, address: Option<u64>) {
            self.record(Call::BarMoved(bar, address));
        }
        fn set_bus_master(&self, enabled: bool) {
            self.record(Call::BusMaster(enabled));
            if enabled {
                self.work.store(true, Ordering::SeqCst);
            }
        }
        fn reset(&self) {
            self.record(Call::Reset);
            self.work.store(true, Ordering::SeqCst);
        }
        fn process(&self) -> bool {
            self.passes.fetch_add(1, Ordering::SeqCst);
            self.work.store(false, Ordering::SeqCst);
            false
        }
        fn needs_processing(&self) -> bool {
            self.work.load(Ordering::SeqCst)
        }
        fn error_counters(&self) -> Vec<(String, u64)> {
            vec![("resets_seen".into(), self.resets())]
        }
    }

    impl Recorder {
        fn resets(&self) -> u64 {
            lock(&self.calls)
                .iter()
                .filter(|c| **c == Call::Reset)
                .count() as u64
        }
    }

    struct Bench {
        dev: Arc<LabDevice<Recorder>>,
        fabric: Fabric,
    }

    fn bench() -> Bench {
        let fabric = Fabric::new();
        let id = fabric.add_device("dev0", "test");
        let wiring = Wiring {
            id,
            irqs: Arc::new(ClientIrqs::default()),
            memory_bars: Default::default(),
        };
        let dev = LabDevice::new("dev0", &fabric, wiring, Arc::new(Recorder::default()));
        Bench { dev, fabric }
    }

    impl Bench {
        fn function(&self) -> &Recorder {
            &self.dev.function
        }
        #[track_caller]
        fn cfg_write(&self, offset: usize, data: &[u8]) {
            self.dev
                .region_write(PCI_CONFIG_REGION_INDEX, offset as u64, data)
                .expect("config write");
        }
        #[track_caller]
        fn cfg_read16(&self, offset: usize) -> u16 {
            let mut b = [0; 2];
            self.dev
                .region_read(PCI_CONFIG_REGION_INDEX, offset as u64, &mut b)
                .expect("config read");
            u16::from_le_bytes(b)
        }
        fn cap(&self, id: u8) -> usize {
            lock(&self.dev.cfg)
                .capability_offset(id)
                .expect("capability present")
        }
        /// What the guest's BIOS and driver do: program both BARs, enable MSE and BME.
        fn program(&self) {
            let bar_reg = |bar: usize| PCI_BASE_ADDRESS_0 + 4 * bar;
            self.cfg_write(bar_reg(REG_BAR), &(REG_ADDR as u32).to_le_bytes());
            self.cfg_write(bar_reg(REG_BAR + 1), &0u32.to_le_bytes());
            self.cfg_write(bar_reg(MEM_BAR), &(MEM_ADDR as u32).to_le_bytes());
            self.cfg_write(
                bar_reg(MEM_BAR + 1),
                &((MEM_ADDR >> 32) as u32).to_le_bytes(),
            );
            self.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        }
        fn command(&self, command: u16) {
            self.cfg_write(PCI_COMMAND, &command.to_le_bytes());
        }
        fn power_state(&self, state: PowerState) {
            let pmcsr = self.cap(PCI_CAP_ID_PM) + PCI_PM_CTRL;
            self.cfg_write(pmcsr, &state.bits().to_le_bytes());
        }
        /// The fabric's view: (BAR, start, len) windows and Bus Master.
        fn fabric_view(&self) -> (Vec<(u32, u64, u64)>, bool) {
            let snap = self.fabric.snapshot();
            let d = &snap.devices[0];
            let windows = d.bars.iter().map(|w| (w.bar, w.start, w.len)).collect();
            (windows, d.bus_master)
        }
        fn bar0_read(&self) -> [u8; 4] {
            let mut b = [0; 4];
            self.dev
                .region_read(PCI_BAR0_REGION_INDEX, 0, &mut b)
                .expect("BAR0 read");
            b
        }
        fn bar0_write(&self) {
            self.dev
                .region_write(PCI_BAR0_REGION_INDEX, 0, &[1, 2, 3, 4])
                .expect("BAR0 write");
        }
        /// Whether the worker has been woken (and clears the kick).
        fn kicked(&self) -> bool {
            std::mem::take(&mut *lock(&self.dev.kick.pending))
        }
    }

    fn decoded() -> Vec<(u32, u64, u64)> {
        vec![
            (REG_BAR as u32, REG_ADDR, 4096),
            (MEM_BAR as u32, MEM_ADDR, MEM_SIZE),
        ]
    }

    #[test]
    fn a_client_leaving_zeroes_the_memory_bars_and_frees_their_pages() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        use vfu::Device;
        let fabric = Fabric::new();
        let id = fabric.add_device("dev0", "test");
        let (file, _region) = memory_bar("dev0-mem", MEM_SIZE).unwrap();
        let mut memory_bars: [Option<Arc<File>>; PCI_NUM_BARS] = Default::default();
        memory_bars[MEM_BAR] = Some(file.clone());
        let wiring = Wiring {
            id,
            irqs: Arc::new(ClientIrqs::default()),
            memory_bars,
        };
        let dev = LabDevice::new("dev0", &fabric, wiring, Arc::new(Recorder::default()));
        // What a guest left in its "VRAM".
        file.write_all_at(&[0x5a; 8192], MEM_SIZE / 2).unwrap();
        assert!(file.metadata().unwrap().blocks() > 0);
        dev.disconnected();
        let mut back = vec![0xff; 8192];
        file.read_exact_at(&mut back, MEM_SIZE / 2).unwrap();
        assert!(back.iter().all(|&b| b == 0), "the next client finds zeroes");
        assert_eq!(file.metadata().unwrap().blocks(), 0, "pages given back");
        assert_eq!(
            file.metadata().unwrap().len(),
            MEM_SIZE,
            "size kept (sealed)"
        );
    }

    #[test]
    fn programmed_bars_decode_and_reach_the_function() {
        let b = bench();
        assert_eq!(
            b.bar0_read(),
            [UNCLAIMED_READ; 4],
            "no decoding at power-on"
        );
        b.program();
        assert_eq!(b.fabric_view(), (decoded(), true));
        let calls = b.function().take();
        assert!(calls.contains(&Call::BarMoved(MEM_BAR, Some(MEM_ADDR))));
        assert_eq!(calls.last(), Some(&Call::BusMaster(true)));
        assert_eq!(b.bar0_read(), [0x11; 4]);
        assert_eq!(b.function().take(), vec![Call::Read(REG_BAR)]);
    }

    #[test]
    fn flr_resets_the_function_and_keeps_the_bar_addresses_the_guest_sees() {
        let b = bench();
        b.program();
        b.function().take();
        b.kicked();
        let devctl = b.cap(PCI_CAP_ID_EXP) + PCI_EXP_DEVCTL;
        let v = b.cfg_read16(devctl) | PCI_EXP_DEVCTL_BCR_FLR;
        b.cfg_write(devctl, &v.to_le_bytes());
        let calls = b.function().take();
        assert_eq!(calls.first(), Some(&Call::Reset), "{calls:?}");
        assert!(calls.contains(&Call::BusMaster(false)));
        assert!(b.kicked(), "the worker runs to drop the function's queues");
        // Command was reset: nothing decodes, no DMA.
        assert_eq!(b.fabric_view(), (vec![], false));
        assert_eq!(b.bar0_read(), [UNCLAIMED_READ; 4]);
        // QEMU keeps showing the guest its BAR addresses; the PCI core's restore writes
        // only Command back, and the windows return where they were.
        assert_eq!(lock(&b.dev.cfg).bar_address(MEM_BAR), Some(MEM_ADDR));
        b.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        assert_eq!(b.fabric_view(), (decoded(), true));
    }

    #[test]
    fn d3hot_stops_dma_and_decoding_until_d0() {
        let b = bench();
        b.program();
        b.function().take();
        b.kicked();
        b.power_state(PowerState::D3Hot);
        assert_eq!(
            b.fabric_view(),
            (vec![], false),
            "no windows, no bus master"
        );
        let calls = b.function().take();
        assert!(calls.contains(&Call::BusMaster(false)), "{calls:?}");
        assert!(
            !calls.contains(&Call::Reset),
            "No_Soft_Reset: D3hot keeps state"
        );
        assert_eq!(b.bar0_read(), [UNCLAIMED_READ; 4]);
        b.bar0_write();
        assert!(
            b.function().take().is_empty(),
            "BAR accesses do not reach it"
        );
        b.power_state(PowerState::D0);
        assert_eq!(b.fabric_view(), (decoded(), true));
        assert!(b.kicked(), "work queued while in D3hot may run again");
    }

    #[test]
    fn the_function_s_error_counters_reach_the_fabric_snapshot() {
        let b = bench();
        b.dev.reset();
        b.dev.reset();
        let snap = b.fabric.snapshot();
        assert_eq!(snap.devices[0].errors.get("resets_seen"), Some(&2));
        // The source holds the function weakly: dropping the device drops the function.
        let function = Arc::downgrade(&b.dev.function);
        drop(b.dev);
        assert!(
            function.upgrade().is_none(),
            "no reference cycle through the fabric"
        );
        assert!(b.fabric.snapshot().devices[0].errors.is_empty());
    }

    #[test]
    fn bus_master_enable_wakes_the_worker() {
        let b = bench();
        b.program();
        b.command(PCI_COMMAND_MEMORY);
        b.kicked();
        b.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        assert!(b.kicked());
    }

    #[test]
    fn bar_writes_wake_the_worker_only_when_they_record_work() {
        let b = bench();
        b.program();
        b.kicked();
        b.bar0_write();
        assert!(!b.kicked(), "the function recorded no work");
        b.function().writes_are_work.store(true, Ordering::SeqCst);
        b.bar0_write();
        assert!(b.kicked());
    }

    #[test]
    fn idle_worker_sleeps_until_woken() {
        let b = bench();
        b.program();
        let worker = b.dev.spawn_worker().expect("worker thread");
        let passes = || b.function().passes.load(Ordering::SeqCst);
        let settle = |min: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while passes() < min && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Past the poll window after the last pass.
            std::thread::sleep(Duration::from_millis(50));
            passes()
        };
        let idle = settle(1);
        assert!(idle >= 1, "the Bus Master Enable was processed");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(passes(), idle, "no timer wakes an idle worker");
        b.function().writes_are_work.store(true, Ordering::SeqCst);
        b.bar0_write();
        assert!(settle(idle + 1) > idle, "a BAR write with work wakes it");
        b.dev.stop.store(true, Ordering::Relaxed);
        b.dev.kick.kick();
        worker.join().expect("worker exits");
    }

    #[test]
    fn regions_and_irqs_are_decoded_by_name() {
        assert_eq!(Region::from_index(0), Some(Region::Bar(0)));
        assert_eq!(Region::from_index(5), Some(Region::Bar(5)));
        assert_eq!(Region::from_index(6), Some(Region::Rom));
        assert_eq!(Region::from_index(7), Some(Region::Config));
        assert_eq!(Region::from_index(8), Some(Region::Vga));
        assert_eq!(Region::from_index(9), None);
        assert_eq!(Irq::from_index(0), Some(Irq::Intx));
        assert_eq!(Irq::from_index(2), Some(Irq::Msix));
        assert_eq!(Irq::from_index(4), Some(Irq::Req));
        assert_eq!(Irq::from_index(5), None);
        let b = bench();
        let info = |i| b.dev.region_info(i).map(|r| r.size);
        assert_eq!(info(PCI_CONFIG_REGION_INDEX), Some(4096));
        assert_eq!(info(PCI_BAR0_REGION_INDEX), Some(4096));
        assert_eq!(info(1), Some(0), "upper half of the 64-bit BAR0");
        assert_eq!(info(9), None);
        assert_eq!(b.dev.irq_info(PCI_MSIX_IRQ_INDEX).map(|i| i.count), Some(0));
    }

    #[test]
    fn resident_bytes_are_matched_to_devices_by_name() {
        let dev = |name: &str| p2plab_counters::DeviceSnapshot {
            name: name.into(),
            ..Default::default()
        };
        let mut counters = Counters {
            devices: vec![dev("gpu0"), dev("nvme0")],
            process: None,
            error: None,
        };
        let resident = [("nvme0".to_string(), 4096), ("gpu0".to_string(), 8192)];
        add_resident_bytes(&mut counters, &resident);
        assert_eq!(counters.devices[0].bar_resident_bytes, 8192);
        assert_eq!(counters.devices[1].bar_resident_bytes, 4096);
    }

    /// nvme0 (2 MiB CMB, 1 MiB namespace) and gpu0 (2 MiB VRAM): a lab that starts fast.
    fn tiny_topology() -> Topology {
        let t: Topology = toml::from_str(
            "[[device]]\nname = 'nvme0'\nkind = 'nvme'\ncmb_size = '2M'\n\
             namespaces = [{ size = '1M', lba_size = 512 }]\n\
             [[device]]\nname = 'gpu0'\nkind = 'gpu'\nvram_size = '2M'\n",
        )
        .expect("valid toml");
        t.validate().expect("valid topology");
        t
    }

    /// A fresh, not yet existing directory for one test.
    fn fresh_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2plab-lab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const SOCKETS: [&str; 3] = ["nvme0.sock", "gpu0.sock", "control.sock"];

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_lab_keeps_its_directory_and_sockets_to_its_owner() {
        use std::os::unix::fs::FileTypeExt;
        let top = fresh_dir("private");
        let dir = top.join("run");
        let lab = Lab::start(&tiny_topology(), &dir).expect("lab starts");
        assert_eq!(mode(&dir), PRIVATE_DIR_MODE);
        assert_eq!(mode(&top), PRIVATE_DIR_MODE, "missing parents too");
        for s in SOCKETS {
            let p = dir.join(s);
            assert!(std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_socket());
            assert_eq!(mode(&p), 0o600, "{s}");
        }
        // QEMU receives the BAR memfds: it must not be able to truncate them under us.
        let bars: Vec<_> = lab.devices.iter().flat_map(|d| &d.memory_bars).collect();
        assert_eq!(bars.len(), 2, "nvme0's CMB and gpu0's VRAM");
        for f in bars {
            assert_eq!(f.set_len(0).unwrap_err().raw_os_error(), Some(libc::EPERM));
        }
        lab.shutdown();
        for s in SOCKETS {
            assert!(!dir.join(s).exists(), "{s} unlinked at shutdown");
        }
        assert!(
            dir.join("nvme0n1.img").exists(),
            "the lab leaves its images"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_remote_view_reads_the_same_counters_and_windows_as_the_lab() {
        let dir = fresh_dir("remote");
        let lab = Lab::start(&tiny_topology(), &dir).expect("lab starts");
        let remote = crate::RemoteLab::connect(&dir).expect("the control socket answers");
        let (local, far) = (LabView::snapshot(&lab), LabView::snapshot(&remote));
        let names =
            |v: &Counters| -> Vec<String> { v.devices.iter().map(|d| d.name.clone()).collect() };
        assert_eq!(names(&far), ["nvme0", "gpu0"]);
        assert_eq!(names(&far), names(&local));
        for v in [&local, &far] {
            assert!(v.process.is_some_and(|p| p.rss_bytes > 0));
        }
        assert_eq!(LabView::bar_windows(&remote), LabView::bar_windows(&lab));
        lab.shutdown();
        assert!(
            crate::RemoteLab::connect(&dir).is_err(),
            "nobody answers once the lab stopped"
        );
        assert!(LabView::snapshot(&remote).error.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let dir = fresh_dir("existing");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lab = Lab::start(&tiny_topology(), &dir).expect("lab starts");
        assert_eq!(mode(&dir), 0o755, "the user's directory is not changed");
        assert_eq!(mode(&dir.join("nvme0.sock")), 0o600);
        lab.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lab_in_the_same_directory_is_refused_and_the_first_serves_on() {
        let dir = fresh_dir("twice");
        let first = Lab::start(&tiny_topology(), &dir).expect("first lab");
        let e = Lab::start(&tiny_topology(), &dir)
            .err()
            .expect("the second lab is refused");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("nvme0.sock") && msg.contains("a live process is listening"),
            "{msg}"
        );
        drop(e);
        for s in SOCKETS {
            assert!(dir.join(s).exists(), "{s} still there");
        }
        assert_eq!(
            crate::control::request(&dir.join("control.sock"), "ping").unwrap(),
            "\"pong\""
        );
        std::os::unix::net::UnixStream::connect(dir.join("gpu0.sock")).expect("gpu0 serves");
        first.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_killed_labs_stale_sockets_are_replaced() {
        let dir = fresh_dir("stale");
        create_private_dir(&dir).unwrap();
        for s in SOCKETS {
            // What SIGKILL leaves behind: socket files nobody listens on.
            drop(std::os::unix::net::UnixListener::bind(dir.join(s)).unwrap());
        }
        let lab = Lab::start(&tiny_topology(), &dir).expect("stale sockets are replaced");
        assert_eq!(
            crate::control::request(&dir.join("control.sock"), "ping").unwrap(),
            "\"pong\""
        );
        lab.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_start_stops_what_it_started() {
        let dir = fresh_dir("partial");
        create_private_dir(&dir).unwrap();
        // gpu0 comes second: nvme0 starts, then gpu0's path is taken.
        std::fs::write(dir.join("gpu0.sock"), b"not a socket").unwrap();
        let e = Lab::start(&tiny_topology(), &dir).err().expect("refused");
        assert!(format!("{e:#}").contains("is not a socket"), "{e:#}");
        assert!(!dir.join("nvme0.sock").exists(), "nvme0 was stopped again");
        assert_eq!(
            std::fs::read(dir.join("gpu0.sock")).unwrap(),
            b"not a socket"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
