//! `microbatch bench`: sweeps N, B, P, backends and modes; measures the ceilings; fits the cost
//! model; exports JSON, CSV and SVG.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::gpu::{
    AdapterSelector, GpuConfig, GpuContext, GpuReducer, Loads, SlowPath, Staging,
};
use crate::backend::{BackendKind, BatchReducer, ComputeClock, cpu::CpuReducer};
use crate::model::{CostModel, Crossover, Observation, crossover};
use crate::report::Timings;
use crate::source::{BatchSource, RandomSource};
use crate::{Error, Result};

mod ceilings;
use ceilings::host_read_seconds;
pub use ceilings::{
    Upload, gpu_copy_bandwidth, gpu_shader_copy_bandwidth, gpu_upload_bandwidth,
    host_read_bandwidth,
};

/// How the data reaches the reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Data starts in host memory and goes through the whole pipeline in micro-batches.
    Streaming,
    /// Data is already where the backend computes (uploaded once on the GPU): the kernel alone.
    Resident,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Streaming => "streaming",
            Mode::Resident => "resident",
        })
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Element counts N.
    pub sizes: Vec<u64>,
    /// Batch sizes B (streaming mode).
    pub batch_sizes: Vec<usize>,
    /// Workgroup counts P for the GPU (`None`: the adapter's default).
    pub workgroups: Vec<Option<u32>>,
    /// Backends to measure.
    pub backends: Vec<BackendKind>,
    /// Modes to measure.
    pub modes: Vec<Mode>,
    /// Measured runs per point.
    pub runs: usize,
    /// Unmeasured warm-up runs per point.
    pub warmup: usize,
    /// Seed of the generated data.
    pub seed: u64,
    /// GPU adapter name substring.
    pub adapter: Option<String>,
    /// GPU kernel variants to compare side by side: every GPU point is measured with each.
    /// One `KernelVariant::default()` measures the adapter's defaults.
    pub kernels: Vec<KernelVariant>,
    /// GPU kernel: subgroup combine (`None`: the default, the tree).
    pub subgroups: Option<bool>,
}

/// One GPU kernel variant of a sweep ([`GpuConfig`]'s kernel fields; `None`: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelVariant {
    /// vec4 loads per thread per tile.
    pub vec_per_thread: Option<u32>,
    /// Loads in a loop or written out.
    pub loads: Option<Loads>,
    /// Slow path inline or deferred.
    pub slow_path: Option<SlowPath>,
    /// Where streamed batches are staged (streaming mode; resident mode measures each kernel
    /// once whatever the staging).
    pub staging: Option<Staging>,
}

/// Median and spread of one quantity over the measured runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Median seconds per stage.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageMedians {
    /// Producing batches (zero here: the data is generated before timing).
    pub read: f64,
    /// Staging for the device.
    pub upload: f64,
    /// Kernel time.
    pub compute: f64,
    /// Partials back to the host.
    pub readback: f64,
    /// Merging.
    pub merge: f64,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchPoint {
    /// Backend.
    pub backend: BackendKind,
    /// Mode.
    pub mode: Mode,
    /// Elements.
    pub n: u64,
    /// Batch size (the whole input in resident mode).
    pub batch_size: usize,
    /// Parallel processors.
    pub workgroups: u32,
    /// The GPU kernel variant measured ([`crate::backend::gpu::KernelShape::tag`]); `None` on
    /// the CPU.
    pub kernel: Option<String>,
    /// Total seconds per run, by the host's wall clock (the reduction called to its result
    /// on the host).
    pub seconds: Spread,
    /// Where the GPU's streamed batches were staged (what `auto` chose); `None` in resident
    /// mode and on the CPU.
    pub staging: Option<Staging>,
    /// The kernels' own time per run by GPU timestamps (the sum over the run's dispatches),
    /// where the adapter has timestamp queries; `None` otherwise and on the CPU.
    pub device_seconds: Option<Spread>,
    /// Bytes per second by that clock (min/max from the max/min times).
    pub device_bytes_per_s: Option<Spread>,
    /// Elements per second (from the median time; min/max from the max/min times).
    pub elements_per_s: Spread,
    /// Bytes per second likewise.
    pub bytes_per_s: Spread,
    /// Median per stage.
    pub stages: StageMedians,
    /// The ceiling this point is judged against, bytes/s: for the CPU a plain read of the same
    /// data interleaved with the runs (median); for the GPU the run's device copy (its read
    /// half) in resident mode and its host-to-device rate in streaming mode.
    pub ceiling_bytes_per_s: Option<f64>,
    /// Median bytes/s as a fraction of that ceiling.
    pub fraction_of_ceiling: Option<f64>,
}

/// The bandwidths the throughputs are judged against, measured in the same run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceilings {
    /// Host single-pass read bandwidth: a plain multi-accumulator sum on all threads (bytes/s).
    pub host_read: f64,
    /// Device-to-device copy bandwidth, bytes read + written per second: the faster of the copy
    /// engine and the WGSL copy kernel (the resident mode's ceiling).
    pub gpu_copy: Option<f64>,
    /// `copy_buffer_to_buffer` alone (the copy engine), read + written per second.
    pub gpu_copy_engine: Option<f64>,
    /// `shaders/copy.wgsl` alone, read + written per second.
    pub gpu_copy_shader: Option<f64>,
    /// Host-to-device bandwidth of the streaming path: the slower of its two steps, bytes/s.
    pub gpu_upload: Option<f64>,
    /// The two steps separately.
    pub gpu_upload_steps: Option<Upload>,
}

/// A fitted model for one backend and mode.
#[derive(Debug, Clone, Serialize)]
pub struct BenchFit {
    /// Backend.
    pub backend: BackendKind,
    /// Mode.
    pub mode: Mode,
    /// Batch size the fit is over (streaming: per-batch costs depend on B, so each B has its
    /// own fit); `None` in resident mode.
    pub batch_size: Option<usize>,
    /// Processors P the fit is over. Each (B, P) gets its own line over N: a streaming run bound
    /// by the upload does not speed up with P, so pooling several P would fit a slope that is not
    /// there.
    pub workgroups: u32,
    /// The GPU kernel variant (each has its own fit); `None` on the CPU.
    pub kernel: Option<String>,
    /// The fit.
    pub model: CostModel,
}

/// Everything a sweep produced.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// GPU adapter measured, if any.
    pub adapter: Option<String>,
    /// How the GPU kernel was specialised for it.
    pub kernel: Option<String>,
    /// CPU threads.
    pub cpu_threads: usize,
    /// Ceilings.
    pub ceilings: Ceilings,
    /// Every measured point.
    pub points: Vec<BenchPoint>,
    /// Fits per backend and mode.
    pub fits: Vec<BenchFit>,
    /// Streaming mode: N above which the GPU beats the CPU, from the fits.
    pub crossover: Option<Crossover>,
}

impl BenchReport {
    /// The fit a measured point belongs to: its backend, mode, (streaming) batch size, P and
    /// kernel variant.
    pub fn fit_of(&self, point: &BenchPoint) -> Option<&BenchFit> {
        let batch_size = (point.mode == Mode::Streaming).then_some(point.batch_size);
        self.fits.iter().find(|f| {
            f.backend == point.backend
                && f.mode == point.mode
                && f.batch_size == batch_size
                && f.workgroups == point.workgroups
                && f.kernel == point.kernel
        })
    }

    /// The streaming point with the highest median throughput at the largest N for `backend`.
    pub fn fastest_streaming(&self, backend: BackendKind) -> Option<&BenchPoint> {
        let max_n = self.points.iter().map(|p| p.n).max()?;
        self.points
            .iter()
            .filter(|p| p.backend == backend && p.mode == Mode::Streaming && p.n == max_n)
            .max_by(|a, b| a.bytes_per_s.median.total_cmp(&b.bytes_per_s.median))
    }
}

fn generate(n: u64, seed: u64) -> Vec<f32> {
    let mut src = RandomSource::new(n, seed);
    let mut v = Vec::new();
    src.next_batch(&mut v, n as usize)
        .expect("generation cannot fail");
    v
}

fn point(
    backend: BackendKind,
    mode: Mode,
    n: u64,
    batch_size: usize,
    workgroups: u32,
    samples: &[Timings],
) -> BenchPoint {
    let med = |f: &dyn Fn(&Timings) -> Duration| {
        Spread::of(samples.iter().map(|s| f(s).as_secs_f64()).collect()).median
    };
    let seconds = Spread::of(samples.iter().map(|s| s.total.as_secs_f64()).collect());
    let per = |scale: f64, t: &Spread| Spread {
        median: scale / t.median,
        min: scale / t.max,
        max: scale / t.min,
    };
    let device_seconds = samples
        .iter()
        .all(|s| s.compute_clock == ComputeClock::Timestamps && backend == BackendKind::Gpu)
        .then(|| Spread::of(samples.iter().map(|s| s.compute.as_secs_f64()).collect()));
    BenchPoint {
        backend,
        mode,
        n,
        batch_size,
        workgroups,
        kernel: None,
        staging: None,
        seconds,
        device_seconds,
        device_bytes_per_s: device_seconds.map(|d| per(n as f64 * 4.0, &d)),
        elements_per_s: per(n as f64, &seconds),
        bytes_per_s: per(n as f64 * 4.0, &seconds),
        stages: StageMedians {
            read: med(&|s| s.read),
            upload: med(&|s| s.upload),
            compute: med(&|s| s.compute),
            readback: med(&|s| s.readback),
            merge: med(&|s| s.merge),
        },
        ceiling_bytes_per_s: None,
        fraction_of_ceiling: None,
    }
}

/// Runs the sweep. `progress` is called after every measured point with (done, total).
pub fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<BenchReport> {
    if config.sizes.is_empty() || config.batch_sizes.is_empty() || config.runs == 0 {
        return Err(Error::InvalidConfig(
            "bench needs at least one size, one batch size and one run".to_string(),
        ));
    }
    for &b in &config.batch_sizes {
        crate::engine::check_batch_size(b)?;
    }
    let want_gpu = config.backends.contains(&BackendKind::Gpu);
    let ctx = if want_gpu {
        let selector = match &config.adapter {
            Some(name) => AdapterSelector::named(name.clone()),
            None => AdapterSelector::any(),
        };
        Some(GpuContext::new(&selector)?)
    } else {
        None
    };
    let kernels = if config.kernels.is_empty() {
        vec![KernelVariant::default()]
    } else {
        config.kernels.clone()
    };
    // Staging plays no part in resident mode: each kernel once.
    let mut resident_kernels: Vec<KernelVariant> = Vec::new();
    for k in &kernels {
        let k = KernelVariant {
            staging: None,
            ..*k
        };
        if !resident_kernels.contains(&k) {
            resident_kernels.push(k);
        }
    }
    let cpu_threads = rayon::current_num_threads();
    let max_n = *config.sizes.iter().max().unwrap_or(&0);
    let total_points = config.sizes.len()
        * config
            .backends
            .iter()
            .map(|b| match b {
                BackendKind::Cpu => config
                    .modes
                    .iter()
                    .map(|m| match m {
                        Mode::Streaming => config.batch_sizes.len(),
                        Mode::Resident => 1,
                    })
                    .sum::<usize>(),
                BackendKind::Gpu => config
                    .modes
                    .iter()
                    .map(|m| match m {
                        Mode::Streaming => {
                            config.batch_sizes.len() * config.workgroups.len() * kernels.len()
                        }
                        Mode::Resident => config.workgroups.len() * resident_kernels.len(),
                    })
                    .sum::<usize>(),
            })
            .sum::<usize>();
    let mut done = 0;

    // Ceilings first, on the largest buffer of the sweep (capped at 1 GiB).
    let ceiling_data = generate(max_n.clamp(1 << 20, 1 << 28), config.seed);
    let host_read = host_read_bandwidth(&ceiling_data, config.runs);
    let (gpu_copy_engine, gpu_copy_shader, gpu_upload) = match &ctx {
        Some(ctx) => {
            let bytes = ceiling_data.len() as u64 * 4;
            (
                Some(gpu_copy_bandwidth(ctx, bytes, config.runs)?),
                Some(gpu_shader_copy_bandwidth(ctx, bytes, config.runs)?),
                Some(gpu_upload_bandwidth(ctx, &ceiling_data, config.runs)?),
            )
        }
        None => (None, None, None),
    };
    let gpu_upload_steps = gpu_upload;
    let gpu_upload = gpu_upload.map(|u| u.ceiling());
    let gpu_copy = gpu_copy_engine
        .zip(gpu_copy_shader)
        .map(|(engine, shader)| engine.max(shader));
    drop(ceiling_data);
    let ceilings = Ceilings {
        host_read,
        gpu_copy,
        gpu_copy_engine,
        gpu_copy_shader,
        gpu_upload,
        gpu_upload_steps,
    };

    let mut points = Vec::new();
    let mut kernel = None;
    for &n in &config.sizes {
        let data = generate(n, config.seed);
        for &backend in &config.backends {
            for &mode in &config.modes {
                let batch_sizes: Vec<usize> = match mode {
                    Mode::Streaming => config.batch_sizes.clone(),
                    Mode::Resident => vec![(n as usize).max(1)],
                };
                let workgroups: Vec<Option<u32>> = match backend {
                    BackendKind::Cpu => vec![None],
                    BackendKind::Gpu => config.workgroups.clone(),
                };
                let variants: Vec<KernelVariant> = match (backend, mode) {
                    (BackendKind::Cpu, _) => vec![KernelVariant::default()],
                    (BackendKind::Gpu, Mode::Streaming) => kernels.clone(),
                    (BackendKind::Gpu, Mode::Resident) => resident_kernels.clone(),
                };
                for &b in &batch_sizes {
                    for (&p, variant) in workgroups
                        .iter()
                        .flat_map(|p| variants.iter().map(move |v| (p, v)))
                    {
                        let label = format!("{backend} {mode} N={n} B={b}");
                        let mut kernel_used = None;
                        let mut staging_used = None;
                        let mut p_used = cpu_threads as u32;
                        let mut paired_read = None;
                        let samples = match backend {
                            BackendKind::Cpu => {
                                let mut r = CpuReducer::new();
                                let b = if mode == Mode::Resident {
                                    data.len().max(1)
                                } else {
                                    b
                                };
                                // A plain read of the same data before every run: on a shared
                                // machine the bandwidth drifts, and a ceiling taken minutes
                                // earlier would judge the runs against another machine.
                                let mut reads = Vec::new();
                                let samples = measure(config, || {
                                    reads.push(host_read_seconds(&data));
                                    stream(&mut r, &data, b)
                                })?;
                                let measured = &reads[reads.len() - samples.len()..];
                                let read = Spread::of(measured.to_vec()).median;
                                paired_read = Some((data.len() * 4) as f64 / read);
                                samples
                            }
                            BackendKind::Gpu => {
                                let ctx = ctx.as_ref().expect("opened above");
                                let mut gpu_config = GpuConfig::new(b);
                                gpu_config.workgroups = p;
                                gpu_config.vec_per_thread = variant.vec_per_thread;
                                gpu_config.loads = variant.loads;
                                gpu_config.slow_path = variant.slow_path;
                                gpu_config.staging = variant.staging;
                                gpu_config.subgroups = config.subgroups;
                                let mut r = GpuReducer::new(ctx, gpu_config)?;
                                kernel.get_or_insert_with(|| r.shape().to_string());
                                kernel_used = Some(match mode {
                                    Mode::Resident => r.shape().tag(),
                                    Mode::Streaming => {
                                        staging_used = Some(r.staging());
                                        format!("{} staging={}", r.shape().tag(), r.staging())
                                    }
                                });
                                p_used = r.info().workgroups;
                                match mode {
                                    Mode::Streaming => {
                                        measure(config, || stream(&mut r, &data, b))?
                                    }
                                    Mode::Resident => {
                                        let resident = r.upload(&data)?;
                                        measure(config, || {
                                            let t = Instant::now();
                                            let (_, times) = r.reduce_resident(&resident)?;
                                            Ok(Timings {
                                                total: t.elapsed(),
                                                ..times
                                            })
                                        })?
                                    }
                                }
                            }
                        };
                        let mut pt = point(backend, mode, n, b, p_used, &samples);
                        pt.kernel = kernel_used;
                        pt.staging = staging_used;
                        let ceiling = match (backend, mode) {
                            (BackendKind::Cpu, _) => paired_read.or(Some(host_read)),
                            (BackendKind::Gpu, Mode::Resident) => gpu_copy.map(|c| c / 2.0),
                            (BackendKind::Gpu, Mode::Streaming) => gpu_upload,
                        };
                        pt.ceiling_bytes_per_s = ceiling;
                        pt.fraction_of_ceiling = ceiling.map(|c| pt.bytes_per_s.median / c);
                        points.push(pt);
                        done += 1;
                        progress(done, total_points, &label);
                    }
                }
            }
        }
    }

    let mut fits = Vec::new();
    // One fit per backend, mode, (streaming) B, P and kernel variant: the first point of each
    // such group stands for it.
    let same_fit = |a: &BenchPoint, b: &BenchPoint| {
        a.backend == b.backend
            && a.mode == b.mode
            && (a.mode == Mode::Resident || a.batch_size == b.batch_size)
            && a.workgroups == b.workgroups
            && a.kernel == b.kernel
    };
    let mut groups: Vec<&BenchPoint> = Vec::new();
    for p in &points {
        if !groups.iter().any(|g| same_fit(g, p)) {
            groups.push(p);
        }
    }
    for g in groups {
        let obs: Vec<Observation> = points
            .iter()
            .filter(|p| same_fit(g, p))
            .map(|p| Observation {
                n: p.n as f64,
                p: f64::from(p.workgroups),
                seconds: p.seconds.median,
            })
            .collect();
        if let Some(model) = CostModel::fit(&obs) {
            fits.push(BenchFit {
                backend: g.backend,
                mode: g.mode,
                batch_size: (g.mode == Mode::Streaming).then_some(g.batch_size),
                workgroups: g.workgroups,
                kernel: g.kernel.clone(),
                model,
            });
        }
    }
    let mut report = BenchReport {
        adapter: ctx.as_ref().map(|c| c.adapter().name.clone()),
        kernel,
        cpu_threads,
        ceilings,
        points,
        fits,
        crossover: None,
    };
    report.crossover = streaming_crossover(&report);
    Ok(report)
}

/// Where GPU streaming (at its fastest B and P) starts to beat CPU streaming (at its fastest B).
fn streaming_crossover(report: &BenchReport) -> Option<Crossover> {
    let g = report.fastest_streaming(BackendKind::Gpu)?;
    let c = report.fastest_streaming(BackendKind::Cpu)?;
    let gf = report.fit_of(g)?;
    let cf = report.fit_of(c)?;
    Some(crossover(
        &gf.model,
        f64::from(g.workgroups),
        &cf.model,
        f64::from(c.workgroups),
    ))
}

/// One streaming run: `data` pushed in batches of `batch_size`, then finished.
fn stream(reducer: &mut dyn BatchReducer, data: &[f32], batch_size: usize) -> Result<Timings> {
    let t = Instant::now();
    for batch in data.chunks(batch_size) {
        reducer.push(batch)?;
    }
    let (_, times) = reducer.finish()?;
    Ok(Timings {
        total: t.elapsed(),
        ..times
    })
}

fn measure(
    config: &BenchConfig,
    mut once: impl FnMut() -> Result<Timings>,
) -> Result<Vec<Timings>> {
    for _ in 0..config.warmup {
        once()?;
    }
    (0..config.runs).map(|_| once()).collect()
}
