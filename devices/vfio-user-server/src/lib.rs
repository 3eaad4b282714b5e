//! vfio-user-server (skeleton)
