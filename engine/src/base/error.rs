//! The engine's error type: one enum for every operation, each variant with its errno
//! and a message a user can act on.

use crate::base::policy::Policy;

/// Result of an engine operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything an engine operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotDirectory(String),
    #[error("{0}: is a directory")]
    IsDirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("file name too long ({0} bytes; the limit is 255)")]
    NameTooLong(usize),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("policy {policy} needs {needed} distinct disks with room for a fragment, but only {available} have room")]
    Unplaceable { policy: Policy, needed: usize, available: usize },
    /// `extent` is its name, `INO:INDEX` (see `ChunkSlot`).
    #[error("extent {extent} (file offset {offset}) is lost: {detail}")]
    DataLost { extent: String, offset: u64, detail: String },
    #[error("I/O error: {0}")]
    Io(String),
    #[error("metadata cannot be recovered: {0}")]
    MetadataCorrupt(String),
    #[error("the pool has no disks yet; add one with `dfs add-disk`")]
    NoDisks,
    #[error("{0}")]
    PoolBusy(String),
    #[error("{0}")]
    NotAPool(String),
    #[error("bad file handle {0}")]
    BadHandle(u64),
    #[error("the pool is read-only: {0}")]
    ReadOnly(String),
    #[error("{0}: no such extended attribute")]
    NoAttribute(String),
    #[error("extended attribute name too long ({0} bytes; the limit is 255)")]
    AttributeNameTooLong(usize),
    #[error("{0}")]
    TooBig(String),
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("permission denied: {0}")]
    AccessDenied(String),
    #[error("{0}")]
    NoSuchOffset(String),
    #[error("too many links (a file has at most {0})")]
    TooManyLinks(u32),
    /// Too few disks reachable to store new data (below the write quorum).
    #[error("too few disks reachable: {0}")]
    Unavailable(String),
}

impl Error {
    /// The errno a POSIX caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::NotDirectory(_) => libc::ENOTDIR,
            Error::IsDirectory(_) => libc::EISDIR,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::NotPermitted(_) => libc::EPERM,
            // Too few disks for a policy is, to a writer, a lack of space to put the data.
            Error::NoSpace(_) | Error::Unplaceable { .. } | Error::NoDisks => libc::ENOSPC,
            // Lost data must surface as an I/O error, never as bytes.
            Error::DataLost { .. } | Error::Io(_) | Error::MetadataCorrupt(_) => libc::EIO,
            // Disks away is not a lack of space: the writer sees an I/O error.
            Error::Unavailable(_) => libc::EIO,
            Error::BadHandle(_) => libc::EBADF,
            Error::PoolBusy(_) => libc::EBUSY,
            Error::NotAPool(_) => libc::ENOENT,
            Error::ReadOnly(_) => libc::EROFS,
            Error::NoAttribute(_) => libc::ENODATA,
            // Linux answers ERANGE for an attribute name past XATTR_NAME_MAX.
            Error::AttributeNameTooLong(_) => libc::ERANGE,
            Error::TooBig(_) => libc::E2BIG,
            Error::NotSupported(_) => libc::EOPNOTSUPP,
            Error::AccessDenied(_) => libc::EACCES,
            // lseek(SEEK_DATA/SEEK_HOLE) at or past the end, or no data after the offset.
            Error::NoSuchOffset(_) => libc::ENXIO,
            Error::TooManyLinks(_) => libc::EMLINK,
        }
    }
}
