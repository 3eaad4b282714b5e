//! What executing one command yields, shared by the admin and I/O workers, and how it
//! becomes the Status Field of a completion queue entry (spec §4.6).

use nvme_spec::{CqeStatus, Status};

use crate::error::NvmeError;

/// How a command that did not fail completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Post a CQE now with this Dword 0.
    Complete(u32),
    /// Completes later (an Asynchronous Event Request waits for an event).
    Deferred,
}

/// The result of executing a command: an [`Outcome`], or the status to complete with.
pub type CommandResult = Result<Outcome, NvmeError>;

/// A CQE Status Field (phase filled in when posted). Errors set DNR: retrying a
/// command the model rejected gives the same answer.
pub fn status_field(s: Status) -> CqeStatus {
    CqeStatus::new()
        .with_sc(s.sc())
        .with_sct(s.sct().0)
        .with_dnr(!s.is_success() && s != Status::DATA_TRANSFER_ERROR)
}
