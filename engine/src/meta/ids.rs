//! The small ids the metadata names things by: disks, inodes, and the chunk slots of a
//! file where extents sit. Plain values with a total order (every map of the state is
//! ordered by them); nothing here depends on the state itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A disk's id within its pool; small and stable, unlike its uuid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DiskId(pub u32);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}", self.0)
    }
}

/// An inode number. `ROOT` is the root directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);
}

/// A chunk of a file: where an extent sits. Temperature belongs to the slot, not to the
/// extent, so it survives the copy-on-write of an overwrite or a re-encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkSlot {
    pub ino: Ino,
    /// Chunk index: the extent covers bytes `index * EXTENT_BYTES_MAX ..`.
    pub index: u64,
}

/// How an extent is named to people and programs: by the file chunk it serves,
/// `INO:INDEX` in decimal (inode 12, bytes from 3 MiB: `12:3`). Unlike the extent's
/// internal id, which every re-encode, rebuild or overwrite replaces, it stays the same
/// for as long as the file holds that chunk.
impl fmt::Display for ChunkSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ino.0, self.index)
    }
}

impl std::str::FromStr for ChunkSlot {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = text.split_once(':').and_then(|(ino, index)| Some((ino.parse().ok()?, index.parse().ok()?)));
        match parsed {
            Some((ino, index)) => Ok(ChunkSlot { ino: Ino(ino), index }),
            None => Err(format!(
                "'{text}' is not an extent: extents are named INO:INDEX (the file's inode and the chunk's \
                 index), as `dfs list-extents` shows"
            )),
        }
    }
}
