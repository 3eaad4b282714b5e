//! p2plab-fabric (skeleton)
