//! The BAR0 register file (spec §3.1) apart from the doorbells.
//!
//! Register writes only change this small state (under a lock never held across DMA)
//! and report what the worker must do: enabling, resetting and shutting down the
//! controller happen in the worker's `process` pass, which sets CSTS.RDY/SHST.

use nvme_spec::regs::{self as r, Aqa, Cap, Cc, Csts, CSTS_SHST_OCCURRING, VS_1_4};

use crate::cmb::Cmb;

/// What a register write asks of the controller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// The worker has something to do (enable, shutdown).
    pub kick: bool,
    /// CC.EN went 1→0: a Controller Reset.
    pub controller_reset: bool,
    /// Vectors unmasked by INTMC that had an interrupt pending.
    pub unmasked_pending: u32,
    /// A CMBMSC write left CMBSTS.CBAI set (the CMB stays disabled).
    pub cmb_address_invalid: bool,
}

#[derive(Debug)]
pub struct RegFile {
    pub cap: Cap,
    pub cc: Cc,
    pub csts: Csts,
    pub aqa: Aqa,
    pub asq: u64,
    pub acq: u64,
    /// INTMS/INTMC mask (pin-based / MSI only: ignored while MSI-X is in use, §3.1.3;
    /// vectors 0..32). Cleared by a Controller Reset, like every register but
    /// AQA/ASQ/ACQ (and CMBMSC, see `cmb`).
    pub intms: u32,
    /// Interrupts that fired while masked.
    pub irq_pending: u32,
    pub cmb: Cmb,
    /// High dword of CMBMSC written but not yet combined (Linux writes 0x54 first).
    pub cmbmsc_hi: u32,
}

/// Merges a 32-bit write into half of a 64-bit register.
fn set_half(v: u64, high: bool, val: u32) -> u64 {
    if high {
        (v & 0xffff_ffff) | (u64::from(val) << 32)
    } else {
        (v & !0xffff_ffff) | u64::from(val)
    }
}

impl RegFile {
    pub fn new(cap: Cap, cmb: Cmb) -> Self {
        Self {
            cap,
            cc: Cc::new(),
            csts: Csts::new(),
            aqa: Aqa::new(),
            asq: 0,
            acq: 0,
            intms: 0,
            irq_pending: 0,
            cmbmsc_hi: 0,
            cmb,
        }
    }

    /// Power-on values of everything a reset clears (CMBMSC is kept, §3.1.16 note).
    pub fn reset(&mut self) {
        self.cc = Cc::new();
        self.csts = Csts::new();
        self.aqa = Aqa::new();
        self.asq = 0;
        self.acq = 0;
        self.intms = 0;
        self.irq_pending = 0;
    }

    /// Reads the aligned dword at `off`.
    pub fn read_dword(&self, off: u64) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            o if o == r::CAP => lo(self.cap.into_bits()),
            o if o == r::CAP + 4 => hi(self.cap.into_bits()),
            o if o == r::VS => VS_1_4.into_bits(),
            o if o == r::INTMS || o == r::INTMC => self.intms,
            o if o == r::CC => self.cc.into_bits(),
            o if o == r::CSTS => self.csts.into_bits(),
            o if o == r::AQA => self.aqa.into_bits(),
            o if o == r::ASQ => lo(self.asq),
            o if o == r::ASQ + 4 => hi(self.asq),
            o if o == r::ACQ => lo(self.acq),
            o if o == r::ACQ + 4 => hi(self.acq),
            o if o == r::CMBLOC => self.cmb.cmbloc().into_bits(),
            o if o == r::CMBSZ => self.cmb.cmbsz().into_bits(),
            o if o == r::CMBMSC => lo(self.cmb.msc.into_bits()),
            o if o == r::CMBMSC + 4 => hi(self.cmb.msc.into_bits()),
            o if o == r::CMBSTS => self.cmb.sts.into_bits(),
            // NSSR (not supported, reads 0), BPINFO/BPRSEL/BPMBL (no boot partitions),
            // PMRCAP (no PMR), reserved: zero.
            _ => 0,
        }
    }

    /// Writes the aligned dword at `off`.
    pub fn write_dword(&mut self, off: u64, val: u32) -> WriteEffect {
        let mut fx = WriteEffect::default();
        match off {
            o if o == r::INTMS => self.intms |= val,
            o if o == r::INTMC => {
                self.intms &= !val;
                fx.unmasked_pending = self.irq_pending & val;
                self.irq_pending &= !val;
            }
            o if o == r::CC => {
                // Bits 31:24 and 3:1 are reserved.
                let new = Cc::from_bits(val & 0x00ff_fff1);
                let old = self.cc;
                self.cc = new;
                if old.en() && !new.en() {
                    // §7.3.2: every register but AQA, ASQ and ACQ is reset (CSTS by the
                    // worker, once it has stopped).
                    fx.controller_reset = true;
                    fx.kick = true;
                    self.intms = 0;
                    self.irq_pending = 0;
                    // RDY already reads 0 (the enable failed with CFS, or has not been
                    // carried out yet): a host waiting for RDY = 0 is done at once, so
                    // CFS must read clear now, not when the worker gets to the reset —
                    // else its next CC.EN = 1 sees the old CFS and takes it for the
                    // outcome of the new enable.
                    if !self.csts.rdy() {
                        self.csts.set_cfs(false);
                    }
                }
                if !old.en() && new.en() {
                    fx.kick = true;
                }
                if new.shn() != 0 && old.shn() == 0 {
                    self.csts.set_shst(CSTS_SHST_OCCURRING);
                    fx.kick = true;
                }
            }
            // NSSRO is RW1C; everything else in CSTS is read-only.
            o if o == r::CSTS && val & (1 << 4) != 0 => self.csts.set_nssro(false),
            o if o == r::AQA => self.aqa = Aqa::from_bits(val & 0x0fff_0fff),
            o if o == r::ASQ => self.asq = set_half(self.asq, false, val & !0xfff),
            o if o == r::ASQ + 4 => self.asq = set_half(self.asq, true, val),
            o if o == r::ACQ => self.acq = set_half(self.acq, false, val & !0xfff),
            o if o == r::ACQ + 4 => self.acq = set_half(self.acq, true, val),
            o if o == r::CMBMSC => {
                let v = (u64::from(self.cmbmsc_hi) << 32) | u64::from(val);
                fx.cmb_address_invalid = self.cmb.write_msc(v);
            }
            o if o == r::CMBMSC + 4 => {
                // Counted at the low dword's write, which carries CMSE (Linux writes
                // the high dword first).
                self.cmbmsc_hi = val;
                let v = set_half(self.cmb.msc.into_bits(), true, val);
                self.cmb.write_msc(v);
            }
            // NSSR (CAP.NSSRS = 0), BPRSEL/BPMBL (CAP.BPS = 0), read-only and reserved
            // registers: writes are ignored.
            _ => {}
        }
        fx
    }
}
