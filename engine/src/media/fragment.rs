//! The on-disk format of one fragment block.
//!
//! Layout: `magic "DFSF" | version u8 | index u8 | reserved[2] | extent_id u64 LE |
//! payload_len u32 LE | hash[32] | payload`.
//!
//! The version says what `hash` is. Version 1: the BLAKE3 hash of the payload. Version 2
//! (metadata format 12 on): the BLAKE3 *chaining value* of the payload as the subtree at
//! input offset `index × payload_len` of its extent — written for the data fragments of
//! an erasure extent whose data shards are whole BLAKE3 subtrees (`subtree_layout`: a
//! power-of-two count of power-of-two shards, the extent exactly filling them, as a
//! full 1 MiB extent under `erasure:4+2` or `erasure:8+3`). Their chaining values merge
//! into the extent's own BLAKE3 (`merge_root`), so a writer hashes each data byte once
//! for both, where version 1 cost the extent's hash and then each shard's again.
//!
//! Contract: `verify` accepts a block only when it is exactly the fragment the caller
//! expects — right extent, right index, right length, payload hash holds (of either
//! version). So bit rot, torn writes and misdirected writes (a valid fragment stored
//! under another name) are all reported as corruption, never returned as data.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::media::device::ExtentId;

const MAGIC: [u8; 4] = *b"DFSF";
/// `hash` is the payload's BLAKE3.
const VERSION_ROOT: u8 = 1;
/// `hash` is the payload's BLAKE3 chaining value at offset `index × payload_len`.
const VERSION_SUBTREE: u8 = 2;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 4 + 32;

/// Builds the block for fragment `index` of `extent`.
pub fn seal(extent: ExtentId, index: u8, payload: &[u8]) -> Vec<u8> {
    seal_hashed(extent, index, payload, blake3::hash(payload).as_bytes())
}

/// `seal` for a caller that already holds `payload`'s BLAKE3 — a replica's payload is
/// the whole extent, whose hash the writer computed once for the record.
pub fn seal_hashed(extent: ExtentId, index: u8, payload: &[u8], hash: &[u8; 32]) -> Vec<u8> {
    let mut block = Vec::with_capacity(HEADER_LEN + payload.len());
    block.extend_from_slice(&header(extent, index, payload, hash));
    block.extend_from_slice(payload);
    block
}

/// The header that `seal_hashed` puts before `payload`, for a writer that hands the two
/// to the device apart (`BlockDevice::write_parts`) rather than copying the payload
/// into a block first.
pub fn header(extent: ExtentId, index: u8, payload: &[u8], hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    debug_assert_eq!(blake3::hash(payload).as_bytes(), hash, "a fragment sealed with another payload's hash");
    header_of(VERSION_ROOT, extent, index, payload, hash)
}

/// The header of data fragment `index` of `extent` whose payload is a whole BLAKE3
/// subtree of the extent (`subtree_layout`), carrying `chaining_value`, the payload's
/// `subtree_chaining_value` at offset `index × payload.len()` (version 2).
pub fn header_subtree(extent: ExtentId, index: u8, payload: &[u8], chaining_value: &[u8; 32]) -> [u8; HEADER_LEN] {
    assert!(
        subtree_payload(index, payload.len()).is_some(),
        "fragment {index} of {} bytes is no subtree",
        payload.len()
    );
    header_of(VERSION_SUBTREE, extent, index, payload, chaining_value)
}

fn header_of(version: u8, extent: ExtentId, index: u8, payload: &[u8], hash: &[u8; 32]) -> [u8; HEADER_LEN] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert_eq!(len as usize, payload.len(), "fragment larger than 4 GiB");
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = version;
    header[5] = index;
    header[8..16].copy_from_slice(&extent.0.to_le_bytes());
    header[16..20].copy_from_slice(&len.to_le_bytes());
    header[20..].copy_from_slice(hash);
    header
}

/// Why a fragment block was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment block truncated")]
    Truncated,
    #[error("fragment header corrupt")]
    BadHeader,
    #[error("fragment belongs to extent {found_extent} index {found_index} (misdirected write)")]
    Misdirected { found_extent: ExtentId, found_index: u8 },
    #[error("fragment length {found} differs from the expected {expected}")]
    Length { found: usize, expected: usize },
    #[error("fragment payload checksum mismatch")]
    Checksum,
}

/// Checks `block` is fragment `index` of `extent` with `expected_len` payload bytes, and
/// returns the payload.
pub fn verify(block: &[u8], extent: ExtentId, index: u8, expected_len: usize) -> Result<&[u8], FragmentError> {
    let payload = payload_unchecked(block, extent, index, expected_len)?;
    let hash = match block[4] {
        VERSION_SUBTREE => {
            let offset = subtree_payload(index, payload.len()).ok_or(FragmentError::BadHeader)?;
            subtree_chaining_value(payload, offset)
        }
        _ => *blake3::hash(payload).as_bytes(),
    };
    if hash[..] != block[20..52] {
        return Err(FragmentError::Checksum);
    }
    Ok(payload)
}

/// Whether an extent of `len` bytes cut into `data_shards` data shards of `shard_len`
/// bytes each has whole BLAKE3 subtrees for data shards: at least two of them, a power
/// of two, each a power of two of at least a BLAKE3 chunk (1 KiB), filled exactly by the
/// extent. Then shard `i`'s chaining value at offset `i × shard_len` is what its
/// version-2 fragment carries, and `merge_root` of them all is the extent's BLAKE3.
pub fn subtree_layout(len: usize, data_shards: usize, shard_len: usize) -> bool {
    data_shards >= 2
        && data_shards.is_power_of_two()
        && shard_len >= blake3::CHUNK_LEN
        && shard_len.is_power_of_two()
        && data_shards.checked_mul(shard_len) == Some(len)
}

/// The input offset of data fragment `index` of `len` bytes when it can be a whole
/// subtree (`len` a power of two of at least a chunk; offsets `index × len` are then
/// aligned to it); `None` when it cannot.
fn subtree_payload(index: u8, len: usize) -> Option<u64> {
    (len >= blake3::CHUNK_LEN && len.is_power_of_two()).then(|| u64::from(index) * len as u64)
}

/// The BLAKE3 chaining value of `payload` as the subtree at input `offset` of a larger
/// input (`offset` a multiple of `payload.len()`, a power of two of at least a chunk).
pub fn subtree_chaining_value(payload: &[u8], offset: u64) -> [u8; 32] {
    debug_assert!(payload.len() >= blake3::CHUNK_LEN && payload.len().is_power_of_two());
    debug_assert_eq!(offset % payload.len() as u64, 0, "a subtree at an unaligned offset");
    blake3::Hasher::new().set_input_offset(offset).update(payload).finalize_non_root()
}

/// The BLAKE3 of an input from the chaining values of its consecutive equal subtrees, in
/// order (a power of two of them, at least two): merged pairwise up the tree, the last
/// merge as the root.
pub fn merge_root(chaining_values: &[[u8; 32]]) -> [u8; 32] {
    let count = chaining_values.len();
    assert!(count >= 2 && count.is_power_of_two(), "{count} subtrees do not make a tree");
    let mut level = chaining_values.to_vec();
    while level.len() > 2 {
        level = level.chunks_exact(2).map(|pair| merge_subtrees_non_root(&pair[0], &pair[1], Mode::Hash)).collect();
    }
    *merge_subtrees_root(&level[0], &level[1], Mode::Hash).as_bytes()
}

/// `verify` without the payload checksum: for a caller that checks the payload by
/// other means (the extent's own BLAKE3 over every data shard) and falls back to
/// `verify` when that fails.
pub fn payload_unchecked(
    block: &[u8],
    extent: ExtentId,
    index: u8,
    expected_len: usize,
) -> Result<&[u8], FragmentError> {
    if block.len() < HEADER_LEN {
        return Err(FragmentError::Truncated);
    }
    if block[0..4] != MAGIC || !matches!(block[4], VERSION_ROOT | VERSION_SUBTREE) {
        return Err(FragmentError::BadHeader);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&block[8..16]);
    let found_extent = ExtentId(u64::from_le_bytes(id));
    let found_index = block[5];
    if found_extent != extent || found_index != index {
        return Err(FragmentError::Misdirected { found_extent, found_index });
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&block[16..20]);
    let declared = u32::from_le_bytes(len) as usize;
    let payload = &block[HEADER_LEN..];
    if declared != expected_len || payload.len() != expected_len {
        return Err(FragmentError::Length { found: payload.len(), expected: expected_len });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_fragment_verifies_and_any_flip_does_not() {
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let block = seal(ExtentId(9), 3, &payload);
        assert_eq!(verify(&block, ExtentId(9), 3, 300).unwrap(), &payload[..]);
        for byte in 0..block.len() {
            let mut bad = block.clone();
            bad[byte] ^= 0x10;
            if (6..8).contains(&byte) {
                continue; // reserved bytes carry no meaning
            }
            assert!(verify(&bad, ExtentId(9), 3, 300).is_err(), "byte {byte}");
        }
    }

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut out = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut out);
        out
    }

    #[test]
    fn merged_subtree_chaining_values_are_the_extents_blake3() {
        for (shards, shard_len) in [(2, 512 << 10), (4, 256 << 10), (8, 128 << 10), (4, 1024), (16, 2048)] {
            let data = bytes(shards * shard_len, shard_len as u64 + shards as u64);
            assert!(subtree_layout(data.len(), shards, shard_len));
            let cvs: Vec<[u8; 32]> = data
                .chunks_exact(shard_len)
                .enumerate()
                .map(|(i, shard)| subtree_chaining_value(shard, (i * shard_len) as u64))
                .collect();
            assert_eq!(merge_root(&cvs), *blake3::hash(&data).as_bytes(), "{shards} × {shard_len}");
            let mut flipped = data.clone();
            flipped[shard_len + 5] ^= 1;
            let cv1 = subtree_chaining_value(&flipped[shard_len..2 * shard_len], shard_len as u64);
            assert_ne!(cv1, cvs[1], "a flipped byte changes its shard's chaining value");
        }
    }

    #[test]
    fn only_power_of_two_layouts_filled_exactly_are_subtrees() {
        assert!(subtree_layout(1 << 20, 4, 256 << 10));
        assert!(subtree_layout(1 << 20, 8, 128 << 10));
        assert!(!subtree_layout(1 << 20, 3, 349_526), "three data shards");
        assert!(!subtree_layout(1 << 20, 1, 1 << 20), "one data shard is the extent itself");
        assert!(!subtree_layout(1000, 4, 250), "shards under a BLAKE3 chunk");
        assert!(!subtree_layout(3 << 18, 4, 196_608), "shards not a power of two");
        assert!(!subtree_layout((1 << 20) - 10, 4, 256 << 10), "a short last shard");
    }

    #[test]
    fn a_subtree_fragment_verifies_and_any_flip_does_not() {
        let data = bytes(4 * 1024, 7);
        let payload = &data[2048..3072];
        let cv = subtree_chaining_value(payload, 2048);
        let block = [&header_subtree(ExtentId(9), 2, payload, &cv)[..], payload].concat();
        assert_eq!(verify(&block, ExtentId(9), 2, 1024).unwrap(), payload);
        for byte in 0..block.len() {
            if (6..8).contains(&byte) {
                continue;
            }
            let mut bad = block.clone();
            bad[byte] ^= 0x10;
            assert!(verify(&bad, ExtentId(9), 2, 1024).is_err(), "byte {byte}");
        }
        let mut as_root = block.clone();
        as_root[4] = VERSION_ROOT;
        assert_eq!(verify(&as_root, ExtentId(9), 2, 1024), Err(FragmentError::Checksum), "read as a root hash");
        let root = seal(ExtentId(9), 2, payload);
        let mut as_subtree = root.clone();
        as_subtree[4] = VERSION_SUBTREE;
        assert_eq!(verify(&as_subtree, ExtentId(9), 2, 1024), Err(FragmentError::Checksum), "read as a subtree");
        assert_eq!(verify(&root, ExtentId(9), 2, 1024).unwrap(), payload, "version 1 still verifies");
    }

    #[test]
    fn a_fragment_under_the_wrong_name_is_misdirected() {
        let block = seal(ExtentId(9), 3, b"abcd");
        assert!(matches!(verify(&block, ExtentId(9), 4, 4), Err(FragmentError::Misdirected { .. })));
        assert!(matches!(verify(&block, ExtentId(8), 3, 4), Err(FragmentError::Misdirected { .. })));
    }
}
