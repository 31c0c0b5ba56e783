//! The host's read ceiling for `bench`: a plain prefetched SIMD sum, cut and scheduled exactly
//! like the reduction, so the two differ only in what they compute per element.

use super::kernels::pairwise;
use super::kernels::{PREFETCH_AHEAD, prefetch};
use super::{SimdLevel, for_each_piece, piece_len, simd_level};

simd_versions! {
    /// A plain read of `data` on the calling thread: a sum in `LANES` f32 accumulators and
    /// nothing else, with the prefetching and instruction set of the reduction kernel. `bench`
    /// times it over all threads as the host's read ceiling, so the ceiling is the best read
    /// this code knows, not a naive loop the kernel could beat.
    pub(crate) fn read_sum_with(data: &[f32]) -> f32;
    avx512: "avx512f", avx2: "avx2";
    |_FAST| read_sum_impl(data)
}

/// [`read_sum_with`] at the best level the processor runs.
pub(crate) fn read_sum(data: &[f32]) -> f32 {
    read_sum_with(simd_level(), data)
}

#[inline(always)]
fn read_sum_impl(data: &[f32]) -> f32 {
    // Four AVX-512 registers' worth of accumulators, so the adds never wait on each other; one
    // prefetch per 64-byte line, as the reduction does.
    const W: usize = 64;
    let mut acc = [0.0f32; W];
    let mut chunks = data.chunks_exact(W);
    for c in &mut chunks {
        for r in 0..W / 16 {
            prefetch(c.as_ptr().wrapping_add(PREFETCH_AHEAD + r * 16));
        }
        for j in 0..W {
            acc[j] += c[j];
        }
    }
    pairwise(acc) + chunks.remainder().iter().sum::<f32>()
}

/// A plain read of `data` ([`read_sum`]) on all threads, cut and scheduled exactly like
/// [`reduce_slice`]: `bench` times it as the host's read ceiling, so that the two differ only in
/// what they compute per element.
pub(crate) fn read_slice(data: &[f32]) -> f32 {
    let piece = piece_len(data.len(), rayon::current_num_threads());
    let mut total = 0.0f32;
    for_each_piece(data, piece, read_sum, |s| total += s);
    total
}
