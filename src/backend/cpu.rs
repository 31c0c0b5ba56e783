//! The CPU backend: the shader's reduction, lane for lane, on all cores.
//!
//! It mirrors `shaders/reduce.wgsl`: NaN and ±inf are classified from the bits, min/max use the
//! same order-preserving key, and the moments are shifted sums in f32 lanes. `LANES` independent
//! accumulators let the compiler vectorize; every `BLOCK` elements the lanes are folded into f64,
//! so the f32 error never grows past one block's worth (DESIGN.md: f32 lanes per block, blocks in
//! f64). Work is split over threads in `TASK`-sized pieces with rayon.

use std::time::Instant;

use rayon::prelude::*;

use super::{BackendInfo, BackendKind, BatchReducer, ComputeClock, StageTimes};
use crate::Result;
use crate::stats::Partial;

/// Independent f32 accumulators per block: one AVX-512 register, two AVX2 registers.
pub const LANES: usize = 16;
/// Elements accumulated in f32 before folding into f64: each lane sums `BLOCK / LANES` = 64 values.
pub const BLOCK: usize = 1024;
/// Elements one thread reduces as one task; big enough to amortise scheduling (~256 KiB).
pub const TASK: usize = 1 << 16;

const ABS_MASK: u32 = 0x7fff_ffff;
const INF_BITS: u32 = 0x7f80_0000;
const NEG_INF_BITS: u32 = 0xff80_0000;

/// Order-preserving map from f32 bits to u32 (same as `order_key` in the shader).
#[inline(always)]
pub fn order_key(bits: u32) -> u32 {
    let mask = (((bits as i32) >> 31) as u32) | 0x8000_0000;
    bits ^ mask
}

/// Inverse of [`order_key`].
#[inline]
pub fn from_order_key(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 {
        key ^ 0x8000_0000
    } else {
        !key
    };
    f32::from_bits(bits)
}

/// The shift K for shifted moments over `data`: the median of up to 31 evenly spaced finite
/// samples. Near the bulk of the data whatever its offset, and, unlike the first value or a
/// sample mean, not dragged away by a few outliers. Shared by both backends.
pub fn choose_shift(data: &[f32]) -> f32 {
    const SAMPLES: usize = 31;
    let mut sample = [0.0f32; SAMPLES];
    let mut n = 0;
    if !data.is_empty() {
        let step = data.len().div_ceil(SAMPLES).max(1);
        for &x in data.iter().step_by(step) {
            if x.is_finite() && n < SAMPLES {
                sample[n] = x;
                n += 1;
            }
        }
    }
    if n == 0 {
        return 0.0;
    }
    let sample = &mut sample[..n];
    sample.sort_unstable_by(f32::total_cmp);
    sample[n / 2]
}

/// What a reduction kernel produces before conversion to a [`Partial`]: exactly the fields of the
/// shader's `Partial`, with the sums already in f64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShiftedMoments {
    pub count: u64,
    pub nan_count: u64,
    pub pos_inf: u64,
    pub neg_inf: u64,
    pub min_key: u32,
    pub max_key: u32,
    pub s1: f64,
    pub s2: f64,
}

impl ShiftedMoments {
    pub const EMPTY: Self = Self {
        count: 0,
        nan_count: 0,
        pos_inf: 0,
        neg_inf: 0,
        min_key: u32::MAX,
        max_key: 0,
        s1: 0.0,
        s2: 0.0,
    };

    /// Converts shifted sums around `shift` into a mergeable partial.
    pub fn into_partial(self, shift: f32) -> Partial {
        let mut p = Partial {
            count: self.count,
            nan_count: self.nan_count,
            pos_inf_count: self.pos_inf,
            neg_inf_count: self.neg_inf,
            ..Partial::EMPTY
        };
        if self.count > 0 {
            let n = self.count as f64;
            p.sum = n * f64::from(shift) + self.s1;
            p.m2 = (self.s2 - self.s1 * self.s1 / n).max(0.0);
            p.min = f64::from(from_order_key(self.min_key));
            p.max = f64::from(from_order_key(self.max_key));
        }
        p
    }
}

/// Reduces one block of at most [`BLOCK`] elements in f32 lanes, folding into `acc` in f64.
#[inline(always)]
fn reduce_block(block: &[f32], shift: f32, acc: &mut ShiftedMoments) {
    debug_assert!(block.len() <= BLOCK);
    let mut s1 = [0.0f32; LANES];
    let mut s2 = [0.0f32; LANES];
    let mut count = [0u32; LANES];
    let mut nan = [0u32; LANES];
    let mut pos_inf = [0u32; LANES];
    let mut neg_inf = [0u32; LANES];
    let mut kmin = [u32::MAX; LANES];
    let mut kmax = [0u32; LANES];

    let mut lane = |j: usize, x: f32| {
        let bits = x.to_bits();
        let abs_bits = bits & ABS_MASK;
        let finite = abs_bits < INF_BITS;
        let d = if finite { x - shift } else { 0.0 };
        s1[j] += d;
        s2[j] += d * d;
        count[j] += finite as u32;
        nan[j] += (abs_bits > INF_BITS) as u32;
        pos_inf[j] += (bits == INF_BITS) as u32;
        neg_inf[j] += (bits == NEG_INF_BITS) as u32;
        let key = order_key(bits);
        kmin[j] = kmin[j].min(if finite { key } else { u32::MAX });
        kmax[j] = kmax[j].max(if finite { key } else { 0 });
    };

    let mut chunks = block.chunks_exact(LANES);
    for c in &mut chunks {
        for (j, &x) in c.iter().enumerate() {
            lane(j, x);
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lane(j, x);
    }

    // Fold the lanes pairwise, like the shader's tree, then into f64.
    acc.s1 += f64::from(pairwise(s1));
    acc.s2 += f64::from(pairwise(s2));
    acc.count += u64::from(count.iter().sum::<u32>());
    acc.nan_count += u64::from(nan.iter().sum::<u32>());
    acc.pos_inf += u64::from(pos_inf.iter().sum::<u32>());
    acc.neg_inf += u64::from(neg_inf.iter().sum::<u32>());
    acc.min_key = acc.min_key.min(kmin.into_iter().min().unwrap_or(u32::MAX));
    acc.max_key = acc.max_key.max(kmax.into_iter().max().unwrap_or(0));
}

#[inline(always)]
fn pairwise(mut v: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for j in 0..half {
            v[j] += v[j + half];
        }
        half /= 2;
    }
    v[0]
}

/// Reduces `data` on the calling thread with one shift for the whole slice.
pub(crate) fn reduce_serial(data: &[f32], shift: f32) -> ShiftedMoments {
    let mut acc = ShiftedMoments::EMPTY;
    for block in data.chunks(BLOCK) {
        reduce_block(block, shift, &mut acc);
    }
    acc
}

/// Reduces `data` to a [`Partial`] on all cores of the current rayon pool.
///
/// Each `TASK`-sized piece gets its own shift (its sample median), which keeps the shifted
/// moments accurate even when the data drifts across a batch.
pub fn reduce_slice(data: &[f32]) -> Partial {
    if data.len() <= TASK {
        let shift = choose_shift(data);
        return reduce_serial(data, shift).into_partial(shift);
    }
    data.par_chunks(TASK)
        .map(|piece| {
            let shift = choose_shift(piece);
            reduce_serial(piece, shift).into_partial(shift)
        })
        .fold(Partial::default, |mut acc, p| {
            acc.merge(&p);
            acc
        })
        .reduce(Partial::default, |mut a, b| {
            a.merge(&b);
            a
        })
}

/// The CPU backend as a [`BatchReducer`]: every batch is reduced as it arrives.
#[derive(Debug)]
pub struct CpuReducer {
    info: BackendInfo,
    acc: Partial,
    times: StageTimes,
}

impl CpuReducer {
    /// A reducer over the global rayon pool (all cores unless `RAYON_NUM_THREADS` says otherwise).
    pub fn new() -> Self {
        let threads = rayon::current_num_threads();
        Self {
            info: BackendInfo {
                kind: BackendKind::Cpu,
                adapter: format!("{} ({threads} threads)", cpu_name()),
                api: "native".to_string(),
                device_type: "Cpu".to_string(),
                workgroups: threads as u32,
            },
            acc: Partial::EMPTY,
            times: StageTimes {
                compute_clock: ComputeClock::Wall,
                ..StageTimes::default()
            },
        }
    }
}

impl Default for CpuReducer {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchReducer for CpuReducer {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn push(&mut self, batch: &[f32]) -> Result<()> {
        let start = Instant::now();
        let p = reduce_slice(batch);
        let mid = Instant::now();
        self.acc.merge(&p);
        self.times.compute += mid - start;
        self.times.merge += mid.elapsed();
        Ok(())
    }

    fn finish(&mut self) -> Result<(Partial, StageTimes)> {
        let times = std::mem::replace(
            &mut self.times,
            StageTimes {
                compute_clock: ComputeClock::Wall,
                ..StageTimes::default()
            },
        );
        Ok((std::mem::take(&mut self.acc), times))
    }
}

/// The CPU's model name from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_preserves_order_and_round_trips() {
        let xs = [
            f32::NEG_INFINITY,
            -3.0e38,
            -1.0,
            -1.0e-40,
            -0.0,
            0.0,
            1.0e-40,
            1.0,
            3.0e38,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(
                order_key(w[0].to_bits()) < order_key(w[1].to_bits()),
                "{w:?}"
            );
        }
        for x in xs {
            assert_eq!(
                from_order_key(order_key(x.to_bits())).to_bits(),
                x.to_bits()
            );
        }
    }

    #[test]
    fn shift_ignores_outliers_and_non_finite() {
        let mut data = vec![1.0e6f32; 1000];
        data[0] = -1.0e30;
        data[500] = f32::NAN;
        assert_eq!(choose_shift(&data), 1.0e6);
        assert_eq!(choose_shift(&[f32::NAN, f32::INFINITY]), 0.0);
        assert_eq!(choose_shift(&[]), 0.0);
    }
}
