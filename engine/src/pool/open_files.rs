//! Open files: handles and each file's write buffer, as the pool holds them; what a
//! read, write, flush or close does with them is `crate::data::files`.

use std::collections::BTreeMap;

use crate::base::clock::WallTime;
use crate::meta::state::Ino;

/// A file handle returned by `Pool::open_file`.
pub type FileHandle = u64;

/// One open descriptor of a file.
pub(crate) struct Handle {
    pub(crate) ino: Ino,
    /// Whether this handle wrote: its close then makes the file's buffered data durable.
    pub(crate) wrote: bool,
}

/// Every open file and handle of the pool.
#[derive(Default)]
pub(crate) struct OpenFiles {
    pub(crate) handles: BTreeMap<FileHandle, Handle>,
    pub(crate) files: BTreeMap<Ino, OpenFile>,
    pub(crate) next_handle: FileHandle,
}

/// One open file: its handles and its buffered, not yet committed writes.
pub(crate) struct OpenFile {
    pub(crate) handles: u32,
    /// Buffered chunks, by index: each the chunk's whole current contents (an empty one
    /// reads as zeros throughout: a punched chunk).
    pub(crate) dirty: BTreeMap<u64, Vec<u8>>,
    pub(crate) dirty_bytes: usize,
    /// The file's size including buffered writes.
    pub(crate) size: u64,
    /// Set when the buffered state differs from the committed inode.
    pub(crate) mtime: Option<WallTime>,
    /// Where reads through any handle have reached: a read starting near it is sequential.
    pub(crate) read_end: u64,
}

impl OpenFiles {
    pub(crate) fn get(&self, ino: Ino) -> Option<&OpenFile> {
        self.files.get(&ino)
    }

    pub(crate) fn files_mut(&mut self, ino: Ino) -> Option<&mut OpenFile> {
        self.files.get_mut(&ino)
    }

    /// Whether any handle holds `ino` open.
    pub(crate) fn is_open(&self, ino: Ino) -> bool {
        self.files.get(&ino).is_some_and(|f| f.handles > 0)
    }
}
