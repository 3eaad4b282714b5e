//! The case functions. The table (names, where each case applies, what it needs) is
//! `p2plab_guest_abi::cases`, shared with the host; [`body`] maps each of its ids to
//! the function that runs it. To add a case: a row in that table, then
//! `fn run(&mut Ctx) -> Result<(), String>` in a module under `cases/` (one module per
//! family) and its arm in [`body`].

mod bench;
mod dmabuf;
mod gpu;
mod hostile;
mod nvme;
mod p2p;
mod pci;
mod uring;
mod uring_dmabuf;

use p2plab_guest_abi::{CaseId, ExecConfig};

use crate::console::Console;
use crate::devices::Env;
use crate::exec;

/// What a case function gets.
pub struct Ctx<'a> {
    pub env: &'a Env,
    pub con: &'a mut Console,
    /// The `--exec` command of the run, if it has one (the `exec` case runs it).
    pub exec: Option<&'a ExecConfig>,
    /// Set by [`Ctx::skip`]: the case could not run on this kernel (reported
    /// `ok N name # SKIP reason`, counted as skipped, never as passed).
    pub skipped: Option<String>,
}

impl Ctx<'_> {
    /// End the case as skipped: `return ctx.skip("why")`.
    pub fn skip(&mut self, why: &str) -> Result<(), String> {
        self.diag(&format!("SKIP: {why}"));
        self.skipped = Some(why.to_string());
        Ok(())
    }

    /// A KTAP diagnostic line.
    pub fn diag(&mut self, s: &str) {
        self.con.line(&format!("# {s}"));
    }
}

/// The function that runs case `id`.
pub fn body(id: CaseId) -> fn(&mut Ctx) -> Result<(), String> {
    match id {
        CaseId::NvmeIdentify => nvme::identify,
        CaseId::CmbP2pmem => nvme::cmb_p2pmem,
        CaseId::P2pRead => p2p::read,
        CaseId::P2pWrite => p2p::write,
        CaseId::P2pRefused => p2p::refused,
        CaseId::CmbRead => nvme::cmb_read,
        CaseId::SqsInCmb => nvme::sqs_in_cmb,
        CaseId::VendorLog => nvme::vendor_log_case,
        CaseId::FioVerify => nvme::fio_verify,
        CaseId::IrqCoalescing => nvme::irq_coalescing,
        CaseId::PolledIo => nvme::polled_io,
        CaseId::NvmeNvmeCopy => nvme::nvme_nvme_copy,
        CaseId::P2pHostBridge => nvme::p2p_host_bridge,
        CaseId::PciConfig => pci::config,
        CaseId::FlrReset => pci::flr_reset,
        CaseId::CopyEngine => gpu::copy_engine,
        CaseId::DmabufExport => gpu::dmabuf_export,
        CaseId::IoUringP2p => uring::io_uring_p2p,
        CaseId::CpuCopy => gpu::cpu_copy,
        CaseId::DmabufPeerCopy => dmabuf::peer_copy,
        CaseId::DmabufRevoke => dmabuf::revoke,
        CaseId::DmabufUnbind => dmabuf::unbind,
        CaseId::UringDmabufRead => uring_dmabuf::read,
        CaseId::UringDmabufWrite => uring_dmabuf::write,
        CaseId::UringDmabufInvalidate => uring_dmabuf::invalidate,
        CaseId::UringDmabufErrors => uring_dmabuf::errors,
        CaseId::UringDmabufRefused => uring_dmabuf::refused,
        CaseId::UringDmabufBuffered => uring_dmabuf::buffered,
        CaseId::UringDmabufLarge => uring_dmabuf::large,
        CaseId::HostileNvmeRegs => hostile::nvme_regs,
        CaseId::HostileNvmeDma => hostile::nvme_dma,
        CaseId::HostileGpuCe => hostile::gpu_ce,
        CaseId::Bench => bench::bench,
        CaseId::VramRss => bench::vram_rss,
        CaseId::Exec => exec::run,
    }
}
