//! Checksummed framing for metadata blocks (labels, journal records, checkpoints).
//!
//! Layout: `magic[4] | kind u8 | version u8 | reserved[2] | body_len u64 LE | blake3(body)[32] | body`.
//! Decoding verifies every field; a torn, truncated, misdirected or rotted block never
//! decodes. Fragments have their own header (`fragment.rs`).
//!
//! The version is the format of the body, per kind (`FrameKind::version`): a body is
//! only ever decoded as the structure of its own version. `decode` takes the current
//! version only; `open` verifies a frame of any version up to the current one and hands
//! the body to a caller that knows the older structures (`meta::v1`). A version newer
//! than this build's is refused by name (`FrameError::Version`).
//!
//! From version 2 on the checksum covers the kind and version bytes with the body
//! (`checksum`), so a rotten version byte never passes for another format; version 1
//! frames (and labels, still version 1) checksum the body alone.

use serde::{de::DeserializeOwned, Serialize};

const MAGIC: [u8; 4] = *b"DFSM";
const HEADER_LEN: usize = 4 + 1 + 1 + 2 + 8 + 32;

/// Which structure a frame carries; a frame of one kind never decodes as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Label = 1,
    JournalRecord = 2,
    Checkpoint = 3,
    /// A page of the paged metadata store (`meta::store`).
    StorePage = 4,
    /// A run's index in the paged metadata store.
    StoreIndex = 5,
    /// A root of the paged metadata store.
    StoreRoot = 6,
    /// An owner's claim on a shared device (`media::owner`).
    OwnerClaim = 7,
    /// A copy of the pool's configuration on a disk (`BlockName::PoolConfig`).
    PoolConfig = 8,
}

/// The metadata format this build writes: journal records and checkpoints.
/// 1: the first format. 2: special files (`rdev`), extended attributes and ACLs.
/// 3: disk reachability (offline disks, dated state changes, the write-intent map) and
/// the availability settings. 4: layers, small overwrites laid over a chunk's extent.
/// 5: the same structures, but a directory disk may keep journal records in its journal
/// log (`media::journal_log`), which a build of format 4 would not see: it must refuse
/// the pool by name rather than recover it without them. 6: a new layer drops the layers
/// it shadows (`Op::DropLayers`), whose fragments are then deleted: a build of format 5
/// would not read the op. 7: a classification pass journals only the verdicts a chunk's
/// temperature does not imply (`Op::ClassifyChanges`), which a build of format 6 would
/// not read. 8: the checkpoint is the paged metadata store (`meta::store`, blocks of its
/// own kinds), which a build of format 7 would not find; records are as in format 7.
/// 9: an extent's policy history folds its oldest changes into one entry
/// (`ChangeCause::Earlier`), a pass journals its verdicts in bounded records
/// (`Op::ClassifyMore`), and a store head names its format: a build of format 8 would
/// read none of them. 10: the record a process writes when it opens the pool names it and
/// its claim's epoch (`Op::OpenedBy`), which a build of format 9 would not read. 11: disks
/// on an object store may keep fragments in packs (`dfs-objectdisk`), where a build of
/// format 10 would find none of them; records and store are as in 10. 12: data fragments
/// whose shards are whole BLAKE3 subtrees of their extent carry the subtree's chaining
/// value (fragment version 2, `media::fragment`), which a build of format 11 would take
/// for rot in every one of them; records and store are as in 11.
pub const METADATA_FORMAT: u8 = 12;

/// The format of the paged metadata store's frames (`meta::store`). It starts at 2 so that
/// its checksums cover kind and version, as every frame's from version 2 on.
pub const STORE_FORMAT: u8 = 2;

impl FrameKind {
    /// The body format this build writes for frames of this kind.
    pub fn version(self) -> u8 {
        match self {
            FrameKind::Label | FrameKind::OwnerClaim | FrameKind::PoolConfig => 1,
            FrameKind::JournalRecord | FrameKind::Checkpoint => METADATA_FORMAT,
            FrameKind::StorePage | FrameKind::StoreIndex | FrameKind::StoreRoot => STORE_FORMAT,
        }
    }
}

/// A verified frame whose body has not been decoded yet.
pub struct Opened<'a> {
    /// The format of `body`.
    pub version: u8,
    pub body: &'a [u8],
    /// BLAKE3 of `body`.
    pub hash: [u8; 32],
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
    #[error(
        "format version {found}, but this build reads versions 1 to {supported}: it was written by a newer DynamicFS"
    )]
    Version { found: u8, supported: u8 },
    #[error("length field {declared} does not match {actual} body bytes")]
    Length { declared: u64, actual: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("body does not decode: {0}")]
    Body(String),
}

/// Encodes `value` as a frame of `kind`, returning the block bytes and the body's hash.
pub fn encode<T: Serialize>(kind: FrameKind, value: &T) -> (Vec<u8>, [u8; 32]) {
    // The body is encoded in place after room for the header: a checkpoint is the whole
    // state, and is not copied once more to join them.
    // postcard only fails on writer errors or unsupported types; a Vec writer and our
    // plain data types have neither.
    let mut out = match postcard::to_extend(value, vec![0u8; HEADER_LEN]) {
        Ok(out) => out,
        Err(e) => panic!("postcard cannot encode engine metadata: {e}"),
    };
    let body_len = (out.len() - HEADER_LEN) as u64;
    let hash = checksum(kind as u8, kind.version(), &out[HEADER_LEN..]);
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = kind as u8;
    out[5] = kind.version();
    out[8..16].copy_from_slice(&body_len.to_le_bytes());
    out[16..48].copy_from_slice(&hash);
    (out, hash)
}

/// Frames `body` as it is (a structure laid out by its owner, not encoded here) as a
/// frame of `kind`; returns the block and the body's hash.
pub fn encode_raw(kind: FrameKind, body: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    let hash = checksum(kind as u8, kind.version(), body);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind as u8, kind.version(), 0, 0]);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(body);
    (out, hash)
}

/// Verifies and decodes a frame of `kind` in the current format, returning the value
/// and its body hash. A frame of an older format is `FrameError::Version`; read it with
/// `open`.
pub fn decode<T: DeserializeOwned>(kind: FrameKind, block: &[u8]) -> Result<(T, [u8; 32]), FrameError> {
    let opened = open(kind, block)?;
    if opened.version != kind.version() {
        return Err(FrameError::Version { found: opened.version, supported: kind.version() });
    }
    Ok((decode_body(opened.body)?, opened.hash))
}

/// Decodes a verified body as `T` (the structure of the body's version).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))
}

/// Verifies a frame of `kind` of any version this build can read (1 to the current),
/// without decoding its body.
pub fn open(kind: FrameKind, block: &[u8]) -> Result<Opened<'_>, FrameError> {
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
    let version = header[5];
    if version == 0 || header[6..8] != [0, 0] {
        return Err(FrameError::Version { found: version, supported: kind.version() });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[8..16]);
    let declared = u64::from_le_bytes(len_bytes);
    if declared != body.len() as u64 {
        return Err(FrameError::Length { declared, actual: body.len() });
    }
    let hash = checksum(header[4], version, body);
    if header[16..48] != hash {
        return Err(FrameError::Checksum);
    }
    if version > kind.version() {
        // Verified under the rule every later format keeps: really a newer format.
        return Err(FrameError::Version { found: version, supported: kind.version() });
    }
    Ok(Opened { version, body, hash })
}

/// The checksum of a frame's body, which also chains journal records: BLAKE3 of the
/// body (version 1), or of kind, version and body (version 2 and later).
fn checksum(kind: u8, version: u8, body: &[u8]) -> [u8; 32] {
    if version <= 1 {
        return *blake3::hash(body).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[kind, version]);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// Encodes `value` as a frame of `kind` in format `version` (tests build frames of
/// older and newer formats with it).
pub fn encode_version<T: Serialize>(kind: FrameKind, version: u8, value: &T) -> Vec<u8> {
    let (mut block, _) = encode(kind, value);
    block[5] = version;
    let hash = checksum(kind as u8, version, &block[HEADER_LEN..]);
    block[16..48].copy_from_slice(&hash);
    block
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
    fn an_older_format_opens_but_does_not_decode_as_the_current_one() {
        let block = encode_version(FrameKind::Checkpoint, 1, &5u32);
        assert!(matches!(
            decode::<u32>(FrameKind::Checkpoint, &block),
            Err(FrameError::Version { found: 1, supported: METADATA_FORMAT })
        ));
        let opened = open(FrameKind::Checkpoint, &block).unwrap();
        assert_eq!(opened.version, 1);
        assert_eq!(decode_body::<u32>(opened.body).unwrap(), 5);
    }

    #[test]
    fn a_rotten_version_byte_is_corruption_not_another_format() {
        let (block, _) = encode(FrameKind::Checkpoint, &5u32);
        for version in [1, METADATA_FORMAT - 1, METADATA_FORMAT + 1, 66] {
            let mut bad = block.clone();
            bad[5] = version;
            assert_eq!(open(FrameKind::Checkpoint, &bad).err(), Some(FrameError::Checksum), "version {version}");
        }
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let block = encode_version(FrameKind::JournalRecord, METADATA_FORMAT + 1, &5u32);
        let error = open(FrameKind::JournalRecord, &block).err().unwrap();
        assert_eq!(error, FrameError::Version { found: METADATA_FORMAT + 1, supported: METADATA_FORMAT });
        assert!(error.to_string().contains("newer DynamicFS"), "{error}");
    }

    #[test]
    fn a_frame_of_another_kind_is_rejected() {
        let (block, _) = encode(FrameKind::Label, &1u8);
        assert!(matches!(decode::<u8>(FrameKind::Checkpoint, &block), Err(FrameError::WrongKind { .. })));
    }
}
