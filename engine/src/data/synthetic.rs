//! Metadata-only extents, for measuring metadata at scale (`benches/metadata_scale`):
//! extent records committed through the engine's own transactions, exactly as a write
//! commits them, whose fragments are placed on the pool's disks but never written. A pool
//! of 10⁷ extents then costs what its metadata costs, not 10 TB of disk.
//!
//! Behind the `synthetic` feature, which only the engine's benchmarks enable: a synthetic
//! extent has no fragments to read, so it reads as lost. Never in the `dfs` binary.

use std::collections::{BTreeMap, BTreeSet};
use thin_vec::ThinVec;

use crate::base::error::{Error, Result};
use crate::media::codec::{shard_len, CodecId};
use crate::media::device::ExtentId;
use crate::media::fragment;
use crate::meta::state::{ExtentRecord, Ino, InodeKind, Op, Transaction, EXTENT_BYTES_MAX};
use crate::pool::Pool;

impl Pool {
    /// Gives the empty regular file `ino` `chunks` full extents under its policy, placed
    /// like a write's but with no fragment written, and its size to match — one
    /// transaction, durable at the next barrier.
    pub fn attach_synthetic_extents(&mut self, ino: Ino, chunks: u64) -> Result<()> {
        let inode = self.state.inodes.get(&ino).cloned().ok_or_else(|| Error::NotFound(format!("inode {}", ino.0)))?;
        if inode.kind != InodeKind::File {
            return Err(Error::InvalidArgument(format!("inode {} is not a regular file", ino.0)));
        }
        if inode.size != 0 || self.state.file_extents.get(&ino).is_some_and(|m| !m.is_empty()) {
            return Err(Error::InvalidArgument(format!("inode {} is not empty", ino.0)));
        }
        let policy = self.state.effective_policy(ino);
        let codec = CodecId::for_policy(policy);
        let block_bytes = (fragment::HEADER_LEN + shard_len(policy, EXTENT_BYTES_MAX as usize)) as u64;
        let mut ops = Vec::with_capacity(chunks as usize + 1);
        for index in 0..chunks {
            let (fragments, _) = self.place_extent(policy, block_bytes, &BTreeSet::new(), &BTreeMap::new())?;
            let id = ExtentId(self.next_extent);
            self.next_extent += 1;
            let record = ExtentRecord {
                id,
                len: EXTENT_BYTES_MAX as u32,
                hash: *blake3::hash(&id.0.to_le_bytes()).as_bytes(),
                policy,
                codec,
                fragments: fragments.into(),
                inline: None,
                history: ThinVec::new(),
            };
            ops.push(Op::SetExtent { ino, index, extent: Some(record) });
        }
        let mut grown = inode;
        grown.size = chunks * EXTENT_BYTES_MAX;
        ops.push(Op::PutInode(grown));
        let freed = self.commit(Transaction { ops })?;
        assert!(freed.is_empty(), "an empty file's synthetic extents replaced something");
        Ok(())
    }
}
