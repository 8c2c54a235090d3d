//! Mounting through the kernel itself, as root: `/dev/fuse` and `mount(2)` with the type
//! `fuse.dynamicfs` and the pool as the source, so `mount`, `findmnt` and `df` show a
//! native-looking filesystem; remounting read-only or read-write; and taking a dead mount
//! (its daemon killed) out of the tree.
//!
//! The only unsafe code of the CLI lives here: each call passes C strings that outlive
//! it and checks the return value. Non-root users mount through `fusermount3` instead
//! (`mount.rs`), which gives the same type and source.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The filesystem type shown in the mount table.
pub const FS_TYPE: &str = "fuse.dynamicfs";

/// How a mount behaves, from `dfs mount` flags or an fstab line's options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub read_only: bool,
    /// Honour setuid bits (off by default, as for every FUSE mount).
    pub suid: bool,
    /// Honour device nodes (off by default, as for every FUSE mount).
    pub dev: bool,
    pub no_exec: bool,
    pub allow_other: bool,
}

impl MountFlags {
    fn bits(&self) -> libc::c_ulong {
        let mut flags = 0;
        if self.read_only {
            flags |= libc::MS_RDONLY;
        }
        if !self.suid {
            flags |= libc::MS_NOSUID;
        }
        if !self.dev {
            flags |= libc::MS_NODEV;
        }
        if self.no_exec {
            flags |= libc::MS_NOEXEC;
        }
        flags
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} holds a NUL byte", path.display())))
}

fn c_text(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "text holds a NUL byte"))
}

/// Whether this process may call `mount(2)` itself.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// Opens `/dev/fuse` and mounts it on `target` with `source` as the mount's source;
/// returns the device, on which the kernel's INIT request is already waiting.
pub fn mount_fuse(source: &Path, target: &Path, flags: &MountFlags) -> io::Result<OwnedFd> {
    let device = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let root_mode = std::fs::metadata(target)?.mode() & libc::S_IFMT;
    let device: OwnedFd = device.into();
    let fd = device.as_raw_fd();
    let mut data = format!("fd={fd},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions");
    if flags.allow_other {
        data.push_str(",allow_other");
    }
    let (source, target, fs_type, data) = (c_path(source)?, c_path(target)?, c_text(FS_TYPE)?, c_text(&data)?);
    // SAFETY: every pointer is a NUL-terminated string that lives until the call returns.
    #[allow(unsafe_code)]
    let result =
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fs_type.as_ptr(), flags.bits(), data.as_ptr().cast()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(device)
}

/// Remounts the mount at `target` read-only or read-write, keeping its other flags.
pub fn remount(target: &Path, read_only: bool) -> io::Result<()> {
    let target_c = c_path(target)?;
    let current = statvfs_flags(&target_c)?;
    let mut flags = libc::MS_REMOUNT;
    for (statvfs, mount) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if current & statvfs != 0 {
            flags |= mount;
        }
    }
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: the target is a NUL-terminated string that lives until the call returns;
    // null source, type and data are what a remount takes.
    #[allow(unsafe_code)]
    let result = unsafe { libc::mount(std::ptr::null(), target_c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn statvfs_flags(target: &CString) -> io::Result<libc::c_ulong> {
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: target is NUL-terminated and stat is a valid, writable statvfs.
    #[allow(unsafe_code)]
    let result = unsafe { libc::statvfs(target.as_ptr(), &mut stat) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag)
}

/// Unmounts `target`; with `lazy`, detaches it even while busy or dead (`umount -l`).
pub fn unmount(target: &Path, lazy: bool) -> io::Result<()> {
    let target = c_path(target)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: target is a NUL-terminated string that lives until the call returns.
    #[allow(unsafe_code)]
    let result = unsafe { libc::umount2(target.as_ptr(), flags) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_nosuid_and_nodev_like_every_fuse_mount() {
        let flags = MountFlags::default().bits();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NODEV);
        let all = MountFlags { read_only: true, suid: true, dev: true, no_exec: true, allow_other: true };
        assert_eq!(all.bits(), libc::MS_RDONLY | libc::MS_NOEXEC);
    }

    #[test]
    fn a_path_with_a_nul_byte_is_an_error_not_a_panic() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"a\0b"));
        assert_eq!(unmount(path, false).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(remount(path, true).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
