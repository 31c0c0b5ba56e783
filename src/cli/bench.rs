//! `microbatch bench`: the sweep's table, fits and exports (JSON, CSV, SVG plot).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use microbatch::BackendKind;
use microbatch::bench::{self, BenchConfig, BenchReport, KernelVariant, Mode};
use microbatch::model::Crossover;
use microbatch::{Loads, SlowPath, Staging};

use super::parse_count;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Element counts N, comma-separated (accepts 1e6).
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "1e5,1e6,1e7")]
    sizes: Vec<u64>,

    /// Batch sizes B for streaming mode, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, default_value = "16777216")]
    batch_sizes: Vec<u64>,

    /// GPU workgroup counts P, comma-separated (default: the adapter's).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    workgroups: Vec<u32>,

    /// Backends to compare.
    #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
    backends: Vec<BackendArg>,

    /// Modes: streaming (host memory through the whole pipeline), resident (data on the device).
    #[arg(long, value_delimiter = ',', default_value = "streaming,resident")]
    modes: Vec<ModeArg>,

    /// Measured runs per point.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,

    /// Unmeasured warm-up runs per point.
    #[arg(long, default_value_t = 1)]
    warmup: u64,

    /// Seed of the generated data.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// GPU adapter name substring (software adapters allowed: bench measures what you ask).
    #[arg(long, value_name = "TEXT")]
    adapter: Option<String>,
    /// GPU kernel: vec4 loads per thread per tile, comma-separated to compare (default: chosen
    /// per adapter). Every GPU point is measured with every combination of --vec-per-thread,
    /// --loads and --slow-path.
    #[arg(long, value_name = "N,…", value_delimiter = ',')]
    vec_per_thread: Vec<u32>,
    /// GPU kernel: the whole-tile loads as a loop over a register array, or unrolled (written
    /// out by the host), comma-separated to compare
    #[arg(long, value_name = "HOW,…", value_delimiter = ',')]
    loads: Vec<LoadsArg>,
    /// GPU kernel: the slow path (NaN, ±inf, subnormals, batch ends) inline in the kernel, or
    /// deferred to a second small dispatch, comma-separated to compare
    #[arg(long, value_name = "WHERE,…", value_delimiter = ',')]
    slow_path: Vec<SlowPathArg>,
    /// GPU streaming: where batches are staged, comma-separated to compare: bar (wgpu's mapped
    /// buffers, in the PCIe BAR on discrete GPUs), pinned (host memory the copy engine reads by
    /// DMA; Vulkan only), auto (pinned on a discrete GPU with host memory outside the BAR)
    #[arg(long, value_name = "WHERE,…", value_delimiter = ',')]
    staging: Vec<StagingArg>,
    /// GPU kernel: combine workgroups with subgroup operations: auto (the workgroup-memory tree,
    /// measured as fast or faster), on, off
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    subgroups: Subgroups,

    /// Write every measured point, the ceilings and the fits as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Write every measured point as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,

    /// Draw throughput against N and against B as SVG.
    #[cfg(feature = "plot")]
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    /// End to end instead of the sweep: time whole `microbatch run FILE` processes (start-up,
    /// reading, parsing, reducing, the report), one row per file and backend, as a user runs
    /// them. Files of any format the CLI reads, comma-separated.
    #[arg(long, value_name = "FILE", value_delimiter = ',')]
    files: Vec<PathBuf>,
}

/// A backend to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Cpu,
    Gpu,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => BackendKind::Cpu,
            BackendArg::Gpu => BackendKind::Gpu,
        }
    }
}

/// Where the data start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Streaming,
    Resident,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Streaming => Mode::Streaming,
            ModeArg::Resident => Mode::Resident,
        }
    }
}

/// How the kernel's whole-tile loads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadsArg {
    Loop,
    Unrolled,
}

/// Where the kernel's slow path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SlowPathArg {
    Inline,
    Deferred,
}

/// Where streamed batches are staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StagingArg {
    Auto,
    Bar,
    Pinned,
}

/// Every combination of the kernel lists (an empty list: the default).
fn kernel_variants(args: &BenchArgs) -> Vec<KernelVariant> {
    fn or_default<T: Copy>(v: &[T]) -> Vec<Option<T>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().map(|&x| Some(x)).collect()
        }
    }
    let mut out = Vec::new();
    for vec_per_thread in or_default(&args.vec_per_thread) {
        for loads in or_default(&args.loads) {
            for (slow_path, staging) in or_default(&args.slow_path)
                .into_iter()
                .flat_map(|s| or_default(&args.staging).into_iter().map(move |t| (s, t)))
            {
                out.push(KernelVariant {
                    staging: staging.map(|s| match s {
                        StagingArg::Auto => Staging::Auto,
                        StagingArg::Bar => Staging::Bar,
                        StagingArg::Pinned => Staging::Pinned,
                    }),
                    vec_per_thread,
                    loads: loads.map(|l| match l {
                        LoadsArg::Loop => Loads::Loop,
                        LoadsArg::Unrolled => Loads::Unrolled,
                    }),
                    slow_path: slow_path.map(|s| match s {
                        SlowPathArg::Inline => SlowPath::Inline,
                        SlowPathArg::Deferred => SlowPath::Deferred,
                    }),
                });
            }
        }
    }
    out
}

/// Whether the kernel combines workgroups with subgroup operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Subgroups {
    Auto,
    On,
    Off,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if !args.files.is_empty() {
        return bench_files(&args);
    }
    let config = BenchConfig {
        sizes: args.sizes.clone(),
        batch_sizes: args.batch_sizes.iter().map(|&b| b as usize).collect(),
        workgroups: if args.workgroups.is_empty() {
            vec![None]
        } else {
            args.workgroups.iter().map(|&p| Some(p)).collect()
        },
        backends: args.backends.iter().map(|&b| b.into()).collect(),
        modes: args.modes.iter().map(|&m| m.into()).collect(),
        runs: args.runs as usize,
        warmup: args.warmup as usize,
        seed: args.seed,
        adapter: args.adapter.clone(),
        kernels: kernel_variants(&args),
        subgroups: match args.subgroups {
            Subgroups::Auto => None,
            Subgroups::On => Some(true),
            Subgroups::Off => Some(false),
        },
    };
    let bar = ProgressBar::new(0);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        // indicatif hides itself when stderr is not a terminal.
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_message("measuring ceilings");
    let report = bench::run(&config, |done, total, label| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(label.to_string());
    })?;
    bar.finish_and_clear();

    let mut out = std::io::stdout().lock();
    print_report(&mut out, &report)?;
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(file, &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        write_csv(path, &report)?;
    }
    #[cfg(feature = "plot")]
    if let Some(path) = &args.plot {
        super::plot::plot(path, &report).with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

fn gbs(x: f64) -> String {
    format!("{:.2}", x / 1e9)
}

fn print_report(out: &mut impl Write, r: &BenchReport) -> Result<()> {
    let c = &r.ceilings;
    writeln!(out, "ceilings (same run)")?;
    writeln!(
        out,
        "  host read, prefetched SIMD sum ({} threads)  {} GB/s",
        r.cpu_threads,
        gbs(c.host_read)
    )?;
    if let (Some(copy), Some(up)) = (c.gpu_copy, c.gpu_upload) {
        let name = r.adapter.as_deref().unwrap_or("gpu");
        writeln!(
            out,
            "  {name}: device copy (read+write)  {} GB/s  (copy engine {}, WGSL copy kernel {})",
            gbs(copy),
            c.gpu_copy_engine.map_or("-".to_string(), gbs),
            c.gpu_copy_shader.map_or("-".to_string(), gbs),
        )?;
        writeln!(
            out,
            "  {name}: host→device  {} GB/s  (host writes into mapped staging {}, device copies it {})",
            gbs(up),
            c.gpu_upload_steps
                .map_or("-".to_string(), |u| gbs(u.host_write)),
            c.gpu_upload_steps
                .map_or("-".to_string(), |u| gbs(u.device_copy)),
        )?;
    }
    let mut variants: Vec<&str> = r
        .points
        .iter()
        .filter_map(|p| p.kernel.as_deref())
        .collect();
    variants.dedup();
    if let Some(k) = r.kernel.as_ref().filter(|_| variants.len() <= 1) {
        writeln!(out, "  gpu kernel: {k}")?;
    } else if variants.len() > 1 {
        writeln!(
            out,
            "  gpu kernels: one row per variant (the kernel column); dev GB/s is by GPU timestamps"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<4} {:<9} {:>11} {:>9} {:>6} {:>11} {:>21} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7}  kernel",
        "be",
        "mode",
        "N",
        "B",
        "P",
        "median",
        "min–max",
        "GB/s",
        "dev GB/s",
        "upload",
        "compute",
        "readback",
        "merge",
        "%ceil",
    )?;
    for p in &r.points {
        writeln!(
            out,
            "{:<4} {:<9} {:>11} {:>9} {:>6} {:>9.3}ms {:>9.3}–{:<9.3}ms {:>8} {:>8} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>6}  {}",
            p.backend.to_string(),
            p.mode.to_string(),
            p.n,
            p.batch_size,
            p.workgroups,
            p.seconds.median * 1e3,
            p.seconds.min * 1e3,
            p.seconds.max * 1e3,
            gbs(p.bytes_per_s.median),
            p.device_bytes_per_s
                .map_or("-".to_string(), |d| gbs(d.median)),
            p.stages.upload * 1e3,
            p.stages.compute * 1e3,
            p.stages.readback * 1e3,
            p.stages.merge * 1e3,
            p.fraction_of_ceiling
                .map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0)),
            p.kernel.as_deref().unwrap_or(""),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "cost model T = N/P × S + D (least squares over the sweep)"
    )?;
    for f in &r.fits {
        let m = &f.model;
        let b = f.batch_size.map_or(String::new(), |b| format!("B={b}"));
        writeln!(
            out,
            "  {:<4} {:<9} {:<10} P={:<5} S = {:.3e} s/element/processor   D = {:.1} µs   R² = {:.4}   ({} points)",
            f.backend.to_string(),
            f.mode.to_string(),
            b,
            f.workgroups,
            m.s,
            m.d * 1e6,
            m.r2,
            m.points
        )?;
        if let Some(k) = &f.kernel {
            writeln!(out, "       kernel {k}")?;
        }
        for p in r
            .points
            .iter()
            .filter(|p| r.fit_of(p).is_some_and(|g| std::ptr::eq(g, f)))
        {
            let pred = m.predict(p.n as f64, f64::from(p.workgroups));
            writeln!(
                out,
                "       N={:<11} B={:<9} P={:<5} predicted {:>9.3} ms  measured {:>9.3} ms",
                p.n,
                p.batch_size,
                p.workgroups,
                pred * 1e3,
                p.seconds.median * 1e3
            )?;
        }
    }
    match r.crossover {
        Some(Crossover::Above(n)) => writeln!(
            out,
            "crossover (streaming): the GPU beats the CPU above N ≈ {n:.3e} elements"
        )?,
        Some(Crossover::Always) => writeln!(
            out,
            "crossover (streaming): the GPU beats the CPU at every N"
        )?,
        Some(Crossover::Never) => writeln!(
            out,
            "crossover (streaming): the GPU never beats the CPU on this machine"
        )?,
        None => {}
    }
    for backend in [BackendKind::Cpu, BackendKind::Gpu] {
        if let Some(best) = r.fastest_streaming(backend) {
            writeln!(
                out,
                "fastest {backend} streaming at N={}: B={} P={} ({} GB/s)",
                best.n,
                best.batch_size,
                best.workgroups,
                gbs(best.bytes_per_s.median)
            )?;
        }
    }
    Ok(())
}

fn write_csv(path: &Path, r: &BenchReport) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    w.write_record([
        "backend",
        "mode",
        "n",
        "batch_size",
        "workgroups",
        "seconds_median",
        "seconds_min",
        "seconds_max",
        "elements_per_s",
        "bytes_per_s",
        "device_seconds_median",
        "device_bytes_per_s",
        "upload_s",
        "compute_s",
        "readback_s",
        "merge_s",
        "fraction_of_ceiling",
        "kernel",
    ])?;
    for p in &r.points {
        w.write_record([
            p.backend.to_string(),
            p.mode.to_string(),
            p.n.to_string(),
            p.batch_size.to_string(),
            p.workgroups.to_string(),
            p.seconds.median.to_string(),
            p.seconds.min.to_string(),
            p.seconds.max.to_string(),
            p.elements_per_s.median.to_string(),
            p.bytes_per_s.median.to_string(),
            p.device_seconds
                .map_or(String::new(), |d| d.median.to_string()),
            p.device_bytes_per_s
                .map_or(String::new(), |d| d.median.to_string()),
            p.stages.upload.to_string(),
            p.stages.compute.to_string(),
            p.stages.readback.to_string(),
            p.stages.merge.to_string(),
            p.fraction_of_ceiling
                .map_or(String::new(), |f| f.to_string()),
            p.kernel.clone().unwrap_or_default(),
        ])?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One end-to-end measurement: a file through a whole `microbatch run` process.
#[derive(serde::Serialize)]
struct FileRun {
    file: String,
    input: String,
    bytes: u64,
    backend: String,
    count: u64,
    /// Seconds of each measured run.
    times: Vec<f64>,
    median_s: f64,
    gb_per_s: f64,
}

/// `bench --files`: each file through `microbatch run` as a separate process, warm-up runs
/// first (the page cache then holds the file), medians of the measured runs.
fn bench_files(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to run it")?;
    let mut rows = Vec::new();
    for file in &args.files {
        let bytes = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        for &backend in &args.backends {
            let backend = BackendKind::from(backend).to_string();
            let once = || -> Result<(f64, serde_json::Value)> {
                let t = std::time::Instant::now();
                let out = std::process::Command::new(&exe)
                    .arg("run")
                    .arg(file)
                    .args(["--json", "--quiet", "--backend", &backend])
                    .output()?;
                let secs = t.elapsed().as_secs_f64();
                anyhow::ensure!(
                    out.status.success(),
                    "microbatch run {} failed: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok((secs, serde_json::from_slice(&out.stdout)?))
            };
            for _ in 0..args.warmup {
                once()?;
            }
            let mut times = Vec::new();
            let mut last = serde_json::Value::Null;
            for _ in 0..args.runs {
                let (t, v) = once()?;
                times.push(t);
                last = v;
            }
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            rows.push(FileRun {
                file: file.display().to_string(),
                input: last["input"]["sources"][0]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                bytes,
                backend: backend.clone(),
                count: last["stats"]["count"].as_u64().unwrap_or(0),
                times,
                median_s: median,
                gb_per_s: bytes as f64 / median / 1e9,
            });
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:>9} {:>7} {:>12} {:>21} {:>8}",
        "file", "MB", "backend", "median ms", "min–max ms", "GB/s"
    )?;
    for r in &rows {
        let (lo, hi) = r
            .times
            .iter()
            .fold((f64::INFINITY, 0f64), |(a, b), &t| (a.min(t), b.max(t)));
        writeln!(
            out,
            "{:<40} {:>9.1} {:>7} {:>12.1} {:>21} {:>8.2}",
            r.file,
            r.bytes as f64 / 1e6,
            r.backend,
            r.median_s * 1e3,
            format!("{:.1}–{:.1}", lo * 1e3, hi * 1e3),
            r.gb_per_s
        )?;
    }
    writeln!(
        out,
        "(whole `microbatch run` processes, {} measured after {} warm-up; inputs: {})",
        args.runs,
        args.warmup,
        rows.iter()
            .map(|r| format!("{} = {}", r.file, r.input))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        let mut w =
            csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
        w.write_record(["file", "bytes", "backend", "count", "median_s", "gb_per_s"])?;
        for r in &rows {
            w.write_record([
                r.file.clone(),
                r.bytes.to_string(),
                r.backend.clone(),
                r.count.to_string(),
                r.median_s.to_string(),
                r.gb_per_s.to_string(),
            ])?;
        }
        w.flush()?;
    }
    Ok(())
}
