//! `--random N --seed S`: uniform values in [0, 1), like `np.random.rand(N)`, generated batch
//! by batch.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use super::BatchSource;
use crate::Result;

/// Values per independently seeded generator stream. The data for a seed depends only on the
/// seed and the element's index, never on the batch size or thread count, so runs with different
/// `--batch-size` or backends reduce exactly the same numbers.
const STREAM: u64 = 1 << 16;

/// Uniform f32 in [0, 1) (24 random bits, like numpy's float32 draws), deterministic for a seed.
#[derive(Debug, Clone)]
pub struct RandomSource {
    len: u64,
    seed: u64,
    pos: u64,
    /// Generator of the stream `pos` is in, when `pos` is partway through one.
    carry: Option<Xoshiro256PlusPlus>,
}

impl RandomSource {
    /// `len` values from `seed`.
    pub fn new(len: u64, seed: u64) -> Self {
        Self {
            len,
            seed,
            pos: 0,
            carry: None,
        }
    }

    fn stream(&self, index: u64) -> Xoshiro256PlusPlus {
        // SplitMix64 finaliser over (seed, stream index): distinct, well-mixed seeds per stream.
        let mut z = self
            .seed
            .wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Xoshiro256PlusPlus::seed_from_u64(z ^ (z >> 31))
    }

    /// The values at indices `start..start + out.len()`, as a fresh source would give them.
    fn fill(&mut self, out: &mut [f32]) {
        let start = self.pos;
        let mut done = 0usize;
        // Finish the stream a previous batch stopped in.
        if start % STREAM != 0 {
            let mut rng = self.carry.take().unwrap_or_else(|| {
                // Only reachable if the carry was lost; regenerate by skipping.
                let mut r = self.stream(start / STREAM);
                for _ in 0..start % STREAM {
                    let _: f32 = r.random();
                }
                r
            });
            let n = ((STREAM - start % STREAM) as usize).min(out.len());
            for x in &mut out[..n] {
                *x = rng.random();
            }
            done = n;
            if (start + n as u64) % STREAM != 0 {
                self.carry = Some(rng);
            }
        }
        // Whole streams in parallel.
        let whole = (out.len() - done) / STREAM as usize * STREAM as usize;
        let first_stream = (start + done as u64) / STREAM;
        out[done..done + whole]
            .par_chunks_mut(STREAM as usize)
            .enumerate()
            .for_each(|(i, chunk)| {
                let mut rng = self.stream(first_stream + i as u64);
                for x in chunk {
                    *x = rng.random();
                }
            });
        done += whole;
        // The start of a stream the next batch will finish.
        if done < out.len() {
            let mut rng = self.stream((start + done as u64) / STREAM);
            for x in &mut out[done..] {
                *x = rng.random();
            }
            self.carry = Some(rng);
        }
        self.pos += out.len() as u64;
    }
}

impl BatchSource for RandomSource {
    fn next_batch(&mut self, buf: &mut Vec<f32>, max: usize) -> Result<usize> {
        let n = (self.len - self.pos).min(max as u64) as usize;
        buf.clear();
        buf.resize(n, 0.0);
        self.fill(buf);
        Ok(n)
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.len)
    }

    fn bytes_read(&self) -> u64 {
        self.pos * 4
    }

    fn len_bytes(&self) -> Option<u64> {
        Some(self.len * 4)
    }

    fn describe(&self) -> String {
        format!("random({}, seed {})", self.len, self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(len: u64, seed: u64, batch: usize) -> Vec<f32> {
        let mut s = RandomSource::new(len, seed);
        let mut all = Vec::new();
        let mut buf = Vec::new();
        while s.next_batch(&mut buf, batch).unwrap() > 0 {
            all.extend_from_slice(&buf);
        }
        all
    }

    #[test]
    fn same_values_whatever_the_batch_size() {
        let len = 3 * STREAM + 1234;
        let reference = collect(len, 7, len as usize);
        for batch in [1000, 65536, 65537, 100_000] {
            assert_eq!(collect(len, 7, batch), reference, "batch {batch}");
        }
        assert_ne!(collect(len, 8, 1000), reference);
    }

    #[test]
    fn uniform_in_unit_interval() {
        let v = collect(200_000, 1, 4096);
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        // Standard error of the mean of U(0,1) over 2e5 draws is 6.5e-4; 5 of them is 3.2e-3.
        assert!((mean - 0.5).abs() < 3.2e-3, "mean {mean}");
    }
}
