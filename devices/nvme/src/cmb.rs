//! Controller Memory Buffer registers (spec §3.1.11, §3.1.12, §3.1.16, §3.1.17, §8.7).
//!
//! The CMB memory itself is not here: it is the memory of BAR [`crate::pci::CMB_BAR`],
//! owned by the host (a memfd QEMU maps). Queues and PRPs placed in the CMB are reached
//! through the [`p2plab_memory::DmaSpace`], which routes the device's own BAR addresses
//! to that memory. This module keeps the NVMe 1.4 register semantics:
//! - CMBLOC/CMBSZ read as zero until the host sets CMBMSC.CRE;
//! - CMBMSC.CMSE enables the CMB at CMBMSC.CBA, which must equal the address the guest
//!   programmed into the CMB BAR, else CMBSTS.CBAI is set and the CMB stays disabled;
//! - CMBMSC is not reset by a Controller Reset (CC.EN 1→0) nor by a function reset
//!   (FLR): Linux writes it once per probe.

use nvme_spec::regs::{Cmbloc, Cmbmsc, Cmbsts, Cmbsz, CMBSZ_SZU_1M};

use crate::pci::CMB_BAR;

/// Size unit advertised in CMBSZ.SZU: 1 MiB.
pub const CMB_UNIT: u64 = 1 << 20;

#[derive(Debug)]
pub struct Cmb {
    /// CMB size in bytes (0: no CMB, CAP.CMBS = 0).
    pub size: u64,
    /// The CMB BAR's address as programmed in config space (None: unassigned).
    pub bar_addr: Option<u64>,
    pub msc: Cmbmsc,
    pub sts: Cmbsts,
}

impl Cmb {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            bar_addr: None,
            msc: Cmbmsc::new(),
            sts: Cmbsts::new(),
        }
    }

    pub fn supported(&self) -> bool {
        self.size != 0
    }

    /// CMBLOC: BAR [`crate::pci::CMB_BAR`], offset 0; zero while CMBMSC.CRE is clear.
    pub fn cmbloc(&self) -> Cmbloc {
        if !self.supported() || !self.msc.cre() {
            return Cmbloc::new();
        }
        Cmbloc::new().with_bir(CMB_BAR as u8).with_ofst(0)
    }

    /// CMBSZ: SQS, LISTS, RDS, WDS (not CQS), size in MiB; zero while CRE is clear.
    pub fn cmbsz(&self) -> Cmbsz {
        if !self.supported() || !self.msc.cre() {
            return Cmbsz::new();
        }
        Cmbsz::new()
            .with_sqs(true)
            .with_cqs(false)
            .with_lists(true)
            .with_rds(true)
            .with_wds(true)
            .with_szu(CMBSZ_SZU_1M)
            .with_sz(((self.size / CMB_UNIT) & 0xf_ffff) as u32)
    }

    /// A write of the whole CMBMSC value (dword writes are merged by the caller).
    /// Returns whether it left CMBSTS.CBAI set: CMSE with a CBA that is not the CMB
    /// BAR's address (§3.1.16; the CMB then stays disabled).
    pub fn write_msc(&mut self, value: u64) -> bool {
        if !self.supported() {
            return false;
        }
        // Reserved bits 11:2 read as zero.
        self.msc = Cmbmsc::from_bits(value & !0xffc);
        self.revalidate();
        self.sts.cbai()
    }

    pub fn set_bar_address(&mut self, addr: Option<u64>) {
        self.bar_addr = addr;
        self.revalidate();
    }

    fn revalidate(&mut self) {
        let invalid = self.msc.cmse() && self.bar_addr != Some(self.msc.cba_addr());
        self.sts.set_cbai(invalid);
    }

    /// The enabled CMB window `[start, start + size)`, if CMSE is set with a valid CBA.
    pub fn window(&self) -> Option<(u64, u64)> {
        (self.supported() && self.msc.cmse() && !self.sts.cbai())
            .then(|| (self.msc.cba_addr(), self.size))
    }

    /// Whether `[addr, addr + len)` lies entirely inside the enabled CMB window.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match self.window() {
            Some((start, size)) => {
                addr >= start
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= start.saturating_add(size))
            }
            None => false,
        }
    }

    /// Whether `[addr, addr + len)` touches the enabled CMB window.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        match self.window() {
            Some((start, size)) => {
                let end = addr.saturating_add(len);
                addr < start.saturating_add(size) && end > start
            }
            None => false,
        }
    }
}
