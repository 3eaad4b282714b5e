//! `hostile-gpu-ce`: the runner, with `p2pgpu` unbound from the provider GPU, drives its
//! copy engine through BAR0 with the ring and buffers in the last 16 MiB of VRAM
//! (BAR2 through sysfs `resource2`), and feeds it descriptors and rings no driver
//! would: wild addresses, lengths past VRAM, a zero length, an overflowing length,
//! reserved flags, a descriptor that rewrites its own ring, a ring copied onto itself,
//! a ring in the device's registers, a ring past the end of the address space, a tail
//! past the ring, and a checksum range past VRAM.
//!
//! Expected (the register contract, `p2plab_gpu::regs` and `p2plab_gpu::copy`): a bad
//! descriptor completes with DONE | ERROR and its code in its status word, CE_ERRORS
//! counts it and the engine goes on; only a ring the engine cannot use halts it
//! (CE_STATUS.HALTED with the reason), until CE_CTRL.ENABLE is toggled. A range that
//! runs past the VRAM end is refused whole: on `switch` the client's CMB BAR follows
//! the VRAM BAR directly, and not a byte may reach it (the host checks the GPU wrote
//! nothing to its peer).

use super::{hand_back, poll, take_over, Bar, Checks, UNMAPPED, UNMAPPED2};
use crate::cases::gpu::{bar_resource, hex, Gpu};
use crate::cases::Ctx;
use crate::devices::Role;
use crate::mem::{pattern, MIB};
use p2plab_gpu::copy::{
    CopyDescriptor, DESC_ERR_DST_FAULT, DESC_ERR_FLAGS, DESC_ERR_LENGTH, DESC_ERR_OVERFLOW,
    DESC_ERR_SRC_FAULT, DESC_ERR_VRAM_RANGE, DESC_FLAG_INTERRUPT, DESC_SIZE,
    DESC_STATUS_CODE_SHIFT, DESC_STATUS_DONE, DESC_STATUS_ERROR, DESC_STATUS_OFFSET,
};
use p2plab_gpu::regs as g;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

/// The VRAM window the case uses: the last 16 MiB (p2pmem allocations of the other
/// cases come from the start of VRAM).
const WINDOW: usize = 16 * MIB;
/// Offsets inside the window.
const RING: usize = 0;
const RING_ENTRIES: u32 = 128;
const REPL: usize = 64 << 10;
const SRC: usize = MIB;
const DST: usize = 2 * MIB;
const DST2: usize = 3 * MIB;
/// The last 64 KiB of VRAM.
const END: usize = WINDOW - 65536;
const SEED: u64 = 0x6770_7568;

fn desc(src: u64, dst: u64, len: u64, flags: u32) -> CopyDescriptor {
    CopyDescriptor {
        src: U64::new(src),
        dst: U64::new(dst),
        len: U64::new(len),
        flags: U32::new(flags),
        status: U32::new(0),
    }
}

/// The status word of a descriptor that failed with `code`.
fn failed(code: u8) -> u32 {
    DESC_STATUS_DONE | DESC_STATUS_ERROR | (u32::from(code) << DESC_STATUS_CODE_SHIFT)
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| pattern(seed, i as u64).to_le_bytes())
        .collect()
}

/// The runner as the GPU's driver.
struct RawGpu {
    reg: Bar,
    vram: Bar,
    /// Ring slot the next descriptor goes to (the engine's head after the last batch).
    next: u32,
}

impl RawGpu {
    fn r(&self, off: u64) -> u32 {
        self.reg.r32(off as usize)
    }
    fn w(&self, off: u64, v: u32) {
        self.reg.w32(off as usize, v);
    }

    /// Bus address of window offset `off`.
    fn bus(&self, off: usize) -> u64 {
        self.vram.bus + off as u64
    }

    /// CE_CTRL.ENABLE cleared and CE_STATUS.ACTIVE awaited: the engine holds nothing.
    fn stop(&self) -> Result<(), String> {
        self.w(g::CE_CTRL, 0);
        poll(Duration::from_secs(10), || {
            (self.r(g::CE_STATUS) & g::CE_STATUS_ACTIVE == 0).then_some(())
        })
        .ok_or_else(|| "CE_STATUS.ACTIVE still set 10 s after disabling".to_string())
    }

    /// The ring at bus address `base` with `entries`, enabled; CE_STATUS then.
    fn start(&mut self, base: u64, entries: u32) -> Result<u32, String> {
        self.stop()?;
        self.w(g::CE_RING_BASE_LO, base as u32);
        self.w(g::CE_RING_BASE_HI, (base >> 32) as u32);
        self.w(g::CE_RING_SIZE, entries);
        self.w(g::CE_CTRL, g::CE_CTRL_ENABLE);
        self.next = 0;
        Ok(self.r(g::CE_STATUS))
    }

    /// Posts `descs` from the next slot, rings the tail and waits until the engine
    /// consumed them or halted; the first slot.
    fn run(&mut self, descs: &[CopyDescriptor]) -> Result<u32, String> {
        let first = self.next;
        for (i, d) in descs.iter().enumerate() {
            let slot = (first as usize + i) % RING_ENTRIES as usize;
            self.vram
                .write(RING + slot * DESC_SIZE as usize, d.as_bytes());
        }
        let tail = (first + descs.len() as u32) % RING_ENTRIES;
        self.w(g::CE_TAIL, tail);
        poll(Duration::from_secs(20), || {
            let st = self.r(g::CE_STATUS);
            (self.r(g::CE_HEAD) == tail && st & g::CE_STATUS_ACTIVE == 0
                || st & g::CE_STATUS_HALTED != 0)
                .then_some(())
        })
        .ok_or_else(|| {
            format!(
                "the engine did not reach tail {tail} in 20 s: head {}, CE_STATUS {:#x}",
                self.r(g::CE_HEAD),
                self.r(g::CE_STATUS)
            )
        })?;
        self.next = tail;
        Ok(first)
    }

    /// The status word of ring slot `slot`.
    fn status(&self, slot: u32) -> u32 {
        let off = RING + slot as usize * DESC_SIZE as usize + DESC_STATUS_OFFSET as usize;
        (self.vram.r64(off & !7) >> (8 * (off & 7))) as u32
    }

    fn halt_code(&self) -> Option<u8> {
        let st = self.r(g::CE_STATUS);
        (st & g::CE_STATUS_HALTED != 0).then_some((st >> g::CE_STATUS_HALT_SHIFT) as u8)
    }
}

/// hostile-gpu-ce.
pub fn copy_engine(ctx: &mut Ctx) -> Result<(), String> {
    let p = ctx.env.role(Role::Provider)?.clone();
    let bdf = p.bdf.clone().ok_or("provider has no PCI address")?;
    let vram_size = p.info.vram_size;
    if vram_size < WINDOW as u64 {
        return Err(format!("{}: VRAM of {vram_size:#x} bytes", p.info.name));
    }
    take_over(ctx, &bdf, "p2pgpu")?;
    let t = Instant::now();
    let mut ck = Checks::new(ctx);
    let ran = attacks(&mut ck, &bdf, vram_size);
    let verdict = ck.verdict();
    let attack_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    hand_back(&bdf, "p2pgpu")?;
    let gpu = Gpu::open(&p)?;
    // Through the rebound driver: the source still holds its pattern and the
    // destination the wild descriptors aimed at still holds its canary.
    let base = vram_size - WINDOW as u64;
    let src = gpu.checksum(base + SRC as u64, MIB as u64)?;
    let dst = gpu.checksum(base + DST as u64, MIB as u64)?;
    let want_src: [u8; 32] = Sha256::digest(bytes_of(SEED, MIB)).into();
    let want_dst: [u8; 32] = Sha256::digest(bytes_of(!SEED, MIB)).into();
    ctx.diag(&format!(
        "attacks {attack_secs:.2} s; rebound: {} (VRAM {} MiB), checksums of the source {} and the wild descriptors' destination {} in {:.2} s",
        gpu.dev,
        gpu.info.vram_size >> 20,
        &hex(&src)[..16],
        &hex(&dst)[..16],
        t.elapsed().as_secs_f64()
    ));
    ran?;
    let passed = verdict?;
    if src != want_src || dst != want_dst {
        return Err(format!(
            "after the rebind the device checksums VRAM as source {} (want {}) and destination {} (want {})",
            hex(&src),
            hex(&want_src),
            hex(&dst),
            hex(&want_dst)
        ));
    }
    ctx.diag(&format!("{passed} checks passed"));
    Ok(())
}

fn attacks(ck: &mut Checks, bdf: &str, vram_size: u64) -> Result<(), String> {
    let (vram_bus, _) = bar_resource(bdf, 2)?;
    let base = vram_size - WINDOW as u64;
    let mut gp = RawGpu {
        reg: Bar::map(bdf, 0, 0, g::BAR0_SIZE as usize)?,
        vram: Bar::map(bdf, 2, base, WINDOW)?,
        next: 0,
    };
    let r = run_attacks(ck, &mut gp, vram_bus + vram_size);
    // Leave the engine stopped and quiet for the driver, whatever happened.
    let stopped = gp.stop();
    gp.w(g::INTR_STATUS, g::INTR_ALL);
    r.and(stopped)
}

fn run_attacks(ck: &mut Checks, gp: &mut RawGpu, vram_end: u64) -> Result<(), String> {
    let id = gp.r(g::ID);
    if id != g::ID_VALUE {
        return Err(format!("BAR0 ID reads {id:#x}, want {:#x}", g::ID_VALUE));
    }
    gp.w(g::INTR_ENABLE, 0);
    gp.w(g::INTR_STATUS, g::INTR_ALL);
    gp.vram.write(SRC, &bytes_of(SEED, MIB));
    let canary = bytes_of(!SEED, MIB);
    gp.vram.write(DST, &canary);
    gp.vram.write(DST2, &canary);
    gp.vram.write(END, &canary[..65536]);
    let ring = gp.bus(RING);
    let st = gp.start(ring, RING_ENTRIES)?;
    ck.diag(&format!(
        "ring of {RING_ENTRIES} at VRAM bus address {ring:#x}, CE_STATUS {st:#x}; VRAM ends at {vram_end:#x}"
    ));
    let errors0 = gp.r(g::CE_ERRORS);
    let completed0 = gp.r(g::CE_COMPLETED);

    // Bad descriptors: each completes with its error, the engine goes on.
    let (src, dst) = (gp.bus(SRC), gp.bus(DST));
    let bad: [(&str, CopyDescriptor, u8); 7] = [
        (
            "wild source",
            desc(UNMAPPED, dst, 4096, 0),
            DESC_ERR_SRC_FAULT,
        ),
        (
            "wild destination",
            desc(src, UNMAPPED2, 4096, 0),
            DESC_ERR_DST_FAULT,
        ),
        (
            "1 MiB from 64 KiB before the VRAM end",
            desc(vram_end - 65536, dst, MIB as u64, 0),
            DESC_ERR_VRAM_RANGE,
        ),
        (
            "1 MiB to 64 KiB before the VRAM end",
            desc(src, vram_end - 65536, MIB as u64, 0),
            DESC_ERR_VRAM_RANGE,
        ),
        ("length 0", desc(src, dst, 0, 0), DESC_ERR_LENGTH),
        (
            "length 2^64-1 (wraps)",
            desc(src, dst, u64::MAX, 0),
            DESC_ERR_OVERFLOW,
        ),
        (
            "reserved flag bit 7",
            desc(src, dst, 4096, 0x80),
            DESC_ERR_FLAGS,
        ),
    ];
    let descs: Vec<CopyDescriptor> = bad.iter().map(|b| b.1).collect();
    let good = desc(src, gp.bus(DST2), 65536, DESC_FLAG_INTERRUPT);
    let first = gp.run(&[descs.as_slice(), &[good]].concat())?;
    for (i, (what, _, code)) in bad.iter().enumerate() {
        let got = gp.status(first + i as u32);
        ck.check(
            &format!("descriptor with {what}"),
            got == failed(*code),
            format!("status {got:#x} (want {:#x}: error {code})", failed(*code)),
        );
    }
    let got = gp.status(first + bad.len() as u32);
    let copied = gp.vram.read(DST2, 65536) == bytes_of(SEED, 65536);
    ck.check(
        "a good descriptor after them",
        got == DESC_STATUS_DONE && copied,
        format!(
            "status {got:#x}, 64 KiB {}",
            if copied { "copied" } else { "WRONG" }
        ),
    );
    let errors = gp.r(g::CE_ERRORS).wrapping_sub(errors0);
    let completed = gp.r(g::CE_COMPLETED).wrapping_sub(completed0);
    let intr = gp.r(g::INTR_STATUS);
    ck.check(
        "CE_ERRORS, CE_COMPLETED, INTR_STATUS",
        errors == 7 && completed == 8 && intr & g::INTR_CE_ERROR != 0 && gp.halt_code().is_none(),
        format!(
            "+{errors} errors, +{completed} completed, INTR_STATUS {intr:#x}, CE_STATUS {:#x}",
            gp.r(g::CE_STATUS)
        ),
    );

    // A descriptor that rewrites the three slots after it with wild descriptors before
    // the engine fetches them, then one copying the whole ring onto itself.
    let slot = gp.next;
    let wild: Vec<u8> = (0..3)
        .flat_map(|_| desc(UNMAPPED, dst, 4096, 0).as_bytes().to_vec())
        .collect();
    gp.vram.write(REPL, &wild);
    let ring_bytes = u64::from(RING_ENTRIES) * DESC_SIZE;
    let next_slots = ring + u64::from(slot + 1) * DESC_SIZE;
    let batch = [
        desc(gp.bus(REPL), next_slots, 3 * DESC_SIZE, 0),
        desc(src, dst, 4096, 0),
        desc(src, dst, 4096, 0),
        desc(src, dst, 4096, 0),
        desc(ring, ring, ring_bytes, 0),
    ];
    let first = gp.run(&batch)?;
    let st: Vec<u32> = (0..5).map(|i| gp.status(first + i)).collect();
    let want = [
        DESC_STATUS_DONE,
        failed(DESC_ERR_SRC_FAULT),
        failed(DESC_ERR_SRC_FAULT),
        failed(DESC_ERR_SRC_FAULT),
        DESC_STATUS_DONE,
    ];
    ck.check(
        "a descriptor rewriting its own ring, then the ring copied onto itself",
        st == want && gp.r(g::CE_HEAD) == gp.next && gp.halt_code().is_none(),
        format!(
            "statuses {st:x?} (want {want:x?}), head {} of tail {}",
            gp.r(g::CE_HEAD),
            gp.next
        ),
    );
    let dst_kept = gp.vram.read(DST, MIB) == canary;
    let end_kept = gp.vram.read(END, 65536) == canary[..65536];
    ck.check(
        "the destinations of the refused descriptors",
        dst_kept && end_kept,
        format!(
            "1 MiB at the wild descriptors' destination {}, the last 64 KiB of VRAM {}",
            if dst_kept { "intact" } else { "WRITTEN" },
            if end_kept { "intact" } else { "WRITTEN" }
        ),
    );

    // Rings the engine cannot use: it halts, and a disable + enable recovers.
    let halts = [
        (
            "a ring in the device's own registers (BAR0)",
            gp.reg.bus,
            4,
            true,
            g::CE_HALT_FETCH_FAULT,
        ),
        (
            "a ring running past the end of the address space",
            !(g::CE_RING_ALIGN - 1),
            RING_ENTRIES,
            false,
            g::CE_HALT_BAD_RING,
        ),
        (
            "a tail at the ring's size",
            ring,
            RING_ENTRIES,
            false,
            g::CE_HALT_BAD_TAIL,
        ),
    ];
    for (what, base, entries, fetch, want) in halts {
        gp.start(base, entries)?;
        if fetch {
            gp.w(g::CE_TAIL, 1);
        } else if want == g::CE_HALT_BAD_TAIL {
            gp.w(g::CE_TAIL, RING_ENTRIES);
        }
        let code = poll(Duration::from_secs(5), || gp.halt_code());
        ck.check(
            what,
            code == Some(want),
            format!(
                "CE_STATUS {:#x}: halt {code:?} (want {want})",
                gp.r(g::CE_STATUS)
            ),
        );
        let st = gp.start(ring, RING_ENTRIES)?;
        ck.check(
            &format!("disable + enable after {what}"),
            st == g::CE_STATUS_ENABLED,
            format!("CE_STATUS {st:#x}"),
        );
    }

    // The checksum engine over a range past the VRAM end.
    let vram_size = gp.r(g::VRAM_SIZE_LO) as u64 | (u64::from(gp.r(g::VRAM_SIZE_HI)) << 32);
    gp.w(g::CK_OFFSET_LO, (vram_size - 4096) as u32);
    gp.w(g::CK_OFFSET_HI, ((vram_size - 4096) >> 32) as u32);
    gp.w(g::CK_LEN_LO, MIB as u32);
    gp.w(g::CK_LEN_HI, 0);
    gp.w(g::CK_CTRL, g::CK_CTRL_START);
    let ck_status = poll(Duration::from_secs(5), || {
        let s = gp.r(g::CK_STATUS);
        (s & g::CK_STATUS_BUSY == 0).then_some(s)
    });
    let want = g::CK_STATUS_ERROR | (u32::from(g::CK_ERR_RANGE) << g::CK_STATUS_CODE_SHIFT);
    ck.check(
        "a checksum of 1 MiB from 4 KiB before the VRAM end",
        ck_status == Some(want),
        format!("CK_STATUS {ck_status:x?} (want {want:#x})"),
    );

    // And the engine still copies.
    let t = Instant::now();
    let first = gp.run(&[desc(src, gp.bus(DST2), MIB as u64, 0)])?;
    let got = gp.status(first);
    let copied = gp.vram.read(DST2, MIB) == bytes_of(SEED, MIB);
    ck.check(
        "a 1 MiB copy after the attacks",
        got == DESC_STATUS_DONE && copied,
        format!(
            "status {got:#x}, {} in {:.2} s",
            if copied { "copied" } else { "WRONG" },
            t.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}
