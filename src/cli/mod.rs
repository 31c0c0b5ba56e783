//! Command-line parsing (clap) → validated configuration → library calls → output.

mod bench;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use microbatch::source::{BatchSource, RandomSource, RawF32Source};
use microbatch::{BackendChoice, DEFAULT_BATCH_SIZE, Engine, EngineConfig, list_adapters};

/// Exact statistics of huge f32 streams, reduced in micro-batches on the GPU (wgpu) or the CPU.
#[derive(Debug, Parser)]
#[command(name = "microbatch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reduce an input to count, sum, mean, min, max, var and std, timing every stage.
    Run(RunArgs),
    /// Benchmark CPU against GPU: sweep N, B and P, measure the ceilings, fit T = N/P × S + D.
    Bench(bench::BenchArgs),
    /// List the GPU adapters wgpu can see, with the limits that matter here.
    Devices {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// A hardware GPU if there is one, else the CPU backend.
    Auto,
    /// A GPU adapter, software ones (lavapipe) included.
    Gpu,
    /// The multi-threaded CPU backend.
    Cpu,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Raw little-endian f32 file to reduce, or `-` for stdin.
    #[arg(
        value_name = "INPUT",
        required_unless_present = "random",
        conflicts_with = "random"
    )]
    input: Option<PathBuf>,

    /// Reduce N generated values, uniform in [0, 1) (like `np.random.rand(N)`); accepts 1e6.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    random: Option<u64>,

    /// Seed for --random; the same seed gives the same values whatever the batch size.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "random")]
    seed: u64,

    /// Elements per micro-batch (≥ 1; accepts 1e6).
    #[arg(short, long, value_name = "B", value_parser = parse_batch, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,

    /// Workgroups per dispatch, the P parallel processors (GPU only; default chosen per adapter).
    #[arg(short = 'p', long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    workgroups: Option<u32>,

    /// Backend: `auto` takes a hardware GPU when there is one, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Use the GPU adapter whose name contains TEXT (case-insensitive; see `microbatch devices`).
    #[arg(long, value_name = "TEXT")]
    adapter: Option<String>,

    /// Delta degrees of freedom: var divides by count − ddof (0 like numpy, 1 for the sample variance).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
    ddof: u32,

    /// Leave NaNs out of every statistic (numpy's nansum, nanmean, nanvar…).
    #[arg(long)]
    skip_nan: bool,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// A count given as an integer or in scientific notation (`1e8`), exactly integral.
pub(crate) fn parse_count(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    match s.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x <= 2f64.powi(53) => Ok(x as u64),
        _ => Err(format!(
            "expected a non-negative whole number such as 1000000 or 1e6, got {s:?}"
        )),
    }
}

fn parse_batch(s: &str) -> Result<usize, String> {
    let n = parse_count(s)?;
    if n == 0 {
        return Err("the batch size must be at least 1".to_string());
    }
    usize::try_from(n).map_err(|_| format!("batch size {n} is too large"))
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Bench(args) => bench::bench(args),
        Command::Devices { json } => devices(json),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let config = EngineConfig {
        backend: match args.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Gpu => BackendChoice::Gpu,
            BackendArg::Cpu => BackendChoice::Cpu,
        },
        adapter: args.adapter.clone(),
        batch_size: args.batch_size,
        workgroups: args.workgroups,
        ddof: args.ddof,
        skip_nan: args.skip_nan,
    };
    // Open the input first: a missing file is reported before a GPU is brought up.
    let mut source: Box<dyn BatchSource> = match (&args.input, args.random) {
        (_, Some(n)) => Box::new(RandomSource::new(n, args.seed)),
        (Some(p), None) if p.as_os_str() == "-" => Box::new(RawF32Source::from_reader(
            std::io::stdin().lock(),
            "<stdin>",
        )),
        (Some(p), None) => Box::new(RawF32Source::open(p)?),
        (None, None) => unreachable!("clap requires INPUT or --random"),
    };
    let mut engine = Engine::new(&config)?;
    let report = engine
        .run(source.as_mut())
        .with_context(|| format!("reducing {}", source.describe()))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report.to_json())?;
        writeln!(out)?;
    } else {
        writeln!(out, "input        {}", source.describe())?;
        writeln!(out, "{report}")?;
    }
    out.flush()?;
    Ok(())
}

fn devices(json: bool) -> Result<()> {
    let adapters = list_adapters();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &adapters)?;
        writeln!(out)?;
        return Ok(());
    }
    if adapters.is_empty() {
        writeln!(
            out,
            "no adapters found (Vulkan, Metal or DX12); `run --backend auto` uses the CPU backend"
        )?;
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        writeln!(out, "[{i}] {}", a.name)?;
        writeln!(out, "    api                 {}", a.api)?;
        let sw = if a.software {
            " (software: used only with --backend gpu or --adapter)"
        } else {
            ""
        };
        writeln!(out, "    device type         {}{sw}", a.device_type)?;
        writeln!(out, "    driver              {}", a.driver)?;
        writeln!(out, "    max buffer size     {} bytes", a.max_buffer_size)?;
        writeln!(
            out,
            "    max storage binding {} bytes",
            a.max_storage_binding
        )?;
        writeln!(
            out,
            "    subgroup sizes      {}..={}{}",
            a.subgroup_min_size,
            a.subgroup_max_size,
            if a.subgroups {
                ""
            } else {
                " (subgroup ops unavailable)"
            }
        )?;
        writeln!(
            out,
            "    timestamp queries   {}",
            if a.timestamps { "yes" } else { "no" }
        )?;
    }
    Ok(())
}
