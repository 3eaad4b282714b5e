//! nvme-spec (skeleton)
