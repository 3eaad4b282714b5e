//! p2plab-gpu (skeleton)
