//! p2plab-pci (skeleton)
