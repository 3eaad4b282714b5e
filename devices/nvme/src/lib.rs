//! p2plab-nvme (skeleton)
