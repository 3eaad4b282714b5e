//! The lab: the p2plab devices of one topology, their vfio-user servers, the fabric
//! they sit behind, and the control socket.
//!
//! Each device is a pure state machine (`p2plab-nvme`, `p2plab-gpu`); this module is
//! the host glue around it: the PCI config space, the memfds behind memory BARs, a
//! worker thread that runs the model's queues, and the vfio-user `Device` adapter that
//! keeps the fabric informed of BAR windows, Bus Master Enable and the client.

use crate::config::{DeviceConfig, DeviceKind, Topology};
use anyhow::Context;
use p2plab_fabric::{DeviceId, Fabric, HostMemory, HostRoute};
use p2plab_memory::{memfd_create, DmaError, InterruptSink, MmapRegion};
use p2plab_pci::ConfigSpace;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};
use vfio_user_server as vfu;

/// One BAR window of a p2plab device as the guest programmed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BarWindow {
    pub device: String,
    pub bar: u32,
    pub start: u64,
    pub len: u64,
}

/// What the glue needs from a device model.
trait Model: Send + Sync {
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]);
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]);
    /// Run queued work once; true if anything was done.
    fn process(&self) -> bool;
    fn reset(&self);
    fn set_bus_master(&self, enabled: bool);
    fn bar_moved(&self, _bar: usize, _addr: Option<u64>) {}
}

impl Model for p2plab_nvme::NvmeController {
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]) {
        p2plab_nvme::NvmeController::bar_read(self, bar, offset, buf)
    }
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        p2plab_nvme::NvmeController::bar_write(self, bar, offset, data);
    }
    fn process(&self) -> bool {
        p2plab_nvme::NvmeController::process(self)
    }
    fn reset(&self) {
        p2plab_nvme::NvmeController::reset(self)
    }
    fn set_bus_master(&self, enabled: bool) {
        p2plab_nvme::NvmeController::set_bus_master(self, enabled)
    }
    fn bar_moved(&self, bar: usize, addr: Option<u64>) {
        if bar == p2plab_nvme::NvmeController::CMB_BAR {
            self.set_cmb_bar_address(addr);
        }
    }
}

impl Model for p2plab_gpu::GpuDevice {
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]) {
        p2plab_gpu::GpuDevice::bar_read(self, bar, offset, buf)
    }
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        p2plab_gpu::GpuDevice::bar_write(self, bar, offset, data)
    }
    fn process(&self) -> bool {
        p2plab_gpu::GpuDevice::process(self)
    }
    fn reset(&self) {
        p2plab_gpu::GpuDevice::reset(self)
    }
    fn set_bus_master(&self, enabled: bool) {
        p2plab_gpu::GpuDevice::set_bus_master(self, enabled)
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
}

/// The vfio-user client's DMA map table, as the fabric's view of host memory.
struct ClientMemory(Arc<vfu::ClientDma>);

impl HostMemory for ClientMemory {
    fn resolve(&self, addr: u64, len: u64, write: bool) -> Result<(HostRoute, u64), DmaError> {
        let (r, n) = self.0.resolve(addr, len, write)?;
        Ok((
            match r {
                vfu::Resolved::Mapped { region, offset } => HostRoute::Mapped { region, offset },
                vfu::Resolved::Relay => HostRoute::Relay,
            },
            n,
        ))
    }
    fn relay_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.0.relay_read(addr, buf)
    }
    fn relay_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.0.relay_write(addr, data)
    }
}

/// Wakes the worker thread: a doorbell write, a reset, shutdown.
#[derive(Default)]
struct Kick {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Kick {
    fn kick(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_one();
    }
    /// Wait for a kick or `timeout`; clears the kick.
    fn wait(&self, timeout: Duration) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !*p {
            p = self
                .cv
                .wait_timeout(p, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *p = false;
    }
}

/// How long the worker keeps polling after the last piece of work before it sleeps.
/// Short: the lab has two cores and a TCG guest keeps both busy (DESIGN.md §5).
const POLL_AFTER_WORK: Duration = Duration::from_micros(300);
/// Pause between polls while busy.
const POLL_INTERVAL: Duration = Duration::from_micros(20);
/// Sleeping worker still looks at the queues this often (shadow doorbells written
/// without an MMIO kick are the guest's bug, but must not hang it forever).
const IDLE_RECHECK: Duration = Duration::from_millis(50);

struct MemoryBar {
    file: Arc<File>,
}

/// One p2plab device: config space + model + BAR memory, as a vfio-user `Device`.
struct LabDevice {
    name: String,
    fabric: Fabric,
    id: DeviceId,
    cfg: Mutex<ConfigSpace>,
    power_on_cfg: ConfigSpace,
    model: Arc<dyn Model>,
    memory_bars: [Option<MemoryBar>; 6],
    msix_vectors: u32,
    irqs: Arc<ClientIrqs>,
    kick: Arc<Kick>,
    stop: Arc<AtomicBool>,
}

use vfu::proto::{
    PCI_CONFIG_REGION_INDEX as VFIO_PCI_CONFIG_REGION_INDEX,
    PCI_INTX_IRQ_INDEX as VFIO_PCI_INTX_IRQ_INDEX, PCI_MSIX_IRQ_INDEX as VFIO_PCI_MSIX_IRQ_INDEX,
    PCI_NUM_IRQS as VFIO_PCI_NUM_IRQS, PCI_NUM_REGIONS as VFIO_PCI_NUM_REGIONS,
};

impl LabDevice {
    /// Push BAR windows and Bus Master Enable from config space to fabric and model.
    fn sync_config(&self, cfg: &ConfigSpace) {
        let mse = cfg.memory_enabled();
        for bar in 0..6 {
            let size = cfg.bar_size(bar);
            if size == 0 {
                continue;
            }
            let addr = if mse { cfg.bar_address(bar) } else { None };
            self.fabric
                .set_bar_window(self.id, bar, addr.map(|a| (a, size)));
            self.model.bar_moved(bar, cfg.bar_address(bar));
        }
        let bme = cfg.bus_master();
        self.fabric.set_bus_master(self.id, bme);
        self.model.set_bus_master(bme);
    }

    fn spawn_worker(self: &Arc<Self>) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let model = self.model.clone();
        let kick = self.kick.clone();
        let stop = self.stop.clone();
        Ok(std::thread::Builder::new()
            .name(format!("{}-worker", self.name))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut last_work = Instant::now();
                    loop {
                        if model.process() {
                            last_work = Instant::now();
                        } else if last_work.elapsed() > POLL_AFTER_WORK {
                            break;
                        } else {
                            // Paced polling: each pass reads the shadow doorbells in guest
                            // RAM; a hot spin would re-read them ~200k times a second and
                            // steal the vCPUs' core (two cores, TCG).
                            std::thread::sleep(POLL_INTERVAL);
                        }
                    }
                    kick.wait(IDLE_RECHECK);
                }
            })?)
    }
}

impl vfu::Device for LabDevice {
    fn device_info(&self) -> vfu::DeviceInfo {
        vfu::DeviceInfo {
            flags: vfu::proto::DEVICE_FLAGS_PCI | vfu::proto::DEVICE_FLAGS_RESET,
            num_regions: VFIO_PCI_NUM_REGIONS,
            num_irqs: VFIO_PCI_NUM_IRQS,
        }
    }

    fn region_info(&self, index: u32) -> Option<vfu::RegionInfo> {
        use vfu::proto::{
            REGION_INFO_FLAG_MMAP as MMAP, REGION_INFO_FLAG_READ as R, REGION_INFO_FLAG_WRITE as W,
        };
        let empty = vfu::RegionInfo {
            size: 0,
            flags: 0,
            mmap_areas: vec![],
            fd: None,
            fd_offset: 0,
        };
        match index {
            0..=5 => {
                let bar = index as usize;
                let size = self
                    .cfg
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bar_size(bar);
                if size == 0 {
                    return Some(empty);
                }
                Some(match &self.memory_bars[bar] {
                    Some(m) => vfu::RegionInfo {
                        size,
                        flags: R | W | MMAP,
                        mmap_areas: vec![vfu::SparseArea { offset: 0, size }],
                        fd: Some(m.file.clone()),
                        fd_offset: 0,
                    },
                    None => vfu::RegionInfo {
                        size,
                        flags: R | W,
                        mmap_areas: vec![],
                        fd: None,
                        fd_offset: 0,
                    },
                })
            }
            VFIO_PCI_CONFIG_REGION_INDEX => Some(vfu::RegionInfo {
                size: 4096,
                flags: R | W,
                mmap_areas: vec![],
                fd: None,
                fd_offset: 0,
            }),
            6 | 8 => Some(empty),
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<vfu::IrqInfo> {
        use vfu::proto::{
            IRQ_INFO_EVENTFD as EVENTFD, IRQ_INFO_MASKABLE as MASKABLE,
            IRQ_INFO_NORESIZE as NORESIZE,
        };
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => Some(vfu::IrqInfo {
                count: 1,
                flags: EVENTFD | MASKABLE,
            }),
            VFIO_PCI_MSIX_IRQ_INDEX => Some(vfu::IrqInfo {
                count: self.msix_vectors,
                flags: EVENTFD | NORESIZE,
            }),
            // MSI: not offered (MSI-X only). ERR/REQ: one eventfd each, so QEMU can
            // register its error and request notifiers (nothing raises them yet).
            1 => Some(vfu::IrqInfo {
                count: 0,
                flags: EVENTFD,
            }),
            3 | 4 => Some(vfu::IrqInfo {
                count: 1,
                flags: EVENTFD,
            }),
            _ => None,
        }
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), vfu::Errno> {
        match index {
            0..=5 => {
                self.model.bar_read(index as usize, offset, buf);
                self.fabric.count_cpu_mmio(self.id, buf.len() as u64, 0);
                Ok(())
            }
            VFIO_PCI_CONFIG_REGION_INDEX => {
                if offset
                    .checked_add(buf.len() as u64)
                    .is_none_or(|e| e > 4096)
                {
                    return Err(vfu::Errno(libc::EINVAL));
                }
                self.cfg
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, buf);
                Ok(())
            }
            _ => Err(vfu::Errno(libc::EINVAL)),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), vfu::Errno> {
        match index {
            0..=5 => {
                self.model.bar_write(index as usize, offset, data);
                self.fabric.count_cpu_mmio(self.id, 0, data.len() as u64);
                self.kick.kick();
                Ok(())
            }
            VFIO_PCI_CONFIG_REGION_INDEX => {
                if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|e| e > 4096)
                {
                    return Err(vfu::Errno(libc::EINVAL));
                }
                let mut cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
                let ev = cfg.write(offset, data);
                if ev.command_changed || ev.bars_changed {
                    self.sync_config(&cfg);
                }
                Ok(())
            }
            _ => Err(vfu::Errno(libc::EINVAL)),
        }
    }

    fn reset(&self) {
        log::info!("{}: device reset", self.name);
        self.model.reset();
        let mut cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
        cfg.reset();
        self.sync_config(&cfg);
        self.kick.kick();
    }

    fn connected(&self, client: Arc<vfu::Client>) {
        log::info!("{}: client connected", self.name);
        self.fabric
            .set_client(self.id, Some(Arc::new(ClientMemory(client.dma().clone()))));
        *self.irqs.0.write().unwrap_or_else(|p| p.into_inner()) = Some(client.irqs().clone());
    }

    fn disconnected(&self) {
        log::info!("{}: client disconnected; back to power-on state", self.name);
        *self.irqs.0.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.fabric.set_client(self.id, None);
        self.model.reset();
        let mut cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
        *cfg = self.power_on_cfg.clone();
        self.sync_config(&cfg);
    }
}

struct Running {
    name: String,
    kind: DeviceKind,
    socket: PathBuf,
    server: vfu::Server,
    device: Arc<LabDevice>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// A running lab.
pub struct Lab {
    fabric: Fabric,
    devices: Vec<Running>,
    dir: PathBuf,
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

fn memory_bar(name: &str, size: u64) -> anyhow::Result<(Arc<File>, Arc<MmapRegion>)> {
    let file =
        memfd_create(name, size).with_context(|| format!("memfd for {name} ({size} bytes)"))?;
    let len = usize::try_from(size).context("BAR larger than the address space")?;
    let region = MmapRegion::new(&file, 0, len, true).with_context(|| format!("mapping {name}"))?;
    Ok((Arc::new(file), Arc::new(region)))
}

/// Dataset Management deallocate / Write Zeroes with DEAC: punch a hole in the
/// namespace file so deallocated blocks read back as zeroes and cost no disk.
struct PunchHole;

impl p2plab_nvme::Deallocate for PunchHole {
    fn punch_hole(&self, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
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
}

impl Lab {
    /// Start servers for every p2plab device of `topo`; sockets at `run_dir/<name>.sock`,
    /// the control socket at `run_dir/control.sock`.
    pub fn start(topo: &Topology, run_dir: &Path) -> anyhow::Result<Lab> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let fabric = Fabric::new();
        let mut devices = Vec::new();
        for dc in topo.devices.iter().filter(|d| d.kind.is_p2plab()) {
            devices.push(start_device(&fabric, dc, run_dir)?);
        }
        let lab = Lab {
            fabric,
            devices,
            dir: run_dir.to_path_buf(),
        };
        let f = lab.fabric.clone();
        crate::control::spawn(
            &run_dir.join("control.sock"),
            Arc::new(move |cmd: &str| match cmd {
                "stats" => serde_json::to_string(&f.snapshot()).ok(),
                "windows" => serde_json::to_string(&windows_of(&f)).ok(),
                _ => None,
            }),
        )?;
        Ok(lab)
    }

    /// vfio-user socket of device `name`.
    pub fn socket_path(&self, name: &str) -> Option<PathBuf> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.socket.clone())
    }

    /// All counters, in the counter contract's JSON shape.
    ///
    /// Besides the contract's fields each device carries `bar_resident_bytes` (host
    /// memory actually backing its memory BARs: a sparse VRAM costs only what was
    /// touched), and `process.rss_bytes` is this process's resident set.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.fabric.snapshot()).unwrap_or_default();
        if let Some(devs) = v
            .get_mut("devices")
            .and_then(serde_json::Value::as_array_mut)
        {
            for (d, (_, resident)) in devs.iter_mut().zip(self.resident_bytes()) {
                d["bar_resident_bytes"] = resident.into();
            }
        }
        v["process"] = serde_json::json!({ "rss_bytes": process_rss_bytes() });
        v
    }

    /// Memory BAR windows currently decoded (for the CPU witness).
    pub fn bar_windows(&self) -> Vec<BarWindow> {
        windows_of(&self.fabric)
    }

    /// Host memory resident in the devices' memory BARs (bytes), per device.
    pub fn resident_bytes(&self) -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        // st_blocks of a memfd counts the shmem pages allocated: cheap even for 128 GiB.
        let allocated = |f: &MemoryBar| f.file.metadata().map_or(0, |m| m.blocks() * 512);
        self.devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.device.memory_bars.iter().flatten().map(allocated).sum(),
                )
            })
            .collect()
    }

    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for d in &mut self.devices {
            d.device.stop.store(true, Ordering::Relaxed);
            d.device.kick.kick();
            d.server.shutdown();
            if let Some(w) = d.worker.take() {
                let _ = w.join();
            }
            let _ = std::fs::remove_file(&d.socket);
            log::debug!("{} ({}) stopped", d.name, d.kind.as_str());
        }
        let _ = std::fs::remove_file(self.dir.join("control.sock"));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_all();
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

fn start_device(fabric: &Fabric, dc: &DeviceConfig, run_dir: &Path) -> anyhow::Result<Running> {
    let id = fabric.add_device(&dc.name, dc.kind.as_str());
    let port = fabric.port(id);
    let irqs = Arc::new(ClientIrqs::default());
    let mut memory_bars: [Option<MemoryBar>; 6] = Default::default();
    let (model, cfg, msix_vectors): (Arc<dyn Model>, ConfigSpace, u32) = match dc.kind {
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
                p2plab_nvme::NvmeController::new(cfg, port, irqs.clone())
                    .with_context(|| format!("{}: NVMe controller", dc.name))?,
            );
            let f = fabric.clone();
            ctrl.set_vendor_log_source(Box::new(move || {
                serde_json::to_vec(&f.snapshot()).unwrap_or_default()
            }));
            if cmb > 0 {
                let (file, region) = memory_bar(&format!("{}-cmb", dc.name), cmb)?;
                let bar = p2plab_nvme::NvmeController::CMB_BAR;
                fabric.set_bar_memory(id, bar, region.clone());
                memory_bars[bar] = Some(MemoryBar { file });
            }
            let cfg = ctrl
                .config_space()
                .with_context(|| format!("{}: config space", dc.name))?;
            let vectors = u32::from(ctrl.msix_vectors());
            (ctrl, cfg, vectors)
        }
        DeviceKind::Gpu => {
            let size = dc.vram_size();
            let (file, region) = memory_bar(&format!("{}-vram", dc.name), size)?;
            let bar = p2plab_gpu::GpuDevice::VRAM_BAR;
            fabric.set_bar_memory(id, bar, region.clone());
            memory_bars[bar] = Some(MemoryBar { file });
            let cfg = p2plab_gpu::GpuConfig {
                vram_size: size,
                serial: p2plab_pci::dsn_from_str(&dc.name),
            };
            let gpu = Arc::new(
                p2plab_gpu::GpuDevice::new(cfg, port, irqs.clone(), region)
                    .with_context(|| format!("{}: GPU device", dc.name))?,
            );
            let cfg = gpu.config_space();
            let vectors = u32::from(cfg.msix().map_or(0, |m| m.vectors));
            (gpu, cfg, vectors)
        }
        DeviceKind::QemuNvme => anyhow::bail!("{} is QEMU's own device, not p2plab's", dc.name),
    };
    let device = Arc::new(LabDevice {
        name: dc.name.clone(),
        fabric: fabric.clone(),
        id,
        power_on_cfg: cfg.clone(),
        cfg: Mutex::new(cfg),
        model,
        memory_bars,
        msix_vectors,
        irqs,
        kick: Arc::new(Kick::default()),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let worker = Some(device.spawn_worker()?);
    let socket = run_dir.join(format!("{}.sock", dc.name));
    let server = vfu::Server::bind(&socket, device.clone())
        .with_context(|| format!("{}: binding {}", dc.name, socket.display()))?;
    server
        .spawn()
        .with_context(|| format!("{}: starting its server", dc.name))?;
    Ok(Running {
        name: dc.name.clone(),
        kind: dc.kind,
        socket,
        server,
        device,
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

/// Block SIGINT/SIGTERM in this thread (inherited by threads spawned later) and return
/// a waiter that sleeps until one arrives.
pub fn block_termination_signals() -> impl FnOnce() -> i32 {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask only
    // changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid initialised sigset; `sig` is a valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        sig
    }
}

/// `p2plab serve --config FILE [--dir DIR]`.
pub fn serve_main(config: &Path, dir: Option<PathBuf>) -> anyhow::Result<i32> {
    let wait = block_termination_signals();
    let topo = Topology::load(config)?;
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("p2plab-serve-{}", std::process::id())),
    };
    let lab = Lab::start(&topo, &dir)?;
    println!(
        "p2plab: serving topology '{}' in {}",
        topo.name,
        dir.display()
    );
    for d in &lab.devices {
        println!(
            "  {:<8} {:<4} {}",
            d.name,
            d.kind.as_str(),
            d.socket.display()
        );
    }
    println!(
        "  control  {}  (p2plab stats {})",
        dir.join("control.sock").display(),
        dir.display()
    );
    let skipped: Vec<_> = topo
        .devices
        .iter()
        .filter(|d| !d.kind.is_p2plab())
        .map(|d| d.name.as_str())
        .collect();
    if !skipped.is_empty() {
        println!(
            "  (QEMU's own devices, not served here: {})",
            skipped.join(", ")
        );
    }
    let sig = wait();
    log::info!("signal {sig}: shutting down");
    let counters = serde_json::to_string_pretty(&lab.snapshot())?;
    std::fs::write(dir.join("counters.json"), counters + "\n")?;
    lab.shutdown();
    println!(
        "p2plab: stopped; counters in {}",
        dir.join("counters.json").display()
    );
    Ok(0)
}
