//! The admin worker: the admin command set (spec §5).
//!
//! Executes one command against the shared state ([`crate::state`]) and returns a
//! [`crate::command::CommandResult`]; the controller's loop fetches and completes it.

use std::time::Instant;

use nvme_spec::feature::{
    FeatureId, InterruptVectorConfiguration, NumberOfQueues, PowerManagement, TemperatureThreshold,
    Timestamp, CAPABILITY_CHANGEABLE, SEL_DEFAULT, SEL_SUPPORTED_CAPABILITIES, VWC_WCE,
};
use nvme_spec::identify::{
    Cns, IdentifyController, Lpa, Oacs, Oncs, Sgls, CNTRLTYPE_IO, IDENTIFY_DATA_SIZE, VWC_PRESENT,
};
use nvme_spec::log::{
    CommandEffects, CommandsEffectsLog, FirmwareSlotLog, LogPageId, SmartHealthLog,
};
use nvme_spec::{
    AdminOpcode, Command, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11, DeleteQueueCdw10,
    FeaturesCdw10, GetLogPageCdw10, GetLogPageCdw11, IdentifyCdw10, NvmOpcode, Status,
    ABORT_NOT_ABORTED, CQES_LOG2, PSDT_PRP, SQES_LOG2,
};
use p2plab_memory::DmaSpace;
use zerocopy::{FromZeros, IntoBytes};

use crate::command::{CommandResult, Outcome};
use crate::error::NvmeError;
use crate::features::Features;
use crate::prp::{copy_from_guest, copy_to_guest, prp_runs, PAGE_SIZE};
use crate::queue::{cq_db_index, sq_db_index, CompletionQueue, Shadow, SubmissionQueue};
use crate::state::{Shared, State};

/// AERL: Asynchronous Event Request Limit (0's based): 4 outstanding.
pub const AERL: u8 = 3;
/// ACL: Abort Command Limit (0's based).
pub const ACL: u8 = 3;
/// Composite temperature reported in SMART (Kelvin, 35 °C).
pub const COMPOSITE_TEMPERATURE: u16 = 308;

/// Executes admin command `cmd`.
pub fn handle(sh: &Shared, st: &mut State, cmd: &Command) -> CommandResult {
    // Admin commands use PRPs only and no fused operations over PCIe (§4.2).
    if cmd.cdw0.psdt() != PSDT_PRP || cmd.cdw0.fuse() != 0 {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let done = |dw0: u32| Ok(Outcome::Complete(dw0));
    match AdminOpcode(cmd.cdw0.opc()) {
        AdminOpcode::IDENTIFY => identify(sh, cmd).and_then(|()| done(0)),
        AdminOpcode::GET_LOG_PAGE => get_log_page(sh, st, cmd).and_then(|()| done(0)),
        AdminOpcode::SET_FEATURES => set_features(sh, st, cmd).and_then(done),
        AdminOpcode::GET_FEATURES => get_features(sh, st, cmd).and_then(done),
        AdminOpcode::CREATE_IO_CQ => create_cq(sh, st, cmd).and_then(|()| done(0)),
        AdminOpcode::CREATE_IO_SQ => create_sq(sh, st, cmd).and_then(|()| done(0)),
        AdminOpcode::DELETE_IO_SQ => delete_sq(sh, st, cmd).and_then(|()| done(0)),
        AdminOpcode::DELETE_IO_CQ => delete_cq(sh, st, cmd).and_then(|()| done(0)),
        AdminOpcode::ASYNC_EVENT_REQUEST => {
            if st.events.outstanding.len() > usize::from(AERL) {
                return Err(Status::ASYNCHRONOUS_EVENT_REQUEST_LIMIT_EXCEEDED.into());
            }
            st.events.outstanding.push(cmd.cdw0.cid());
            Ok(Outcome::Deferred)
        }
        // Commands run to completion before the next is fetched: nothing is ever left
        // to abort.
        AdminOpcode::ABORT => done(ABORT_NOT_ABORTED),
        AdminOpcode::KEEP_ALIVE => done(0),
        AdminOpcode::DOORBELL_BUFFER_CONFIG => {
            doorbell_buffer_config(sh, st, cmd).and_then(|()| done(0))
        }
        _ => Err(Status::INVALID_COMMAND_OPCODE.into()),
    }
}

/// Copies `data` to the command's PRPs, `len` bytes (zero padded / truncated).
fn send(sh: &Shared, cmd: &Command, data: &[u8], len: u64) -> Result<(), NvmeError> {
    if len > sh.max_transfer() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let runs = prp_runs(&*sh.dma, cmd.dptr[0], cmd.dptr[1], len)?;
    let mut buf = data.to_vec();
    // len <= MDTS (at most 16 MiB), so this fits usize.
    buf.resize(len as usize, 0);
    copy_to_guest(&*sh.dma, &runs, &buf)
}

/// Reads `len` bytes from the command's PRPs.
fn receive(sh: &Shared, cmd: &Command, len: usize) -> Result<Vec<u8>, NvmeError> {
    let runs = prp_runs(&*sh.dma, cmd.dptr[0], cmd.dptr[1], len as u64)?;
    let mut buf = vec![0u8; len];
    copy_from_guest(&*sh.dma, &runs, &mut buf)?;
    Ok(buf)
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Identify Controller (CNS 01h, §5.15.2.2).
pub fn identify_controller(sh: &Shared) -> IdentifyController {
    let mut id = IdentifyController::new_zeroed();
    id.vid = crate::pci::VENDOR_ID;
    id.ssvid = crate::pci::SUBSYSTEM_VENDOR_ID;
    id.sn = padded(&sh.serial);
    id.mn = padded(&sh.model);
    id.fr = padded(&sh.firmware);
    id.rab = 6;
    id.mdts = sh.mdts;
    id.cntlid = 1;
    id.ver = nvme_spec::regs::VS_1_4.into_bits();
    id.cntrltype = CNTRLTYPE_IO;
    id.oacs = Oacs::new().with_doorbell_buffer_config(true);
    id.acl = ACL;
    id.aerl = AERL;
    id.frmw = 0b0000_0011; // one slot, slot 1 read-only
    id.lpa = Lpa::new()
        .with_commands_effects(true)
        .with_extended_data(true);
    id.elpe = 0;
    id.npss = 0;
    id.wctemp = 0x0157;
    id.cctemp = 0x0175;
    let total: u64 = sh.namespaces.iter().map(|n| n.nlba << n.lba_shift).sum();
    id.tnvmcap = u128::from(total).to_le_bytes();
    id.sqes = (SQES_LOG2 << 4) | SQES_LOG2;
    id.cqes = (CQES_LOG2 << 4) | CQES_LOG2;
    id.nn = u32::try_from(sh.namespaces.len()).unwrap_or(u32::MAX);
    id.oncs = Oncs::new()
        .with_compare(true)
        .with_dataset_management(true)
        .with_write_zeroes(true)
        .with_timestamp(true);
    id.vwc = VWC_PRESENT;
    id.sgls = Sgls::new().with_supported(1).with_bit_bucket(true);
    id.subnqn[..sh.subnqn.len().min(255)]
        .copy_from_slice(&sh.subnqn.as_bytes()[..sh.subnqn.len().min(255)]);
    id.psd[0].mp = 2500; // 25 W
    id
}

fn identify(sh: &Shared, cmd: &Command) -> Result<(), NvmeError> {
    let cdw10 = IdentifyCdw10::from_bits(cmd.cdw10);
    let len = IDENTIFY_DATA_SIZE as u64;
    match Cns(cdw10.cns()) {
        Cns::NAMESPACE => {
            let ns = sh
                .namespace(cmd.nsid)
                .ok_or(Status::INVALID_NAMESPACE_OR_FORMAT)?;
            send(sh, cmd, ns.identify().as_bytes(), len)
        }
        Cns::CONTROLLER => send(sh, cmd, identify_controller(sh).as_bytes(), len),
        Cns::ACTIVE_NAMESPACES => {
            if cmd.nsid >= 0xffff_fffe {
                return Err(Status::INVALID_NAMESPACE_OR_FORMAT.into());
            }
            let list: Vec<u8> = sh
                .namespaces
                .iter()
                .filter(|n| n.nsid > cmd.nsid)
                .take(1024)
                .flat_map(|n| n.nsid.to_le_bytes())
                .collect();
            send(sh, cmd, &list, len)
        }
        Cns::NAMESPACE_ID_DESCRIPTORS => {
            let ns = sh
                .namespace(cmd.nsid)
                .ok_or(Status::INVALID_NAMESPACE_OR_FORMAT)?;
            send(sh, cmd, &ns.id_descriptors(), len)
        }
        // NVM command set specific structures (CSI 0): nothing beyond the defaults.
        Cns::CS_CONTROLLER | Cns::CS_NAMESPACE if cmd.cdw11 >> 24 == 0 => {
            if Cns(cdw10.cns()) == Cns::CS_NAMESPACE && sh.namespace(cmd.nsid).is_none() {
                return Err(Status::INVALID_NAMESPACE_OR_FORMAT.into());
            }
            send(sh, cmd, &[], len)
        }
        _ => Err(Status::INVALID_FIELD_IN_COMMAND.into()),
    }
}

fn u128_bytes(v: u64) -> [u8; 16] {
    u128::from(v).to_le_bytes()
}

fn smart_log(sh: &Shared) -> SmartHealthLog {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &sh.stats;
    let mut log = SmartHealthLog::new_zeroed();
    log.composite_temperature = COMPOSITE_TEMPERATURE.to_le_bytes();
    log.available_spare = 100;
    log.available_spare_threshold = 10;
    // Data Units: thousands of 512-byte units, rounded up (§5.14.1.2).
    log.data_units_read = u128_bytes(s.read_512.load(Relaxed).div_ceil(1000));
    log.data_units_written = u128_bytes(s.written_512.load(Relaxed).div_ceil(1000));
    log.host_read_commands = u128_bytes(s.read_cmds.load(Relaxed));
    log.host_write_commands = u128_bytes(s.write_cmds.load(Relaxed));
    log.power_cycles = u128_bytes(1);
    log.media_errors = u128_bytes(s.media_errors.load(Relaxed));
    log.temp_sensor[0] = COMPOSITE_TEMPERATURE;
    log
}

fn effects_log() -> CommandsEffectsLog {
    let mut log = CommandsEffectsLog::new_zeroed();
    let supported = CommandEffects::new().with_csupp(true);
    for op in [
        AdminOpcode::DELETE_IO_SQ,
        AdminOpcode::CREATE_IO_SQ,
        AdminOpcode::GET_LOG_PAGE,
        AdminOpcode::DELETE_IO_CQ,
        AdminOpcode::CREATE_IO_CQ,
        AdminOpcode::IDENTIFY,
        AdminOpcode::ABORT,
        AdminOpcode::SET_FEATURES,
        AdminOpcode::GET_FEATURES,
        AdminOpcode::ASYNC_EVENT_REQUEST,
        AdminOpcode::KEEP_ALIVE,
        AdminOpcode::DOORBELL_BUFFER_CONFIG,
    ] {
        log.acs[usize::from(op.0)] = supported;
    }
    for op in [NvmOpcode::FLUSH, NvmOpcode::READ, NvmOpcode::COMPARE] {
        log.iocs[usize::from(op.0)] = supported;
    }
    for op in [
        NvmOpcode::WRITE,
        NvmOpcode::WRITE_ZEROES,
        NvmOpcode::DATASET_MANAGEMENT,
    ] {
        log.iocs[usize::from(op.0)] = supported.with_lbcc(true);
    }
    log
}

/// Smallest size of vendor log page 0xC0 (the counters JSON, NUL padded).
pub const VENDOR_LOG_MIN_SIZE: usize = 64 * 1024;

fn get_log_page(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let cdw10 = GetLogPageCdw10::from_bits(cmd.cdw10);
    let cdw11 = GetLogPageCdw11::from_bits(cmd.cdw11);
    let numd = ((u64::from(cdw11.numdu()) << 16) | u64::from(cdw10.numdl())) + 1;
    let len = numd * 4;
    let offset = (u64::from(cmd.cdw13) << 32) | u64::from(cmd.cdw12);
    if offset & 3 != 0 || len > sh.max_transfer() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let lid = LogPageId(cdw10.lid());
    let page: Vec<u8> = match lid {
        LogPageId::ERROR_INFORMATION => vec![0; 64],
        LogPageId::SMART_HEALTH => {
            if cmd.nsid != 0 && cmd.nsid != 0xffff_ffff {
                // LPA bit 0 clear: no per-namespace SMART data.
                return Err(Status::INVALID_FIELD_IN_COMMAND.into());
            }
            smart_log(sh).as_bytes().to_vec()
        }
        LogPageId::FIRMWARE_SLOT => {
            let mut fw = FirmwareSlotLog::new_zeroed();
            fw.afi = 1;
            fw.frs[0] = padded(&sh.firmware);
            fw.as_bytes().to_vec()
        }
        LogPageId::CHANGED_NAMESPACE_LIST => vec![0; 4096],
        LogPageId::COMMANDS_SUPPORTED_AND_EFFECTS => effects_log().as_bytes().to_vec(),
        LogPageId::VENDOR_P2PLAB_COUNTERS => {
            // A fresh snapshot at offset 0; later chunks of the same fetch reuse it
            // (the counters move with every command, including these log reads).
            match (&st.vendor_log_snapshot, offset) {
                (Some(page), o) if o != 0 => page.clone(),
                _ => {
                    let src = sh.vendor_log.read().unwrap_or_else(|p| p.into_inner());
                    let mut page = src.as_ref().map(|f| f()).unwrap_or_default();
                    // The page has a fixed size (NUL padded, grown in 4 KiB steps only if
                    // the JSON is larger), so a host may fetch it in chunks at any offset
                    // inside it without knowing the JSON's length.
                    page.resize(
                        page.len().next_multiple_of(4096).max(VENDOR_LOG_MIN_SIZE),
                        0,
                    );
                    st.vendor_log_snapshot = Some(page.clone());
                    page
                }
            }
        }
        _ => return Err(Status::INVALID_LOG_PAGE.into()),
    };
    let start = usize::try_from(offset).map_err(|_| Status::INVALID_FIELD_IN_COMMAND)?;
    if start > page.len() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    send(sh, cmd, &page[start..], len)?;
    if !cdw10.rae() {
        st.events.log_read(lid);
    }
    Ok(())
}

fn timestamp_now(f: &Features) -> Timestamp {
    match f.timestamp {
        Some((ms, at)) => {
            let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            Timestamp::new()
                .with_timestamp(ms.wrapping_add(elapsed) & 0xffff_ffff_ffff)
                .with_origin(1)
        }
        None => Timestamp::new(),
    }
}

fn set_features(sh: &Shared, st: &mut State, cmd: &Command) -> Result<u32, NvmeError> {
    let cdw10 = FeaturesCdw10::from_bits(cmd.cdw10);
    if cdw10.sv() {
        return Err(Status::FEATURE_IDENTIFIER_NOT_SAVEABLE.into());
    }
    let v = cmd.cdw11;
    let f = &mut st.features;
    match FeatureId(cdw10.fid()) {
        FeatureId::ARBITRATION => f.arbitration = v,
        FeatureId::POWER_MANAGEMENT => {
            if PowerManagement::from_bits(v).ps() != 0 {
                return Err(Status::INVALID_FIELD_IN_COMMAND.into()); // NPSS = 0
            }
            f.power_management = v;
        }
        FeatureId::TEMPERATURE_THRESHOLD => {
            let t = TemperatureThreshold::from_bits(v);
            let sel = usize::from(t.tmpsel());
            let ty = usize::from(t.thsel());
            if ty > 1 || (sel > 8 && sel != 0xf) {
                return Err(Status::INVALID_FIELD_IN_COMMAND.into());
            }
            if sel == 0xf {
                for th in f.temperature_thresholds.iter_mut() {
                    th[ty] = t.tmpth();
                }
            } else {
                f.temperature_thresholds[sel][ty] = t.tmpth();
            }
        }
        FeatureId::ERROR_RECOVERY => f.error_recovery = v,
        FeatureId::VOLATILE_WRITE_CACHE => f.volatile_write_cache = v & VWC_WCE != 0,
        FeatureId::NUMBER_OF_QUEUES => {
            let req = NumberOfQueues::from_bits(v);
            if req.nsq() == 0xffff || req.ncq() == 0xffff {
                return Err(Status::INVALID_FIELD_IN_COMMAND.into());
            }
            let io_queues_exist = st.sqs.iter().skip(1).any(Option::is_some)
                || st.cqs.iter().skip(1).any(Option::is_some);
            if io_queues_exist {
                return Err(Status::COMMAND_SEQUENCE_ERROR.into());
            }
            let max = sh.max_io_queues - 1;
            f.queues = NumberOfQueues::new()
                .with_nsq(req.nsq().min(max))
                .with_ncq(req.ncq().min(max));
            return Ok(NumberOfQueues::new()
                .with_nsq(max)
                .with_ncq(max)
                .into_bits());
        }
        FeatureId::INTERRUPT_COALESCING => f.interrupt_coalescing = v & 0xffff,
        FeatureId::INTERRUPT_VECTOR_CONFIGURATION => {
            let ivc = InterruptVectorConfiguration::from_bits(v);
            if ivc.iv() >= sh.msix_vectors {
                return Err(Status::INVALID_FIELD_IN_COMMAND.into());
            }
            if ivc.cd() {
                f.coalescing_disabled.insert(ivc.iv());
            } else {
                f.coalescing_disabled.remove(&ivc.iv());
            }
        }
        FeatureId::WRITE_ATOMICITY_NORMAL => f.write_atomicity = v & 1,
        FeatureId::ASYNC_EVENT_CONFIGURATION => f.async_event_config = v,
        FeatureId::TIMESTAMP => {
            let data = receive(sh, cmd, 8)?;
            let raw = u64::from_le_bytes(data.try_into().unwrap_or_default());
            f.timestamp = Some((Timestamp::from_bits(raw).timestamp(), Instant::now()));
        }
        FeatureId::KEEP_ALIVE_TIMER => f.keep_alive = v,
        FeatureId::SOFTWARE_PROGRESS_MARKER => f.software_progress_marker = v & 0xff,
        _ => return Err(Status::INVALID_FIELD_IN_COMMAND.into()),
    }
    Ok(0)
}

fn get_features(sh: &Shared, st: &mut State, cmd: &Command) -> Result<u32, NvmeError> {
    let cdw10 = FeaturesCdw10::from_bits(cmd.cdw10);
    let fid = FeatureId(cdw10.fid());
    if cdw10.sel() == SEL_SUPPORTED_CAPABILITIES {
        return match fid {
            FeatureId::NUMBER_OF_QUEUES | FeatureId::TIMESTAMP => Ok(CAPABILITY_CHANGEABLE),
            _ if fid.name().is_some() => Ok(CAPABILITY_CHANGEABLE),
            _ => Err(Status::INVALID_FIELD_IN_COMMAND.into()),
        };
    }
    let defaults;
    let f = if cdw10.sel() == SEL_DEFAULT || cdw10.sel() > SEL_SUPPORTED_CAPABILITIES {
        defaults = Features::new(sh.max_io_queues);
        &defaults
    } else {
        // Current and saved (nothing is saveable: saved = current).
        &st.features
    };
    Ok(match fid {
        FeatureId::ARBITRATION => f.arbitration,
        FeatureId::POWER_MANAGEMENT => f.power_management,
        FeatureId::TEMPERATURE_THRESHOLD => {
            let t = TemperatureThreshold::from_bits(cmd.cdw11);
            let sel = usize::from(t.tmpsel()).min(8);
            let ty = usize::from(t.thsel()).min(1);
            TemperatureThreshold::from_bits(cmd.cdw11)
                .with_tmpth(f.temperature_thresholds[sel][ty])
                .into_bits()
        }
        FeatureId::ERROR_RECOVERY => f.error_recovery,
        FeatureId::VOLATILE_WRITE_CACHE => u32::from(f.volatile_write_cache),
        FeatureId::NUMBER_OF_QUEUES => f.queues.into_bits(),
        FeatureId::INTERRUPT_COALESCING => f.interrupt_coalescing,
        FeatureId::INTERRUPT_VECTOR_CONFIGURATION => {
            let iv = InterruptVectorConfiguration::from_bits(cmd.cdw11).iv();
            if iv >= sh.msix_vectors {
                return Err(Status::INVALID_FIELD_IN_COMMAND.into());
            }
            InterruptVectorConfiguration::new()
                .with_iv(iv)
                .with_cd(f.coalescing_disabled.contains(&iv))
                .into_bits()
        }
        FeatureId::WRITE_ATOMICITY_NORMAL => f.write_atomicity,
        FeatureId::ASYNC_EVENT_CONFIGURATION => f.async_event_config,
        FeatureId::TIMESTAMP => {
            let ts = timestamp_now(f).into_bits();
            send(sh, cmd, &ts.to_le_bytes(), 8)?;
            0
        }
        FeatureId::KEEP_ALIVE_TIMER => f.keep_alive,
        FeatureId::SOFTWARE_PROGRESS_MARKER => f.software_progress_marker,
        _ => return Err(Status::INVALID_FIELD_IN_COMMAND.into()),
    })
}

/// Checks a new queue's QID against the granted count and existing queues.
fn check_new_qid(qid: u16, granted: u16, exists: bool) -> Result<usize, NvmeError> {
    if qid == 0 || qid > granted.saturating_add(1) || exists {
        return Err(Status::INVALID_QUEUE_IDENTIFIER.into());
    }
    Ok(usize::from(qid))
}

fn check_queue_base(
    sh: &Shared,
    base: u64,
    entries: u32,
    entry_size: u64,
    in_cmb_ok: bool,
) -> Result<(), NvmeError> {
    if base & (PAGE_SIZE - 1) != 0 {
        return Err(Status::PRP_OFFSET_INVALID.into());
    }
    let bytes = u64::from(entries) * entry_size;
    if base.checked_add(bytes).is_none() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    // A queue lies wholly in the CMB or wholly outside it: one that straddles an edge
    // would have entries fetched from (or posted to) whatever lies beyond.
    let cmb = &sh.regs().cmb;
    if cmb.overlaps(base, bytes) && !(in_cmb_ok && cmb.contains(base, bytes)) {
        return Err(Status::INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER.into());
    }
    Ok(())
}

fn create_cq(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let cdw10 = CreateQueueCdw10::from_bits(cmd.cdw10);
    let cdw11 = CreateCqCdw11::from_bits(cmd.cdw11);
    let granted = st.features.queues.ncq();
    let qi = usize::from(cdw10.qid());
    let exists = st.cqs.get(qi).is_none_or(Option::is_some);
    let q = check_new_qid(cdw10.qid(), granted, exists)?;
    if cdw10.qsize() == 0 || cdw10.qsize() > sh.mqes {
        return Err(Status::INVALID_QUEUE_SIZE.into());
    }
    if !cdw11.pc() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into()); // CAP.CQR = 1
    }
    if cdw11.iv() >= sh.msix_vectors {
        return Err(Status::INVALID_INTERRUPT_VECTOR.into());
    }
    let entries = u32::from(cdw10.qsize()) + 1;
    // CMBSZ.CQS = 0: completion queues may not live in the CMB.
    check_queue_base(sh, cmd.dptr[0], entries, nvme_spec::CQE_SIZE as u64, false)?;
    let mut cq = CompletionQueue::new(cdw10.qid(), cmd.dptr[0], entries, cdw11.iv(), cdw11.ien());
    if let Some((dbs, eis)) = st.dbbuf {
        cq.shadow = Shadow::at(dbs, eis, cq_db_index(cdw10.qid()));
        if let Some(s) = cq.shadow {
            s.write_db(&*sh.dma, 0)?;
            s.write_ei(&*sh.dma, 0)?;
        }
    }
    st.cqs[q] = Some(cq);
    sh.doorbells.set_limit(cq_db_index(cdw10.qid()), entries);
    Ok(())
}

fn create_sq(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let cdw10 = CreateQueueCdw10::from_bits(cmd.cdw10);
    let cdw11 = CreateSqCdw11::from_bits(cmd.cdw11);
    let granted = st.features.queues.nsq();
    let qi = usize::from(cdw10.qid());
    let exists = st.sqs.get(qi).is_none_or(Option::is_some);
    let q = check_new_qid(cdw10.qid(), granted, exists)?;
    let cqid = usize::from(cdw11.cqid());
    if cqid == 0 || st.cqs.get(cqid).is_none_or(Option::is_none) {
        return Err(Status::COMPLETION_QUEUE_INVALID.into());
    }
    if cdw10.qsize() == 0 || cdw10.qsize() > sh.mqes {
        return Err(Status::INVALID_QUEUE_SIZE.into());
    }
    if !cdw11.pc() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let entries = u32::from(cdw10.qsize()) + 1;
    // CMBSZ.SQS = 1: submission queues may live in the CMB (Linux use_cmb_sqes).
    check_queue_base(sh, cmd.dptr[0], entries, nvme_spec::SQE_SIZE as u64, true)?;
    let mut sq = SubmissionQueue::new(cdw10.qid(), cmd.dptr[0], entries, cdw11.cqid());
    if let Some((dbs, eis)) = st.dbbuf {
        sq.shadow = Shadow::at(dbs, eis, sq_db_index(cdw10.qid()));
        if let Some(s) = sq.shadow {
            s.write_db(&*sh.dma, 0)?;
            s.write_ei(&*sh.dma, 0)?;
        }
    }
    if let Some(cq) = st.cqs[cqid].as_mut() {
        cq.sq_count += 1;
    }
    st.sqs[q] = Some(sq);
    sh.doorbells.set_limit(sq_db_index(cdw10.qid()), entries);
    Ok(())
}

fn delete_sq(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let qid = DeleteQueueCdw10::from_bits(cmd.cdw10).qid();
    let q = usize::from(qid);
    if qid == 0 || st.sqs.get(q).is_none_or(Option::is_none) {
        return Err(Status::INVALID_QUEUE_IDENTIFIER.into());
    }
    // Commands run to completion when fetched, so none is left to abort.
    if let Some(sq) = st.sqs[q].take() {
        if let Some(cq) = st.cqs[usize::from(sq.cqid)].as_mut() {
            cq.sq_count = cq.sq_count.saturating_sub(1);
        }
    }
    sh.doorbells.set_limit(sq_db_index(qid), 0);
    Ok(())
}

fn delete_cq(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let qid = DeleteQueueCdw10::from_bits(cmd.cdw10).qid();
    let q = usize::from(qid);
    let Some(Some(cq)) = st.cqs.get(q).filter(|_| qid != 0) else {
        return Err(Status::INVALID_QUEUE_IDENTIFIER.into());
    };
    if cq.sq_count != 0 {
        return Err(Status::INVALID_QUEUE_DELETION.into());
    }
    st.cqs[q] = None;
    st.irq_cqs.retain(|&(c, _)| c != qid);
    sh.doorbells.set_limit(cq_db_index(qid), 0);
    Ok(())
}

/// Doorbell Buffer Config (§5.8): PRP1 = shadow doorbell buffer, PRP2 = EventIdx
/// buffer, each one page, page aligned. Applies to the I/O queues (Linux never uses
/// shadow doorbells for the admin queue, which keeps its MMIO doorbells here).
fn doorbell_buffer_config(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), NvmeError> {
    let (dbs, eis) = (cmd.dptr[0], cmd.dptr[1]);
    if dbs == 0 || eis == 0 || (dbs | eis) & (PAGE_SIZE - 1) != 0 {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let dma: &dyn DmaSpace = &*sh.dma;
    for sq in st.sqs.iter_mut().skip(1).flatten() {
        let s =
            Shadow::at(dbs, eis, sq_db_index(sq.qid)).ok_or(Status::INVALID_FIELD_IN_COMMAND)?;
        s.write_db(dma, sq.tail)?;
        s.write_ei(dma, sq.tail)?;
        sq.shadow = Some(s);
    }
    for cq in st.cqs.iter_mut().skip(1).flatten() {
        let s =
            Shadow::at(dbs, eis, cq_db_index(cq.qid)).ok_or(Status::INVALID_FIELD_IN_COMMAND)?;
        s.write_db(dma, cq.head)?;
        s.write_ei(dma, cq.head)?;
        cq.shadow = Some(s);
    }
    st.dbbuf = Some((dbs, eis));
    Ok(())
}
