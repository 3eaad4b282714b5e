//! Drives the GPU model through BAR0 writes with an in-memory bus (guest RAM window plus
//! the device's own VRAM window), a Vec-backed VRAM handle and a recording interrupt sink.

use p2plab_gpu::copy::{self, CopyDescriptor};
use p2plab_gpu::{
    checksum, pci, regs, GpuConfig, GpuDevice, GpuError, VramAccess, REG_BAR, VRAM_BAR,
};
use p2plab_memory::{BusAddr, DmaError, DmaSpace, RecordingInterrupts, TestDmaSpace};
use p2plab_pci::{PciFunction, UNCLAIMED_READ};
use std::sync::{Arc, Mutex};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

const RAM_BASE: u64 = 0x1_0000_0000;
const RAM_SIZE: usize = 8 << 20;
const VRAM_BASE: u64 = 0x80_0000_0000;
const VRAM_SIZE: u64 = 4 << 20;
const RING: u64 = RAM_BASE;
const RING_ENTRIES: u32 = 8;

/// VRAM as a plain vector (what the host implements over the BAR memfd mapping).
struct VecVram(Mutex<Vec<u8>>);

impl VecVram {
    fn new(size: u64) -> Self {
        Self(Mutex::new(vec![0; size as usize]))
    }
    fn range(&self, off: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let bad = DmaError::Unmapped {
            addr: off,
            len: len as u64,
        };
        let start = usize::try_from(off).map_err(|_| bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if end > self.0.lock().unwrap().len() {
            return Err(bad);
        }
        Ok(start..end)
    }
}

impl VramAccess for VecVram {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(off, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap()[r]);
        Ok(())
    }
    fn write(&self, off: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(off, data.len())?;
        self.0.lock().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
}

/// A claimed-huge VRAM that reads zeros (for size checks without allocating).
struct SparseVram(u64);

impl VramAccess for SparseVram {
    fn read(&self, _off: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        buf.fill(0);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0
    }
}

/// The bus: guest RAM at RAM_BASE, the device's VRAM BAR at VRAM_BASE (the fabric's
/// self route), everything else unmapped.
struct Bus {
    ram: TestDmaSpace,
    vram: Arc<VecVram>,
}

impl Bus {
    fn vram_off(addr: BusAddr, len: usize) -> Option<u64> {
        let off = addr.0.checked_sub(VRAM_BASE)?;
        (off.checked_add(len as u64)? <= VRAM_SIZE).then_some(off)
    }
}

impl DmaSpace for Bus {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        match Self::vram_off(addr, buf.len()) {
            Some(off) => self.vram.read(off, buf),
            None => self.ram.read(addr, buf),
        }
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        match Self::vram_off(addr, data.len()) {
            Some(off) => self.vram.write(off, data),
            None => self.ram.write(addr, data),
        }
    }
}

struct Lab {
    dev: GpuDevice,
    bus: Arc<Bus>,
    vram: Arc<VecVram>,
    irq: Arc<RecordingInterrupts>,
}

fn lab() -> Lab {
    let vram = Arc::new(VecVram::new(VRAM_SIZE));
    let bus = Arc::new(Bus {
        ram: TestDmaSpace::new(RAM_BASE, RAM_SIZE),
        vram: vram.clone(),
    });
    let irq = Arc::new(RecordingInterrupts::default());
    let cfg = GpuConfig {
        vram_size: VRAM_SIZE,
        serial: 7,
    };
    let dev = GpuDevice::new(cfg, bus.clone(), irq.clone(), vram.clone()).expect("valid config");
    dev.bar_moved(VRAM_BAR, Some(VRAM_BASE));
    dev.set_bus_master(true);
    Lab {
        dev,
        bus,
        vram,
        irq,
    }
}

impl Lab {
    #[track_caller]
    fn rd(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }
    #[track_caller]
    fn rd64(&self, lo: u64) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(REG_BAR, lo, &mut b);
        u64::from_le_bytes(b)
    }
    fn wr(&self, off: u64, val: u32) {
        self.dev.bar_write(REG_BAR, off, &val.to_le_bytes());
    }
    fn wr64(&self, lo: u64, val: u64) {
        self.dev.bar_write(REG_BAR, lo, &val.to_le_bytes());
    }
    /// Run the engines as the host's worker does, until `process` is idle and nothing
    /// asks for more; panics if they never go idle.
    #[track_caller]
    fn run(&self) -> usize {
        for steps in 0..10_000 {
            if !self.dev.process() && !self.dev.needs_processing() {
                return steps;
            }
        }
        panic!("device never went idle");
    }
    fn enable_ring(&self) {
        self.wr64(regs::CE_RING_BASE_LO, RING);
        self.wr(regs::CE_RING_SIZE, RING_ENTRIES);
        self.wr(regs::CE_CTRL, regs::CE_CTRL_ENABLE);
    }
    /// Write descriptor `index` with a zeroed status word.
    fn post(&self, index: u32, src: u64, dst: u64, len: u64, flags: u32) {
        let d = CopyDescriptor {
            src: U64::new(src),
            dst: U64::new(dst),
            len: U64::new(len),
            flags: U32::new(flags),
            status: U32::new(0),
        };
        self.bus
            .ram
            .poke(RING + u64::from(index) * copy::DESC_SIZE, d.as_bytes());
    }
    fn desc_status(&self, index: u32) -> u32 {
        let at = RING + u64::from(index) * copy::DESC_SIZE + copy::DESC_STATUS_OFFSET;
        u32::from_le_bytes(self.bus.ram.peek(at, 4).try_into().unwrap())
    }
    fn digest(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        self.dev.bar_read(REG_BAR, regs::CK_DIGEST, &mut d);
        d
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn err_status(code: u8) -> u32 {
    copy::DESC_STATUS_DONE
        | copy::DESC_STATUS_ERROR
        | (u32::from(code) << copy::DESC_STATUS_CODE_SHIFT)
}

#[test]
fn identity_registers() {
    let l = lab();
    assert_eq!(l.rd(regs::ID), regs::ID_VALUE);
    assert_eq!(&l.rd(regs::ID).to_le_bytes(), b"P2PG");
    assert_eq!(l.rd(regs::VERSION), regs::VERSION_VALUE);
    assert_eq!(l.rd64(regs::VRAM_SIZE_LO), VRAM_SIZE);
    assert_eq!(l.rd(regs::STATUS), regs::STATUS_READY);
    assert_eq!(
        l.rd(regs::CAPS),
        regs::CAPS_COPY_ENGINE | regs::CAPS_CHECKSUM_SHA256
    );
    assert_eq!(l.rd(regs::CK_ALGO), regs::CK_ALGO_SHA256);
    assert_eq!(l.rd(regs::MAX_CHUNK), copy::CHUNK as u32);
}

#[test]
fn byte_reads_see_register_bytes() {
    let l = lab();
    let mut b = [0u8; 1];
    for (i, want) in b"P2PG".iter().enumerate() {
        l.dev.bar_read(REG_BAR, regs::ID + i as u64, &mut b);
        assert_eq!(b[0], *want);
    }
}

#[test]
fn vram_of_128_gib_is_described() {
    let size = 128u64 << 30;
    let dev = GpuDevice::new(
        GpuConfig {
            vram_size: size,
            serial: 1,
        },
        Arc::new(TestDmaSpace::new(0, 0)),
        Arc::new(RecordingInterrupts::default()),
        Arc::new(SparseVram(size)),
    )
    .expect("128 GiB is supported");
    let mut b = [0u8; 8];
    dev.bar_read(REG_BAR, regs::VRAM_SIZE_LO, &mut b);
    assert_eq!(u64::from_le_bytes(b), size);
    assert_eq!(dev.bar_size(VRAM_BAR), size);
    let layout = dev.pci_layout();
    assert_eq!(
        (layout.vendor, layout.device, layout.class),
        (pci::VENDOR_ID, pci::DEVICE_ID, 0x030200)
    );
    let vram_bar = layout.bars.iter().find(|b| b.index == VRAM_BAR).unwrap();
    assert!(vram_bar.is_64bit && vram_bar.prefetchable && vram_bar.mmappable);
    assert_eq!(vram_bar.size, size);
    // 1 MiB (bit 0) .. 128 GiB (bit 17).
    assert_eq!(
        layout.rebar.map(|r| (r.bar, r.sizes)),
        Some((VRAM_BAR, (1 << 18) - 1))
    );
}

#[test]
fn bad_configs_are_refused() {
    let mk = |vram_size: u64, have: u64| {
        GpuDevice::new(
            GpuConfig {
                vram_size,
                serial: 0,
            },
            Arc::new(TestDmaSpace::new(0, 0)),
            Arc::new(RecordingInterrupts::default()),
            Arc::new(SparseVram(have)),
        )
        .err()
    };
    assert_eq!(mk(3 << 20, 3 << 20), Some(GpuError::BadVramSize(3 << 20)));
    assert_eq!(mk(4096, 4096), Some(GpuError::BadVramSize(4096)));
    assert_eq!(mk(1 << 48, 1 << 48), Some(GpuError::BadVramSize(1 << 48)));
    assert_eq!(
        mk(1 << 30, 1 << 20),
        Some(GpuError::VramTooSmall {
            have: 1 << 20,
            want: 1 << 30
        })
    );
}

#[test]
fn copy_round_trip_ram_vram_ram() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.enable_ring();
    // 2.5 MiB: three chunks, crossing the chunk size with a partial tail.
    let len = (5 << 20) / 2;
    let data = pattern(len, 3);
    let src = RAM_BASE + (1 << 20);
    let back = RAM_BASE + (4 << 20);
    let vram_off = 0x1000;
    l.bus.ram.poke(src, &data);
    l.post(
        0,
        src,
        VRAM_BASE + vram_off,
        len as u64,
        copy::DESC_FLAG_INTERRUPT,
    );
    l.post(
        1,
        VRAM_BASE + vram_off,
        back,
        len as u64,
        copy::DESC_FLAG_INTERRUPT,
    );
    l.wr(regs::CE_TAIL, 2);
    assert_ne!(l.rd(regs::STATUS) & regs::STATUS_CE_BUSY, 0);

    let steps = l.run();
    assert!(steps >= 6, "copies must be chunked, took {steps} steps");
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
    assert_eq!(l.desc_status(1), copy::DESC_STATUS_DONE);
    let mut in_vram = vec![0; len];
    l.vram.read(vram_off, &mut in_vram).unwrap();
    assert!(in_vram == data, "VRAM differs from the source");
    assert!(
        l.bus.ram.peek(back, len) == data,
        "copied back data differs"
    );
    assert_eq!(l.rd(regs::CE_HEAD), 2);
    assert_eq!(l.rd(regs::CE_COMPLETED), 2);
    assert_eq!(l.rd(regs::CE_ERRORS), 0);
    assert_eq!(l.rd64(regs::CE_BYTES_LO), 2 * len as u64);
    assert_eq!(l.rd(regs::INTR_STATUS), regs::INTR_CE_DONE);
    assert_eq!(l.irq.take(), vec![regs::VECTOR_CE, regs::VECTOR_CE]);
    assert_eq!(l.rd(regs::STATUS) & regs::STATUS_CE_BUSY, 0);
}

#[test]
fn ring_wraps_around() {
    let l = lab();
    l.enable_ring();
    let src = RAM_BASE + (1 << 20);
    l.bus.ram.poke(src, &pattern(4096, 9));
    for round in 0..3u32 {
        for i in 0..RING_ENTRIES - 1 {
            let idx = (round * (RING_ENTRIES - 1) + i) % RING_ENTRIES;
            l.post(idx, src, VRAM_BASE + u64::from(i) * 4096, 4096, 0);
        }
        let tail = ((round + 1) * (RING_ENTRIES - 1)) % RING_ENTRIES;
        l.wr(regs::CE_TAIL, tail);
        l.run();
        assert_eq!(l.rd(regs::CE_HEAD), tail);
    }
    assert_eq!(l.rd(regs::CE_COMPLETED), 3 * (RING_ENTRIES - 1));
    assert_eq!(l.rd(regs::CE_ERRORS), 0);
}

#[test]
fn unmapped_source_reports_error_and_engine_continues() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.enable_ring();
    let unmapped = 0x10_0000_0000;
    l.post(0, unmapped, VRAM_BASE, 4096, 0);
    l.post(
        1,
        RAM_BASE + (1 << 20),
        VRAM_BASE,
        4096,
        copy::DESC_FLAG_INTERRUPT,
    );
    l.wr(regs::CE_TAIL, 2);
    l.run();
    assert_eq!(l.desc_status(0), err_status(copy::DESC_ERR_SRC_FAULT));
    assert_eq!(l.desc_status(1), copy::DESC_STATUS_DONE);
    assert_eq!(l.rd(regs::CE_ERRORS), 1);
    assert_eq!(l.rd(regs::CE_COMPLETED), 2);
    assert_eq!(
        l.rd(regs::INTR_STATUS),
        regs::INTR_CE_ERROR | regs::INTR_CE_DONE
    );
    assert_eq!(l.irq.take(), vec![regs::VECTOR_CE, regs::VECTOR_CE]);
}

#[test]
fn destination_past_vram_end_is_a_vram_range_error() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.enable_ring();
    // Straddles the end of VRAM: not a valid bus range.
    l.post(
        0,
        RAM_BASE + (1 << 20),
        VRAM_BASE + VRAM_SIZE - 2048,
        4096,
        0,
    );
    l.wr(regs::CE_TAIL, 1);
    l.run();
    assert_eq!(l.desc_status(0), err_status(copy::DESC_ERR_VRAM_RANGE));
    assert_eq!(l.irq.take(), vec![regs::VECTOR_CE]);
    let mut tail = vec![0xff; 2048];
    l.vram.read(VRAM_SIZE - 2048, &mut tail).unwrap();
    assert_eq!(tail, vec![0; 2048], "refused before any byte moved");
}

#[test]
fn malformed_descriptors_are_rejected() {
    let l = lab();
    l.enable_ring();
    l.post(0, RAM_BASE, VRAM_BASE, 0, 0);
    l.post(1, u64::MAX - 10, VRAM_BASE, 4096, 0);
    l.post(2, RAM_BASE, VRAM_BASE, 4096, 0x8000_0000);
    l.wr(regs::CE_TAIL, 3);
    l.run();
    assert_eq!(l.desc_status(0), err_status(copy::DESC_ERR_LENGTH));
    assert_eq!(l.desc_status(1), err_status(copy::DESC_ERR_OVERFLOW));
    assert_eq!(l.desc_status(2), err_status(copy::DESC_ERR_FLAGS));
    assert_eq!(l.rd(regs::CE_ERRORS), 3);
    // Interrupts were not enabled: causes are latched, nothing signalled.
    assert_eq!(l.rd(regs::INTR_STATUS), regs::INTR_CE_ERROR);
    assert!(l.irq.take().is_empty());
    l.wr(regs::INTR_STATUS, regs::INTR_CE_ERROR);
    assert_eq!(l.rd(regs::INTR_STATUS), 0);
}

#[test]
fn unreadable_ring_halts_the_engine() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.wr64(regs::CE_RING_BASE_LO, 0x20_0000_0000);
    l.wr(regs::CE_RING_SIZE, 4);
    l.wr(regs::CE_CTRL, regs::CE_CTRL_ENABLE);
    l.wr(regs::CE_TAIL, 1);
    l.run();
    let st = l.rd(regs::CE_STATUS);
    assert_eq!(
        st,
        regs::CE_STATUS_ENABLED
            | regs::CE_STATUS_HALTED
            | (u32::from(regs::CE_HALT_FETCH_FAULT) << regs::CE_STATUS_HALT_SHIFT)
    );
    assert_eq!(l.rd(regs::CE_HEAD), 0);
    assert_eq!(l.irq.take(), vec![regs::VECTOR_CE]);
    // Disable + enable with a good ring recovers.
    l.wr(regs::CE_CTRL, 0);
    l.enable_ring();
    assert_eq!(l.rd(regs::CE_STATUS), regs::CE_STATUS_ENABLED);
}

#[test]
fn bad_ring_and_bad_tail_halt() {
    let l = lab();
    l.wr64(regs::CE_RING_BASE_LO, RING + 8);
    l.wr(regs::CE_RING_SIZE, 4);
    l.wr(regs::CE_CTRL, regs::CE_CTRL_ENABLE);
    assert_eq!(
        l.rd(regs::CE_STATUS) >> regs::CE_STATUS_HALT_SHIFT,
        u32::from(regs::CE_HALT_BAD_RING)
    );
    l.wr(regs::CE_CTRL, 0);
    l.wr(regs::CE_RING_SIZE, 0);
    l.wr64(regs::CE_RING_BASE_LO, RING);
    l.wr(regs::CE_CTRL, regs::CE_CTRL_ENABLE);
    assert_eq!(
        l.rd(regs::CE_STATUS) >> regs::CE_STATUS_HALT_SHIFT,
        u32::from(regs::CE_HALT_BAD_RING)
    );
    l.wr(regs::CE_CTRL, 0);
    l.enable_ring();
    l.wr(regs::CE_TAIL, RING_ENTRIES);
    assert_eq!(
        l.rd(regs::CE_STATUS) >> regs::CE_STATUS_HALT_SHIFT,
        u32::from(regs::CE_HALT_BAD_TAIL)
    );
    assert_eq!(l.run(), 0);
}

#[test]
fn no_bus_master_no_copy() {
    let l = lab();
    l.dev.set_bus_master(false);
    l.enable_ring();
    l.bus.ram.poke(RAM_BASE + (1 << 20), &[0xab; 64]);
    l.post(0, RAM_BASE + (1 << 20), VRAM_BASE, 64, 0);
    l.wr(regs::CE_TAIL, 1);
    assert_eq!(l.run(), 0);
    assert_eq!(l.desc_status(0), 0);
    l.dev.set_bus_master(true);
    l.run();
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
    let mut b = [0u8; 64];
    l.vram.read(0, &mut b).unwrap();
    assert_eq!(b, [0xab; 64]);
}

#[test]
fn checksum_matches_reference() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    let data = pattern(3 << 20, 77);
    let off = 0x3000;
    l.vram.write(off, &data).unwrap();
    l.wr64(regs::CK_OFFSET_LO, off);
    l.wr64(regs::CK_LEN_LO, data.len() as u64);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    assert_eq!(l.rd(regs::CK_STATUS), regs::CK_STATUS_BUSY);
    assert_ne!(l.rd(regs::STATUS) & regs::STATUS_CK_BUSY, 0);
    assert!(l.run() >= 3, "hashing must be chunked");
    assert_eq!(l.rd(regs::CK_STATUS), regs::CK_STATUS_DONE);
    assert_eq!(l.digest(), checksum::sha256(&data));
    assert_eq!(l.rd64(regs::CK_BYTES_LO), data.len() as u64);
    assert_eq!(l.rd(regs::INTR_STATUS), regs::INTR_CK_DONE);
    assert_eq!(l.irq.take(), vec![regs::VECTOR_CK]);
}

#[test]
fn checksum_reference_vector() {
    // FIPS 180-2 example "abc".
    let l = lab();
    l.vram.write(0, b"abc").unwrap();
    l.wr64(regs::CK_LEN_LO, 3);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.run();
    let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let got: String = l.digest().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, want);
}

#[test]
fn checksum_of_empty_range_and_out_of_range() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.wr64(regs::CK_OFFSET_LO, VRAM_SIZE);
    l.wr64(regs::CK_LEN_LO, 0);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.run();
    assert_eq!(l.rd(regs::CK_STATUS), regs::CK_STATUS_DONE);
    assert_eq!(l.digest(), checksum::sha256(&[]));

    l.wr64(regs::CK_OFFSET_LO, VRAM_SIZE - 1);
    l.wr64(regs::CK_LEN_LO, 2);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.run();
    assert_eq!(
        l.rd(regs::CK_STATUS),
        regs::CK_STATUS_ERROR | (u32::from(regs::CK_ERR_RANGE) << regs::CK_STATUS_CODE_SHIFT)
    );
    l.wr64(regs::CK_OFFSET_LO, u64::MAX);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.run();
    assert_ne!(l.rd(regs::CK_STATUS) & regs::CK_STATUS_ERROR, 0);
    assert_eq!(
        l.irq.take(),
        vec![regs::VECTOR_CK, regs::VECTOR_CK, regs::VECTOR_CK]
    );
    assert_eq!(
        l.rd(regs::INTR_STATUS),
        regs::INTR_CK_DONE | regs::INTR_CK_ERROR
    );
}

#[test]
fn reset_abandons_work_and_restores_power_on_state() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.enable_ring();
    let len = 3 << 20;
    l.post(0, RAM_BASE, VRAM_BASE, len, copy::DESC_FLAG_INTERRUPT);
    l.wr(regs::CE_TAIL, 1);
    assert!(l.dev.process());
    l.wr64(regs::CK_LEN_LO, 2 << 20);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.dev.reset();
    l.dev.set_bus_master(true);
    l.run();
    assert_eq!(
        l.desc_status(0),
        0,
        "abandoned descriptor must not be completed"
    );
    assert!(l.irq.take().is_empty());
    for off in [
        regs::INTR_STATUS,
        regs::INTR_ENABLE,
        regs::CE_CTRL,
        regs::CE_STATUS,
        regs::CE_HEAD,
        regs::CK_STATUS,
    ] {
        assert_eq!(l.rd(off), 0, "register {off:#x} after reset");
    }
    assert_eq!(l.rd(regs::ID), regs::ID_VALUE);
}

#[test]
fn function_level_reset_stops_both_engines_until_bus_master_returns() {
    let l = lab();
    l.wr(regs::INTR_ENABLE, regs::INTR_ALL);
    l.enable_ring();
    l.post(0, RAM_BASE, VRAM_BASE, 3 << 20, copy::DESC_FLAG_INTERRUPT);
    l.wr(regs::CE_TAIL, 1);
    l.wr64(regs::CK_LEN_LO, 2 << 20);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    assert!(l.dev.process(), "first chunk of each engine");
    assert_ne!(l.rd(regs::CE_STATUS) & regs::CE_STATUS_ACTIVE, 0);
    l.dev.reset();
    assert!(
        l.dev.needs_processing(),
        "the worker must drop what it holds: the host wakes it"
    );
    l.run();
    assert_eq!(
        l.rd(regs::CE_STATUS),
        0,
        "no descriptor held after the reset"
    );
    assert_eq!(l.rd(regs::CK_STATUS), 0, "the checksum run was abandoned");
    assert_eq!(
        l.desc_status(0),
        0,
        "an abandoned descriptor is never completed"
    );
    assert!(l.irq.take().is_empty());
    // Bus mastering stays off after the reset until the host enables it again.
    l.bus.ram.poke(RAM_BASE + (1 << 20), &[0x5c; 64]);
    l.enable_ring();
    l.post(0, RAM_BASE + (1 << 20), VRAM_BASE, 64, 0);
    l.wr(regs::CE_TAIL, 1);
    assert_eq!(l.run(), 0);
    assert_eq!(l.desc_status(0), 0);
    l.dev.set_bus_master(true);
    assert!(l.dev.needs_processing());
    l.run();
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
}

#[test]
fn only_writes_that_start_or_stop_work_ask_for_processing() {
    let l = lab();
    l.run(); // the Bus Master Enable of lab() asked for a pass
    let write = |off: u64, val: u32| l.dev.bar_write(REG_BAR, off, &val.to_le_bytes());
    assert!(!write(regs::INTR_ENABLE, regs::INTR_ALL));
    assert!(!write(regs::CE_RING_BASE_LO, RING as u32));
    assert!(!write(regs::CE_RING_BASE_HI, (RING >> 32) as u32));
    assert!(!write(regs::CE_RING_SIZE, RING_ENTRIES));
    assert!(!l.dev.needs_processing());
    assert!(
        write(regs::CE_CTRL, regs::CE_CTRL_ENABLE),
        "enabling the ring"
    );
    assert!(l.dev.needs_processing());
    l.run();
    assert!(write(regs::CE_TAIL, 0), "a tail");
    assert!(
        write(regs::CK_CTRL, regs::CK_CTRL_START),
        "a checksum start"
    );
    l.run();
    assert!(write(regs::CE_CTRL, 0), "a disable the worker acknowledges");
    assert!(
        !l.dev.bar_write(VRAM_BAR, 0, &[1; 8]),
        "trapped VRAM is no work"
    );
}

#[test]
fn unclaimed_bar_reads_are_all_ones() {
    let l = lab();
    let read = |bar: usize, off: u64, len: usize| {
        let mut b = vec![0x5a; len];
        l.dev.bar_read(bar, off, &mut b);
        b
    };
    for bar in [1, 3, 5, 6] {
        assert_eq!(read(bar, 0, 4), vec![UNCLAIMED_READ; 4], "BAR{bar}");
    }
    assert_eq!(
        read(REG_BAR, regs::BAR0_SIZE - 2, 4),
        vec![UNCLAIMED_READ; 4],
        "an access past BAR0's end"
    );
    assert_eq!(read(REG_BAR, u64::MAX - 1, 4), vec![UNCLAIMED_READ; 4]);
}

#[test]
fn trapped_vram_and_msix_accesses() {
    let l = lab();
    l.dev.bar_write(VRAM_BAR, 0x10, b"hello");
    let mut b = [0u8; 5];
    l.dev.bar_read(VRAM_BAR, 0x10, &mut b);
    assert_eq!(&b, b"hello");
    let mut b = [0u8; 4];
    l.dev.bar_read(VRAM_BAR, VRAM_SIZE - 2, &mut b);
    assert_eq!(b, [0xff; 4]);
    l.dev.bar_read(p2plab_gpu::MSIX_BAR, 0, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn garbage_register_traffic_never_panics() {
    let l = lab();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let r = next();
        let bar = (r % 7) as usize;
        let off = match (r >> 8) % 4 {
            0 => (r >> 16) % 0x400,
            1 => (r >> 16) % (regs::BAR0_SIZE + 64),
            2 => u64::MAX - (r >> 60),
            _ => r >> 20,
        };
        let len = [0usize, 1, 2, 3, 4, 8, 16][((r >> 40) % 7) as usize];
        let val = next().to_le_bytes().repeat(2);
        l.dev.bar_write(bar, off, &val[..len]);
        // Aim some writes at real registers with random values.
        l.dev
            .bar_write(REG_BAR, ((r >> 24) % 0x300) & !3, &val[..4]);
        let mut buf = vec![0u8; len];
        l.dev.bar_read(bar, off, &mut buf);
        if r % 64 == 0 {
            l.run();
        }
        if r % 1024 == 0 {
            l.dev.set_bus_master(r & 1 == 0);
        }
    }
    l.dev.set_bus_master(true);
    l.run();
    assert_eq!(l.rd(regs::ID), regs::ID_VALUE);
}

#[test]
fn config_space_as_the_guest_sees_it() {
    let l = lab();
    let cs = l.dev.config_space();
    let rd = |off: u64, len: usize| {
        let mut b = [0u8; 4];
        cs.read(off, &mut b[..len]);
        u32::from_le_bytes(b)
    };
    assert_eq!(rd(0x00, 2), u32::from(pci::VENDOR_ID));
    assert_eq!(rd(0x02, 2), u32::from(pci::DEVICE_ID));
    assert_eq!(rd(0x08, 4) >> 8, pci::CLASS_CODE);
    // BAR0: 64-bit memory (type 10b), BAR2: 64-bit prefetchable, BAR4: 32-bit.
    assert_eq!(rd(0x10, 4) & 0xf, 0x4);
    assert_eq!(rd(0x18, 4) & 0xf, 0xc);
    assert_eq!(rd(0x20, 4) & 0xf, 0x0);
    assert_eq!(cs.bar_size(REG_BAR), regs::BAR0_SIZE);
    assert_eq!(cs.bar_size(VRAM_BAR), VRAM_SIZE);
    assert_eq!(cs.bar_size(p2plab_gpu::MSIX_BAR), pci::MSIX_BAR_SIZE);
    let msix = cs.capability_offset(0x11).expect("MSI-X capability") as u64;
    // Table Size is N-1; table in BAR4 at 0, PBA in BAR4 at 0x800.
    assert_eq!(rd(msix + 2, 2) & 0x7ff, u32::from(regs::MSIX_VECTORS) - 1);
    assert_eq!(rd(msix + 4, 4), p2plab_gpu::MSIX_BAR as u32);
    assert_eq!(
        rd(msix + 8, 4),
        pci::MSIX_PBA_OFFSET | p2plab_gpu::MSIX_BAR as u32
    );
    assert!(cs.capability_offset(0x01).is_some(), "PM capability");
    assert!(
        cs.capability_offset(0x10).is_some(),
        "PCI Express capability"
    );
    assert!(cs.ext_capability_offset(0x15).is_some(), "Resizable BAR");
    assert!(
        cs.ext_capability_offset(0x03).is_some(),
        "Device Serial Number"
    );
}

#[test]
fn disable_mid_copy_is_acknowledged_through_active() {
    let l = lab();
    l.enable_ring();
    l.post(0, RAM_BASE, VRAM_BASE, 3 << 20, copy::DESC_FLAG_INTERRUPT);
    l.wr(regs::CE_TAIL, 1);
    assert!(l.dev.process(), "first chunk");
    assert_ne!(l.rd(regs::CE_STATUS) & regs::CE_STATUS_ACTIVE, 0);
    l.wr(regs::CE_CTRL, 0);
    // The worker still holds the descriptor until it runs again.
    assert_ne!(l.rd(regs::CE_STATUS) & regs::CE_STATUS_ACTIVE, 0);
    l.run();
    assert_eq!(l.rd(regs::CE_STATUS), 0);
    assert_eq!(
        l.desc_status(0),
        0,
        "an abandoned descriptor is never completed"
    );
    // The driver may now restart the ring and reuse slot 0.
    l.bus.ram.poke(RAM_BASE + (1 << 20), &[5; 16]);
    l.enable_ring();
    l.post(0, RAM_BASE + (1 << 20), VRAM_BASE + 64, 16, 0);
    l.wr(regs::CE_TAIL, 1);
    l.run();
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
    let mut b = [0u8; 16];
    l.vram.read(64, &mut b).unwrap();
    assert_eq!(b, [5; 16]);
}

#[test]
fn a_descriptor_that_rewrites_its_own_ring_runs_what_it_wrote() {
    let l = lab();
    l.enable_ring();
    // Slots 1..=3 are posted as good copies into VRAM; slot 0 copies replacements with
    // a wild source over them before the engine fetches them.
    let wild = 0x10_0000_0000;
    let repl: Vec<u8> = (0..3)
        .flat_map(|_| {
            CopyDescriptor {
                src: U64::new(wild),
                dst: U64::new(VRAM_BASE),
                len: U64::new(4096),
                flags: U32::new(0),
                status: U32::new(0),
            }
            .as_bytes()
            .to_vec()
        })
        .collect();
    let repl_at = RAM_BASE + (2 << 20);
    l.bus.ram.poke(repl_at, &repl);
    l.bus.ram.poke(RAM_BASE + (1 << 20), &pattern(4096, 3));
    l.post(0, repl_at, RING + copy::DESC_SIZE, 3 * copy::DESC_SIZE, 0);
    for i in 1..=3 {
        l.post(i, RAM_BASE + (1 << 20), VRAM_BASE, 4096, 0);
    }
    l.wr(regs::CE_TAIL, 4);
    l.run();
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
    for i in 1..=3 {
        assert_eq!(l.desc_status(i), err_status(copy::DESC_ERR_SRC_FAULT));
    }
    assert_eq!(l.rd(regs::CE_HEAD), 4);
    let mut v = vec![0xff; 4096];
    l.vram.read(0, &mut v).unwrap();
    assert_eq!(v, vec![0; 4096], "the replaced copies never ran");
}

#[test]
fn a_descriptor_copying_the_whole_ring_onto_itself_completes() {
    let l = lab();
    l.enable_ring();
    let ring_bytes = u64::from(RING_ENTRIES) * copy::DESC_SIZE;
    l.post(0, RING, RING, ring_bytes, 0);
    l.wr(regs::CE_TAIL, 1);
    l.run();
    assert_eq!(l.desc_status(0), copy::DESC_STATUS_DONE);
    assert_eq!(l.rd(regs::CE_HEAD), 1);
    assert_eq!(l.rd(regs::CE_STATUS), regs::CE_STATUS_ENABLED);
}

#[test]
fn a_source_running_past_the_vram_end_writes_nothing() {
    let l = lab();
    l.enable_ring();
    let dst = RAM_BASE + (4 << 20);
    l.bus.ram.poke(dst, &[0xc5; 1 << 20]);
    l.post(0, VRAM_BASE + VRAM_SIZE - 65536, dst, 1 << 20, 0);
    l.wr(regs::CE_TAIL, 1);
    l.run();
    assert_eq!(l.desc_status(0), err_status(copy::DESC_ERR_VRAM_RANGE));
    assert_eq!(l.bus.ram.peek(dst, 1 << 20), vec![0xc5; 1 << 20]);
}

/// A bus where a peer's BAR follows the VRAM window directly, as the guest's BIOS lays
/// out two prefetchable BARs below one switch (gpu0 VRAM, then nvme0's CMB).
struct AdjacentBus {
    vram: Arc<VecVram>,
    peer: TestDmaSpace,
}

/// A piece of an access: bus address and length.
type Piece = Option<(u64, usize)>;

impl AdjacentBus {
    /// The VRAM part and the peer part of an access.
    fn split(addr: u64, len: usize) -> (Piece, Piece) {
        let end = addr + len as u64;
        let vend = VRAM_BASE + VRAM_SIZE;
        let v = (addr < vend && end > VRAM_BASE).then(|| {
            (
                addr.max(VRAM_BASE),
                (end.min(vend) - addr.max(VRAM_BASE)) as usize,
            )
        });
        let p = (end > vend).then(|| (addr.max(vend), (end - addr.max(vend)) as usize));
        (v, p)
    }
}

impl DmaSpace for AdjacentBus {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        let (v, p) = Self::split(addr.0, buf.len());
        let mut at = 0;
        if let Some((a, n)) = v {
            self.vram.read(a - VRAM_BASE, &mut buf[..n])?;
            at = n;
        }
        if let Some((a, _)) = p {
            self.peer.read(BusAddr(a), &mut buf[at..])?;
        }
        Ok(())
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        let (v, p) = Self::split(addr.0, data.len());
        let mut at = 0;
        if let Some((a, n)) = v {
            self.vram.write(a - VRAM_BASE, &data[..n])?;
            at = n;
        }
        if let Some((a, _)) = p {
            self.peer.write(BusAddr(a), &data[at..])?;
        }
        Ok(())
    }
}

#[test]
fn a_copy_running_past_the_vram_end_never_reaches_the_adjacent_peer() {
    let vram = Arc::new(VecVram::new(VRAM_SIZE));
    let peer_base = VRAM_BASE + VRAM_SIZE;
    let bus = Arc::new(AdjacentBus {
        vram: vram.clone(),
        peer: TestDmaSpace::new(peer_base, 4 << 20),
    });
    let cfg = GpuConfig {
        vram_size: VRAM_SIZE,
        serial: 7,
    };
    let irq = Arc::new(RecordingInterrupts::default());
    let dev = GpuDevice::new(cfg, bus.clone(), irq, vram.clone()).expect("valid config");
    dev.bar_moved(VRAM_BAR, Some(VRAM_BASE));
    dev.set_bus_master(true);
    let ring = VRAM_BASE;
    let src = VRAM_BASE + (1 << 20);
    vram.write(1 << 20, &pattern(1 << 20, 5)).unwrap();
    bus.peer.poke(peer_base, &[0xab; 1 << 20]);
    let d = [
        // 1 MiB to 64 KiB before the VRAM end: 960 KiB would land in the peer's BAR.
        (src, peer_base - 65536),
        // 1 MiB from 64 KiB before the end: 960 KiB would be read from the peer.
        (peer_base - 65536, src + (1 << 20)),
    ];
    for (i, (s, t)) in d.iter().enumerate() {
        let desc = CopyDescriptor {
            src: U64::new(*s),
            dst: U64::new(*t),
            len: U64::new(1 << 20),
            flags: U32::new(0),
            status: U32::new(0),
        };
        vram.write(i as u64 * copy::DESC_SIZE, desc.as_bytes())
            .unwrap();
    }
    dev.bar_write(REG_BAR, regs::CE_RING_BASE_LO, &ring.to_le_bytes());
    dev.bar_write(REG_BAR, regs::CE_RING_SIZE, &4u32.to_le_bytes());
    dev.bar_write(REG_BAR, regs::CE_CTRL, &regs::CE_CTRL_ENABLE.to_le_bytes());
    dev.bar_write(REG_BAR, regs::CE_TAIL, &2u32.to_le_bytes());
    while dev.process() || dev.needs_processing() {}
    for i in 0..2u64 {
        let mut st = [0u8; 4];
        vram.read(i * copy::DESC_SIZE + copy::DESC_STATUS_OFFSET, &mut st)
            .unwrap();
        assert_eq!(
            u32::from_le_bytes(st),
            err_status(copy::DESC_ERR_VRAM_RANGE),
            "descriptor {i}"
        );
    }
    assert_eq!(bus.peer.peek(peer_base, 1 << 20), vec![0xab; 1 << 20]);
    let mut out = vec![0xff; 1 << 20];
    vram.read(2 << 20, &mut out).unwrap();
    assert_eq!(
        out,
        vec![0; 1 << 20],
        "nothing read from the peer landed in VRAM"
    );
}

fn counters(l: &Lab) -> std::collections::BTreeMap<String, u64> {
    l.dev.error_counters().into_iter().collect()
}

#[test]
fn error_counters_count_each_code_and_survive_reset() {
    let l = lab();
    l.enable_ring();
    l.post(0, RAM_BASE, VRAM_BASE, 0, 0);
    l.post(1, u64::MAX - 10, VRAM_BASE, 4096, 0);
    l.post(2, 0x10_0000_0000, VRAM_BASE, 4096, 0);
    l.post(3, 0x10_0000_0000, VRAM_BASE, 4096, 0);
    l.post(4, RAM_BASE, 0x10_0000_0000, 4096, 0);
    l.wr(regs::CE_TAIL, 5);
    l.run();
    l.wr(regs::CE_TAIL, RING_ENTRIES);
    l.wr64(regs::CK_OFFSET_LO, VRAM_SIZE - 4096);
    l.wr64(regs::CK_LEN_LO, 8192);
    l.wr(regs::CK_CTRL, regs::CK_CTRL_START);
    l.run();
    l.dev.reset();
    l.run();
    assert_eq!(l.rd(regs::CE_ERRORS), 0, "the register is reset");
    let c = counters(&l);
    for (name, n) in [
        ("ce_descriptor_errors", 5),
        ("ce_error_length", 1),
        ("ce_error_overflow", 1),
        ("ce_error_src_fault", 2),
        ("ce_error_dst_fault", 1),
        ("ce_error_flags", 0),
        ("ce_error_vram_range", 0),
        ("ce_halts", 1),
        ("ce_halt_bad_tail", 1),
        ("ce_halt_fetch_fault", 0),
        ("ck_errors", 1),
        ("ck_error_range", 1),
    ] {
        assert_eq!(c.get(name), Some(&n), "{name} in {c:?}");
    }
}
