//! vfio-user-proto (skeleton)
