//! Codecs: turn one extent's bytes into fragments under a policy, and back.
//!
//! Two Reed–Solomon implementations exist and produce *different* parity bytes, so every
//! extent records the `CodecId` that wrote it and is always decoded by the same one.
//! New extents use `CodecId::DEFAULT_ERASURE` (see the README for the measurements behind
//! the choice). Replicas are plain copies.
//!
//! Shard layout for `erasure:K+M`: the extent is zero-padded to `K * shard_len` and cut
//! into K data shards; `shard_len` is even and at least 2 (a requirement of the SIMD codec).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use crate::base::policy::Policy;

/// Which algorithm produced an extent's fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CodecId {
    /// Full copies (`replicate:N`).
    Replica,
    /// `reed-solomon-erasure` 6.x, GF(2^8), pure Rust.
    RsErasureGf8,
    /// `reed-solomon-simd` 3.x, GF(2^16) FFT with runtime-detected SIMD.
    RsSimd,
    /// No fragments: the data is held in the extent record itself.
    Inline,
}

impl CodecId {
    /// The codec new erasure-coded extents are written with.
    pub const DEFAULT_ERASURE: CodecId = CodecId::RsSimd;

    /// The codec for new extents under `policy`.
    pub fn for_policy(policy: Policy) -> CodecId {
        match policy {
            Policy::Replicate { .. } => CodecId::Replica,
            Policy::Erasure { .. } => CodecId::DEFAULT_ERASURE,
        }
    }
}

/// A codec failure. Encoding cannot fail for valid policies; decoding fails when too few
/// fragments are given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("need {needed} fragments, have {available}")]
    TooFewFragments { needed: usize, available: usize },
    #[error("codec {codec:?} cannot serve policy {policy}")]
    Mismatch { codec: CodecId, policy: Policy },
    #[error("reed-solomon: {0}")]
    Library(String),
}

/// Length of each fragment of an extent of `len` bytes.
pub fn shard_len(policy: Policy, len: usize) -> usize {
    match policy {
        Policy::Replicate { .. } => len,
        Policy::Erasure { data, .. } => {
            let per = len.div_ceil(usize::from(data)).max(2);
            per + (per & 1)
        }
    }
}

/// Splits `data` into `policy.width()` fragments.
pub fn encode(codec: CodecId, policy: Policy, data: &[u8]) -> Result<Vec<Vec<u8>>, CodecError> {
    Ok(encode_shards(codec, policy, data)?.into_iter().map(Cow::into_owned).collect())
}

/// `encode`, borrowing from `data` what it can: the copies of a replica and the data
/// shards of an erasure code but the last (padded), so that the device's write of each
/// fragment (`BlockDevice::write_parts`, header and payload apart) is the only copy of
/// the data a write makes.
pub fn encode_shards(codec: CodecId, policy: Policy, data: &[u8]) -> Result<Vec<Cow<'_, [u8]>>, CodecError> {
    match (codec, policy) {
        (CodecId::Replica, Policy::Replicate { copies }) => Ok(vec![Cow::Borrowed(data); usize::from(copies)]),
        (CodecId::RsErasureGf8 | CodecId::RsSimd, Policy::Erasure { data: k, parity: m }) => {
            let (k, m) = (usize::from(k), usize::from(m));
            let len = shard_len(policy, data.len());
            let mut shards: Vec<Cow<'_, [u8]>> = (0..k)
                .map(|i| {
                    let start = (i * len).min(data.len());
                    let end = ((i + 1) * len).min(data.len());
                    if end - start == len {
                        Cow::Borrowed(&data[start..end])
                    } else {
                        let mut shard = data[start..end].to_vec();
                        shard.resize(len, 0);
                        Cow::Owned(shard)
                    }
                })
                .collect();
            let parity = parity_shards(codec, policy, &shards)?;
            shards.extend(parity.into_iter().map(Cow::Owned));
            assert_eq!(shards.len(), k + m);
            assert!(shards.iter().all(|s| s.len() == len));
            Ok(shards)
        }
        (codec, policy) => Err(CodecError::Mismatch { codec, policy }),
    }
}

thread_local! {
    /// Each thread's SIMD encoder, reset for every extent: a new one per extent would
    /// allocate and zero its working buffers each time (measured: a tenth of a store's
    /// CPU went to those pages).
    static SIMD_ENCODER: std::cell::RefCell<Option<reed_solomon_simd::ReedSolomonEncoder>> =
        const { std::cell::RefCell::new(None) };
}

/// The `m` parity shards of the `k` data `shards` of `len` bytes each, by `RsSimd`.
fn simd_parity(k: usize, m: usize, len: usize, shards: &[Cow<'_, [u8]>]) -> Result<Vec<Vec<u8>>, CodecError> {
    reused(
        &SIMD_ENCODER,
        || reed_solomon_simd::ReedSolomonEncoder::new(k, m, len),
        |encoder| encoder.reset(k, m, len),
        |encoder| {
            for shard in shards {
                encoder.add_original_shard(shard)?;
            }
            let parity: Vec<Vec<u8>> = encoder.encode()?.recovery_iter().map(<[u8]>::to_vec).collect();
            assert_eq!(parity.len(), m);
            Ok(parity)
        },
    )
}

/// Runs `work` on this thread's codec object in `cell`: made by `make` the first time,
/// `reset` every time after.
fn reused<T, R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    make: impl FnOnce() -> Result<T, reed_solomon_simd::Error>,
    reset: impl FnOnce(&mut T) -> Result<(), reed_solomon_simd::Error>,
    work: impl FnOnce(&mut T) -> Result<R, reed_solomon_simd::Error>,
) -> Result<R, CodecError> {
    let library = |e: reed_solomon_simd::Error| CodecError::Library(e.to_string());
    cell.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| CodecError::Library("codec re-entered".into()))?;
        let object = match slot.as_mut() {
            Some(object) => {
                reset(object).map_err(library)?;
                object
            }
            None => slot.insert(make().map_err(library)?),
        };
        work(object).map_err(library)
    })
}

thread_local! {
    /// Each thread's SIMD decoder, reset for every extent (as `SIMD_ENCODER`: measured, a
    /// new one per extent put a tenth of a rebuild's CPU in zeroing its buffers).
    static SIMD_DECODER: std::cell::RefCell<Option<reed_solomon_simd::ReedSolomonDecoder>> =
        const { std::cell::RefCell::new(None) };
}

/// The data shards missing from `fragments` (the first `k` data, then `m` parity, all
/// of one length), restored by `RsSimd`, by index.
fn simd_restore(
    k: usize,
    m: usize,
    fragments: &[Option<&[u8]>],
) -> Result<std::collections::BTreeMap<usize, Vec<u8>>, CodecError> {
    let len = fragments.iter().flatten().map(|f| f.len()).next().unwrap_or(0);
    reused(
        &SIMD_DECODER,
        || reed_solomon_simd::ReedSolomonDecoder::new(k, m, len),
        |decoder| decoder.reset(k, m, len),
        |decoder| {
            for (i, shard) in fragments.iter().enumerate() {
                match (shard, i.checked_sub(k)) {
                    (Some(shard), None) => decoder.add_original_shard(i, shard)?,
                    (Some(shard), Some(p)) => decoder.add_recovery_shard(p, shard)?,
                    (None, _) => {}
                }
            }
            Ok(decoder.decode()?.restored_original_iter().map(|(i, shard)| (i, shard.to_vec())).collect())
        },
    )
}

/// Rebuilds the extent's `len` bytes from whichever fragments are present
/// (`fragments[i]` is fragment `i`, or `None` when missing or corrupt).
pub fn decode(
    codec: CodecId,
    policy: Policy,
    len: usize,
    fragments: &[Option<Vec<u8>>],
) -> Result<Vec<u8>, CodecError> {
    let borrowed: Vec<Option<&[u8]>> = fragments.iter().map(Option::as_deref).collect();
    let shards = data_shards(codec, policy, &borrowed)?;
    let mut out = Vec::with_capacity(shards.iter().map(|shard| shard.len()).sum::<usize>().min(len));
    for shard in &shards {
        out.extend_from_slice(&shard[..shard.len().min(len - out.len())]);
    }
    Ok(out)
}

/// The extent's data shards (for a replica, its one copy), borrowed from `fragments`
/// where present and restored from the others where not: what a repair needs to check
/// the extent's hash and to write a lost fragment again, without joining the extent
/// into one buffer. The last shard keeps its padding; the caller trims to the extent's
/// length.
pub fn data_shards<'a>(
    codec: CodecId,
    policy: Policy,
    fragments: &[Option<&'a [u8]>],
) -> Result<Vec<Cow<'a, [u8]>>, CodecError> {
    assert_eq!(fragments.len(), policy.width());
    let available = fragments.iter().filter(|f| f.is_some()).count();
    if available < policy.needed() {
        return Err(CodecError::TooFewFragments { needed: policy.needed(), available });
    }
    match (codec, policy) {
        (CodecId::Replica, Policy::Replicate { .. }) => {
            Ok(fragments.iter().flatten().take(1).map(|copy| Cow::Borrowed(*copy)).collect())
        }
        (CodecId::RsSimd | CodecId::RsErasureGf8, Policy::Erasure { data, .. })
            if fragments[..usize::from(data)].iter().all(Option::is_some) =>
        {
            Ok(fragments[..usize::from(data)].iter().flatten().map(|shard| Cow::Borrowed(*shard)).collect())
        }
        (CodecId::RsSimd, Policy::Erasure { data: k, parity: m }) => {
            let (k, m) = (usize::from(k), usize::from(m));
            let mut restored = simd_restore(k, m, fragments)?;
            (0..k)
                .map(|i| match fragments[i] {
                    Some(shard) => Ok(Cow::Borrowed(shard)),
                    None => restored
                        .remove(&i)
                        .map(Cow::Owned)
                        .ok_or_else(|| CodecError::Library(format!("shard {i} was not restored"))),
                })
                .collect()
        }
        (CodecId::RsErasureGf8, Policy::Erasure { data: k, parity: m }) => {
            let owned: Vec<Option<Vec<u8>>> = fragments.iter().map(|f| f.map(<[u8]>::to_vec)).collect();
            Ok(reconstruct_data(usize::from(k), usize::from(m), &owned)?.into_iter().map(Cow::Owned).collect())
        }
        (codec, policy) => Err(CodecError::Mismatch { codec, policy }),
    }
}

/// The parity shards of an erasure code's `data` shards (all one length, as
/// `data_shards` returns them); none for a replica.
pub fn parity_shards(codec: CodecId, policy: Policy, data: &[Cow<'_, [u8]>]) -> Result<Vec<Vec<u8>>, CodecError> {
    match (codec, policy) {
        (CodecId::Replica, Policy::Replicate { .. }) => Ok(Vec::new()),
        (CodecId::RsErasureGf8 | CodecId::RsSimd, Policy::Erasure { data: k, parity: m }) => {
            let (k, m) = (usize::from(k), usize::from(m));
            assert_eq!(data.len(), k);
            let len = data.first().map_or(0, |shard| shard.len());
            assert!(data.iter().all(|shard| shard.len() == len), "data shards of one extent differ in length");
            match codec {
                CodecId::RsSimd => simd_parity(k, m, len, data),
                _ => {
                    let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(k, m)
                        .map_err(|e| CodecError::Library(format!("{e:?}")))?;
                    let mut all: Vec<Vec<u8>> = data.iter().map(|s| s.to_vec()).collect();
                    all.extend(std::iter::repeat_n(vec![0u8; len], m));
                    rs.encode(&mut all).map_err(|e| CodecError::Library(format!("{e:?}")))?;
                    Ok(all.split_off(k))
                }
            }
        }
        (codec, policy) => Err(CodecError::Mismatch { codec, policy }),
    }
}

/// The `k` data shards of an `RsErasureGf8` extent from whichever of its `fragments`
/// are present.
fn reconstruct_data(k: usize, m: usize, fragments: &[Option<Vec<u8>>]) -> Result<Vec<Vec<u8>>, CodecError> {
    let rs =
        reed_solomon_erasure::galois_8::ReedSolomon::new(k, m).map_err(|e| CodecError::Library(format!("{e:?}")))?;
    let mut shards: Vec<Option<Vec<u8>>> = fragments.to_vec();
    rs.reconstruct_data(&mut shards).map_err(|e| CodecError::Library(format!("{e:?}")))?;
    shards
        .into_iter()
        .take(k)
        .map(|s| s.ok_or_else(|| CodecError::Library("data shard missing after reconstruct".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_every_loss_pattern(codec: CodecId, policy: Policy, data: &[u8]) {
        let fragments = encode(codec, policy, data).unwrap();
        let width = policy.width();
        for mask in 0u32..(1 << width) {
            let lost = mask.count_ones() as usize;
            let given: Vec<Option<Vec<u8>>> =
                (0..width).map(|i| (mask & (1 << i) == 0).then(|| fragments[i].clone())).collect();
            let result = decode(codec, policy, data.len(), &given);
            let borrowed: Vec<Option<&[u8]>> = given.iter().map(Option::as_deref).collect();
            let shards = data_shards(codec, policy, &borrowed);
            if lost <= policy.tolerance() {
                assert_eq!(result.unwrap(), data, "{policy} lost mask {mask:b}");
                // A repair's view: the data shards joined are the extent, and their
                // parity is the parity first written.
                let shards = shards.unwrap();
                let joined: Vec<u8> = shards.iter().flat_map(|s| s.iter().copied()).take(data.len()).collect();
                assert_eq!(joined, data, "{policy} data shards, lost mask {mask:b}");
                let parity = parity_shards(codec, policy, &shards).unwrap();
                let written = &fragments[fragments.len() - parity.len()..];
                assert_eq!(parity, written, "{policy} parity, lost mask {mask:b}");
            } else {
                assert!(result.is_err(), "{policy} decoded with mask {mask:b}");
                assert!(shards.is_err(), "{policy} restored shards with mask {mask:b}");
            }
        }
    }

    #[test]
    fn every_loss_pattern_within_tolerance_decodes_and_beyond_it_fails() {
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        for codec in [CodecId::RsSimd, CodecId::RsErasureGf8] {
            for (k, m) in [(1, 1), (2, 1), (4, 2), (3, 3)] {
                check_every_loss_pattern(codec, Policy::erasure(k, m).unwrap(), &data);
            }
        }
        check_every_loss_pattern(CodecId::Replica, Policy::replicate(3).unwrap(), &data);
    }

    #[test]
    fn the_two_reed_solomon_codecs_differ_in_parity() {
        let data = vec![7u8; 4096];
        let policy = Policy::erasure(4, 2).unwrap();
        let a = encode(CodecId::RsSimd, policy, &data).unwrap();
        let b = encode(CodecId::RsErasureGf8, policy, &data).unwrap();
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4..], b[4..]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_length_round_trips(len in 0usize..5000, k in 1u8..=16, m in 1u8..=8, lose in 0usize..8) {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let policy = Policy::erasure(k, m).unwrap();
            let mut frags: Vec<Option<Vec<u8>>> =
                encode(CodecId::RsSimd, policy, &data).unwrap().into_iter().map(Some).collect();
            for i in 0..lose.min(usize::from(m)) {
                frags[(i * 7) % policy.width()] = None;
            }
            let lost = frags.iter().filter(|f| f.is_none()).count();
            prop_assume!(lost <= usize::from(m));
            prop_assert_eq!(decode(CodecId::RsSimd, policy, len, &frags).unwrap(), data);
        }
    }
}
