//! Checksummed framing for metadata blocks (labels, journal records, checkpoints).
//!
//! Layout: `magic[4] | kind u8 | version u8 | reserved[2] | body_len u64 LE | blake3(body)[32] | body`.
//! Decoding verifies every field; a torn, truncated, misdirected or rotted block never
//! decodes. Fragments have their own header (`fragment.rs`).

use serde::{de::DeserializeOwned, Serialize};

const MAGIC: [u8; 4] = *b"DFSM";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 32;

/// Which structure a frame carries; a frame of one kind never decodes as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Label = 1,
    JournalRecord = 2,
    Checkpoint = 3,
}

/// Why a frame did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("block too short ({0} bytes)")]
    Truncated(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unexpected kind {found}, wanted {wanted}")]
    WrongKind { found: u8, wanted: u8 },
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("length field {declared} does not match {actual} body bytes")]
    Length { declared: u64, actual: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("body does not decode: {0}")]
    Body(String),
}

/// Encodes `value` as a frame of `kind`, returning the block bytes and the body's hash.
pub fn encode<T: Serialize>(kind: FrameKind, value: &T) -> (Vec<u8>, [u8; 32]) {
    // postcard only fails on writer errors or unsupported types; a Vec writer and our
    // plain data types have neither.
    let body = match postcard::to_stdvec(value) {
        Ok(body) => body,
        Err(e) => panic!("postcard cannot encode engine metadata: {e}"),
    };
    let hash = *blake3::hash(&body).as_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.push(VERSION);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(&body);
    (out, hash)
}

/// Verifies and decodes a frame of `kind`, returning the value and its body hash.
pub fn decode<T: DeserializeOwned>(kind: FrameKind, block: &[u8]) -> Result<(T, [u8; 32]), FrameError> {
    if block.len() < HEADER_LEN {
        return Err(FrameError::Truncated(block.len()));
    }
    let (header, body) = block.split_at(HEADER_LEN);
    if header[0..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != kind as u8 {
        return Err(FrameError::WrongKind { found: header[4], wanted: kind as u8 });
    }
    if header[5] != VERSION || header[6..8] != [0, 0] {
        return Err(FrameError::Version(header[5]));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[8..16]);
    let declared = u64::from_le_bytes(len_bytes);
    if declared != body.len() as u64 {
        return Err(FrameError::Length { declared, actual: body.len() });
    }
    let hash = *blake3::hash(body).as_bytes();
    if header[16..48] != hash {
        return Err(FrameError::Checksum);
    }
    let value = postcard::from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))?;
    Ok((value, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (block, _) = encode(FrameKind::JournalRecord, &(7u64, "hello".to_string()));
        assert!(decode::<(u64, String)>(FrameKind::JournalRecord, &block).is_ok());
        for byte in 0..block.len() {
            for bit in 0..8 {
                let mut bad = block.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode::<(u64, String)>(FrameKind::JournalRecord, &bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let (block, _) = encode(FrameKind::Checkpoint, &vec![1u32, 2, 3]);
        for len in 0..block.len() {
            assert!(decode::<Vec<u32>>(FrameKind::Checkpoint, &block[..len]).is_err());
        }
    }

    #[test]
    fn a_frame_of_another_kind_is_rejected() {
        let (block, _) = encode(FrameKind::Label, &1u8);
        assert!(matches!(decode::<u8>(FrameKind::Checkpoint, &block), Err(FrameError::WrongKind { .. })));
    }
}
