//! `ReadData`: the bytes a read answers with — a window of a cached extent, shared with
//! the cache (nothing copied), or bytes assembled for this read.
//!
//! Contract: the bytes are the file's bytes at the read's offset when the read was
//! served, whatever happens to the cache afterwards (a shared extent is immutable and
//! kept alive by its reference count: `bytes::Bytes`).

use std::ops::Deref;

use bytes::Bytes;

/// What a read returns. Derefs to the bytes.
#[derive(Debug, Clone)]
pub enum ReadData {
    /// `extent[start..end]`: a read inside one stored chunk with nothing laid over it.
    Shared {
        /// The decoded extent, as cached.
        extent: Bytes,
        /// Where the window starts in it.
        start: usize,
        /// Where the window ends in it.
        end: usize,
    },
    /// Bytes assembled for this read (several chunks, buffered data, patches, layers, holes).
    Owned(Vec<u8>),
}

impl ReadData {
    /// A window of `extent`; the window lies inside it.
    pub fn shared(extent: Bytes, start: usize, end: usize) -> ReadData {
        assert!(start <= end && end <= extent.len(), "window {start}..{end} of {} bytes", extent.len());
        ReadData::Shared { extent, start, end }
    }

    /// The bytes, as a vector of their own.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ReadData::Shared { extent, start, end } => extent[start..end].to_vec(),
            ReadData::Owned(bytes) => bytes,
        }
    }
}

impl Deref for ReadData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Shared { extent, start, end } => &extent[*start..*end],
            ReadData::Owned(bytes) => bytes,
        }
    }
}
