//! File seals (`fcntl(F_ADD_SEALS)`): keeping a shared memfd's size fixed, so that no
//! mapping of it can fault because another process truncated it.
//!
//! A `MAP_SHARED` mapping of a regular file raises SIGBUS on access to pages past the
//! file's end, and the signal kills the whole lab (every device of it). A client that
//! shares guest RAM (DMA_MAP with an fd) or receives a BAR's memfd (REGION_INFO) holds
//! the file and may `ftruncate` it. `F_SEAL_SHRINK` makes that impossible for everyone,
//! the file's creator included; a file that cannot be sealed needs its size checked
//! before each access instead ([`MmapRegion::new_size_checked`](crate::MmapRegion::new_size_checked)).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Seals that fix a memfd's size for good: it can neither shrink nor grow, and nobody
/// can add further seals (such as a write seal, which would stop our own writes).
pub const SIZE_SEALS: u32 = (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL) as u32;

/// The seals set on `file` (`F_GET_SEALS`); 0 for a file that does not support sealing.
pub fn seals(file: &File) -> std::io::Result<u32> {
    // SAFETY: fcntl on a valid open fd with an integer command and no pointer argument.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a shmem or hugetlbfs file (e.g. a file on disk).
        return match e.raw_os_error() {
            Some(libc::EINVAL) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(r as u32)
}

fn add_seals(file: &File, seals: u32) -> std::io::Result<()> {
    let seals = libc::c_int::try_from(seals)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: fcntl on a valid open fd with integer arguments only.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make sure `file` can never shrink: `true` if it carries `F_SEAL_SHRINK` (already, or
/// added now), `false` if it cannot be sealed (not a memfd, a memfd created without
/// `MFD_ALLOW_SEALING`, or one whose seals are already sealed with `F_SEAL_SEAL`).
///
/// The seal stays on the file for its whole life (it is the file's, not this fd's):
/// whoever created it can no longer shrink it either.
pub fn seal_against_shrink(file: &File) -> std::io::Result<bool> {
    let shrink = libc::F_SEAL_SHRINK as u32;
    if seals(file)? & shrink != 0 {
        return Ok(true);
    }
    match add_seals(file, shrink) {
        Ok(()) => Ok(true),
        // EPERM: F_SEAL_SEAL is set (memfds created without MFD_ALLOW_SEALING start so);
        // EINVAL: the file does not support sealing.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Create a memfd of `size` bytes (sparse) whose size is sealed ([`SIZE_SEALS`]): for
/// memory the lab maps itself and also hands to a client (a BAR's memfd), so the client
/// cannot make the lab's own mapping fault by truncating it.
pub fn memfd_create_sealed(name: &str, size: u64) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: cname is a valid NUL-terminated string; flags are constants.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)?;
    add_seals(&file, SIZE_SEALS)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_keeps_its_size() {
        let f = memfd_create_sealed("t", 8192).unwrap();
        assert_eq!(seals(&f).unwrap() & SIZE_SEALS, SIZE_SEALS);
        let e = f.set_len(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(f.set_len(1 << 20).is_err(), "nor grow");
        assert_eq!(f.metadata().unwrap().len(), 8192);
        assert!(seal_against_shrink(&f).unwrap(), "already sealed");
    }

    #[test]
    fn a_sealable_memfd_is_sealed_against_shrinking() {
        let cname = c"sealable";
        // SAFETY: valid NUL-terminated name, constant flags.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: fd is fresh and owned by nobody else.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.set_len(4096).unwrap();
        assert!(seal_against_shrink(&f).unwrap());
        assert!(f.set_len(0).is_err());
        f.set_len(8192).expect("growing stays allowed");
    }

    #[test]
    fn files_that_cannot_be_sealed_say_so() {
        let plain = crate::memfd_create("plain", 4096).unwrap();
        assert!(
            !seal_against_shrink(&plain).unwrap(),
            "no MFD_ALLOW_SEALING"
        );
        let path = std::env::temp_dir().join(format!("p2plab-seal-{}", std::process::id()));
        let disk = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // On tmpfs the file is shmem and reports F_SEAL_SEAL; on disk, no seals at all.
        assert_eq!(seals(&disk).unwrap() & libc::F_SEAL_SHRINK as u32, 0);
        assert!(!seal_against_shrink(&disk).unwrap());
    }
}
