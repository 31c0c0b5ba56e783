//! The cost model `T = N/P × S + D`, fitted by least squares.
//!
//! N elements, P parallel processors, S the time one processor spends per element, D the fixed
//! latency of a run. With x = N/P the model is a straight line T = S·x + D, so ordinary least
//! squares over the measured points gives S and D in closed form.

use serde::Serialize;

/// One measured point: N elements on P processors took `seconds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Elements.
    pub n: f64,
    /// Parallel processors.
    pub p: f64,
    /// Measured time in seconds.
    pub seconds: f64,
}

/// A fitted cost model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostModel {
    /// Seconds per element per processor.
    pub s: f64,
    /// Fixed latency in seconds.
    pub d: f64,
    /// Coefficient of determination of the fit (1 is perfect).
    pub r2: f64,
    /// Points the fit used.
    pub points: usize,
}

impl CostModel {
    /// Least-squares fit of `seconds = s · n/p + d`. `None` with fewer than two distinct n/p.
    pub fn fit(obs: &[Observation]) -> Option<CostModel> {
        let k = obs.len() as f64;
        if obs.len() < 2 {
            return None;
        }
        let xs: Vec<f64> = obs.iter().map(|o| o.n / o.p).collect();
        let mx = xs.iter().sum::<f64>() / k;
        let my = obs.iter().map(|o| o.seconds).sum::<f64>() / k;
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = xs
            .iter()
            .zip(obs)
            .map(|(x, o)| (x - mx) * (o.seconds - my))
            .sum();
        let s = sxy / sxx;
        let d = my - s * mx;
        let ss_tot: f64 = obs.iter().map(|o| (o.seconds - my).powi(2)).sum();
        let ss_res: f64 = xs
            .iter()
            .zip(obs)
            .map(|(x, o)| (o.seconds - (s * x + d)).powi(2))
            .sum();
        let r2 = if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            1.0
        };
        Some(CostModel {
            s,
            d,
            r2,
            points: obs.len(),
        })
    }

    /// Predicted seconds for `n` elements on `p` processors.
    pub fn predict(&self, n: f64, p: f64) -> f64 {
        self.s * n / p + self.d
    }

    /// Time per element of the whole machine (S/P): the slope in seconds per element.
    pub fn per_element(&self, p: f64) -> f64 {
        self.s / p
    }
}

/// Where two models cross: the N above which `fast` (lower per-element cost) beats `slow`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "n", rename_all = "snake_case")]
pub enum Crossover {
    /// `fast` is quicker for every N ≥ 0.
    Always,
    /// `fast` is never quicker.
    Never,
    /// `fast` is quicker above this many elements.
    Above(f64),
}

/// Solves S₁·N/P₁ + D₁ = S₂·N/P₂ + D₂ for the N above which model 1 beats model 2.
pub fn crossover(m1: &CostModel, p1: f64, m2: &CostModel, p2: f64) -> Crossover {
    let slope = m2.per_element(p2) - m1.per_element(p1); // how much faster 1 gets per element
    let gap = m1.d - m2.d; // how much slower 1 starts
    match (slope > 0.0, gap > 0.0) {
        (true, true) => Crossover::Above(gap / slope),
        (true, false) => Crossover::Always,
        (false, true) => Crossover::Never,
        (false, false) if gap < 0.0 && slope == 0.0 => Crossover::Always,
        (false, false) => Crossover::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_s_and_d_from_noiseless_points() {
        let (s, d) = (2.5e-9, 40e-6);
        let obs: Vec<Observation> = [(1e5, 1.0), (1e6, 4.0), (1e7, 16.0), (3e7, 2.0)]
            .iter()
            .map(|&(n, p)| Observation {
                n,
                p,
                seconds: s * n / p + d,
            })
            .collect();
        let m = CostModel::fit(&obs).unwrap();
        assert!((m.s - s).abs() / s < 1e-9, "{m:?}");
        assert!((m.d - d).abs() / d < 1e-6, "{m:?}");
        assert!((m.r2 - 1.0).abs() < 1e-12);
        assert!((m.predict(2e6, 2.0) - (s * 1e6 + d)).abs() < 1e-15);
    }

    #[test]
    fn noisy_points_keep_s_and_d_close_and_r2_below_one() {
        let (s, d) = (1e-9, 1e-3);
        // Deterministic ±3% noise.
        let obs: Vec<Observation> = (1..=20)
            .map(|i| {
                let n = 1e6 * i as f64;
                let noise = 1.0 + 0.03 * if i % 2 == 0 { 1.0 } else { -1.0 };
                Observation {
                    n,
                    p: 1.0,
                    seconds: (s * n + d) * noise,
                }
            })
            .collect();
        let m = CostModel::fit(&obs).unwrap();
        assert!((m.s - s).abs() / s < 0.05, "{m:?}");
        assert!((m.d - d).abs() < 0.5e-3, "{m:?}");
        assert!(m.r2 < 1.0 && m.r2 > 0.95, "{m:?}");
    }

    #[test]
    fn degenerate_inputs_give_no_fit() {
        assert!(CostModel::fit(&[]).is_none());
        let same = Observation {
            n: 1e6,
            p: 1.0,
            seconds: 1.0,
        };
        assert!(CostModel::fit(&[same, same]).is_none());
    }

    #[test]
    fn crossover_of_a_fast_kernel_with_a_large_latency() {
        // GPU: 0.1 ns/element overall, 1 ms latency; CPU: 1 ns/element, 10 µs latency.
        let gpu = CostModel {
            s: 0.1e-9 * 1024.0,
            d: 1e-3,
            r2: 1.0,
            points: 2,
        };
        let cpu = CostModel {
            s: 1e-9 * 2.0,
            d: 10e-6,
            r2: 1.0,
            points: 2,
        };
        match crossover(&gpu, 1024.0, &cpu, 2.0) {
            Crossover::Above(n) => {
                let want = (1e-3 - 10e-6) / (0.9e-9);
                assert!((n - want).abs() / want < 1e-9, "{n} vs {want}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(crossover(&cpu, 2.0, &gpu, 1024.0), Crossover::Never);
        let instant = CostModel { d: 0.0, ..gpu };
        assert_eq!(crossover(&instant, 1024.0, &cpu, 2.0), Crossover::Always);
    }
}
