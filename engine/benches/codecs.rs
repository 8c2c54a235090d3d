//! Reed–Solomon codecs on 1 MiB extents: `reed-solomon-erasure` (GF(2^8), pure Rust)
//! beside `reed-solomon-simd` (GF(2^16) FFT, runtime SIMD), encode and reconstruct at
//! 4+2 and 8+3. Reconstruct loses M data shards, the worst case.
//!
//! Run: `cargo bench -p dfs-engine --bench codecs`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use dfs_engine::media::codec::{self, CodecId};
use dfs_engine::Policy;

const EXTENT: usize = 1 << 20;

fn measure(mut work: impl FnMut()) -> f64 {
    work();
    let start = Instant::now();
    let mut rounds = 0u32;
    while start.elapsed() < Duration::from_millis(700) {
        work();
        rounds += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    (EXTENT as f64 * f64::from(rounds)) / seconds / (1 << 20) as f64
}

fn main() {
    let data: Vec<u8> = (0..EXTENT).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    println!("codec throughput on 1 MiB extents (MiB of extent data per second; higher is better)");
    println!("{:<12} {:<22} {:>10} {:>12}", "policy", "codec", "encode", "reconstruct");
    for (k, m) in [(4u8, 2u8), (8, 3)] {
        let policy = Policy::erasure(k, m).unwrap();
        for (codec, name) in [(CodecId::RsErasureGf8, "reed-solomon-erasure"), (CodecId::RsSimd, "reed-solomon-simd")] {
            let fragments = codec::encode(codec, policy, &data).unwrap();
            let mut damaged: Vec<Option<Vec<u8>>> = fragments.into_iter().map(Some).collect();
            for slot in damaged.iter_mut().take(usize::from(m)) {
                *slot = None;
            }
            assert_eq!(codec::decode(codec, policy, EXTENT, &damaged).unwrap(), data);
            let encode = measure(|| {
                black_box(codec::encode(codec, policy, black_box(&data)).unwrap());
            });
            let reconstruct = measure(|| {
                black_box(codec::decode(codec, policy, EXTENT, black_box(&damaged)).unwrap());
            });
            println!("{:<12} {:<22} {:>10.0} {:>12.0}", policy.to_string(), name, encode, reconstruct);
        }
    }
    let hash = measure(|| {
        black_box(blake3::hash(black_box(&data)));
    });
    println!("blake3 (for scale): {hash:.0} MiB/s");
}
