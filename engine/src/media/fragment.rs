//! The on-disk format of one fragment block.
//!
//! Layout: `magic "DFSF" | version u8 | index u8 | reserved[2] | extent_id u64 LE |
//! payload_len u32 LE | blake3(payload)[32] | payload`.
//!
//! Contract: `verify` accepts a block only when it is exactly the fragment the caller
//! expects — right extent, right index, right length, payload hash holds. So bit rot,
//! torn writes and misdirected writes (a valid fragment stored under another name) are
//! all reported as corruption, never returned as data.

use crate::media::device::ExtentId;

const MAGIC: [u8; 4] = *b"DFSF";
const VERSION: u8 = 1;
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
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    assert_eq!(len as usize, payload.len(), "fragment larger than 4 GiB");
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
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
    if blake3::hash(payload).as_bytes()[..] != block[20..52] {
        return Err(FragmentError::Checksum);
    }
    Ok(payload)
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
    if block[0..4] != MAGIC || block[4] != VERSION {
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

    #[test]
    fn a_fragment_under_the_wrong_name_is_misdirected() {
        let block = seal(ExtentId(9), 3, b"abcd");
        assert!(matches!(verify(&block, ExtentId(9), 4, 4), Err(FragmentError::Misdirected { .. })));
        assert!(matches!(verify(&block, ExtentId(8), 3, 4), Err(FragmentError::Misdirected { .. })));
    }
}
