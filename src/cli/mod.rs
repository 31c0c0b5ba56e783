//! Command-line parsing (clap) → validated configuration → library calls → output.

mod bench;
mod choose;
mod http;
#[cfg(feature = "plot")]
mod plot;
mod remote;
#[cfg(feature = "serve")]
mod serve;
#[cfg(feature = "serve")]
mod store;
mod table;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use microbatch::shard::PartialFile;
use microbatch::sketch::Histogram;
use microbatch::source::{
    BatchSource, Column, Delimiter, Dtype, Endian, Format, InputOptions, RandomSource, TextOptions,
};
use microbatch::{
    BackendChoice, DEFAULT_BATCH_SIZE, Engine, EngineConfig, Report, Stats, list_adapters,
};

/// Exact statistics of huge f32 streams, reduced in micro-batches on the GPU (wgpu) or the CPU.
#[derive(Debug, Parser)]
#[command(name = "microbatch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reduce inputs to count, sum, mean, min, max, var and std, timing every stage.
    Run(RunArgs),
    /// Combine partial results of shards (`run --partial`) into the statistics of all of them.
    Merge(MergeArgs),
    /// Benchmark CPU against GPU: sweep N, B and P, measure the ceilings, fit T = N/P × S + D.
    Bench(bench::BenchArgs),
    /// Serve the engine over HTTP: producers send micro-batches, one process owns the device.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Measure this machine's backends (S and D of T = N/P × S + D) and write the profile
    /// `--backend auto` chooses by (under the user's cache directory).
    Calibrate {
        /// Calibrate this GPU adapter (name substring; software ones allowed) instead of every
        /// hardware GPU `auto` may take (each is measured and kept in the profile).
        #[arg(long, value_name = "TEXT")]
        adapter: Option<String>,
        /// Write the profile here instead (`MICROBATCH_PROFILE` names where `auto` reads it).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List the GPU adapters wgpu can see, with the limits that matter here.
    Devices {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The backend the cost model predicts fastest for this input (see `calibrate`): the CPU
    /// unless a GPU's start-up pays off; a GPU is only probed when it is predicted to win.
    Auto,
    /// A GPU adapter, software ones (lavapipe) included.
    Gpu,
    /// The multi-threaded CPU backend.
    Cpu,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Inputs to reduce as one stream (`-` for stdin; named pipes and /dev/stdin work too). The
    /// format comes from --format, else the extension (.npy, .csv, .tsv, .txt/.dat, raw .f32,
    /// .f64, .i16, … of that type, .raw/.bin; .gz/.zst unpacked first), else the content (.npy
    /// and gzip/zstd magic); text or unknown binary without a format is an error saying what to
    /// pass. Each input is reduced at its own precision: f32, f64 (also text), integers exactly.
    #[arg(
        value_name = "INPUT",
        required_unless_present = "random",
        conflicts_with = "random"
    )]
    inputs: Vec<PathBuf>,

    /// Reduce N generated values, uniform in [0, 1) (like `np.random.rand(N)`); accepts 1e6.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    random: Option<u64>,

    /// Seed for --random; the same seed gives the same values whatever the batch size.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "random")]
    seed: u64,

    /// Input format, overriding the extension and the content: raw, npy, csv, tsv, txt
    /// (whitespace-separated).
    #[arg(long, value_name = "FORMAT")]
    format: Option<Format>,

    /// Raw binary element type (implies --format raw): f32, f64, f16, i8, i16, i32, i64, u8,
    /// u16, u32, u64, bool. Nothing is narrowed: f32 (and f16, exactly widened) is reduced in
    /// f32, f64 in f64, and integers and bools (0/1) exactly (count, sum, min and max exact;
    /// the report says which precision was used).
    #[arg(long, value_name = "TYPE")]
    dtype: Option<Dtype>,

    /// Raw binary byte order: little or big.
    #[arg(long, value_name = "ORDER", default_value = "little")]
    endian: Endian,

    /// Text inputs: the column to reduce, by header name or 0-based index. Several
    /// (comma-separated or repeated) are reduced in one pass, one row of statistics each.
    #[arg(
        long,
        value_name = "NAME|INDEX",
        value_delimiter = ',',
        default_value = "0"
    )]
    column: Vec<Column>,

    /// Arrays (.npy): reduce along axis K like numpy's `a.mean(axis=K)` (negative counts from
    /// the last), one row of statistics per position of the other axes, in numpy's order; C
    /// and Fortran order alike, in one pass without a transposed copy.
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    axis: Option<i64>,

    /// Text inputs: statistics per distinct value of this column (name or index; its text is
    /// the key), for each --column: a row per group, in first-seen order (or --sort-groups).
    #[arg(long, value_name = "COLUMN")]
    group_by: Option<Column>,

    /// With --group-by: rows in key order (numeric when every key is a number, else by text).
    #[arg(long, requires = "group_by")]
    sort_groups: bool,

    /// With --group-by: the most distinct keys; the next one is an error naming its line.
    #[arg(long, value_name = "N", requires = "group_by", default_value_t = microbatch::source::DEFAULT_MAX_GROUPS)]
    max_groups: usize,

    /// Text inputs: `all` reduces every numeric column in one pass (columns whose first rows
    /// hold numbers or null tokens; the others are listed as excluded).
    #[arg(long, value_name = "all", value_parser = ["all"], conflicts_with = "column")]
    columns: Option<String>,

    /// Text inputs: the first row names the columns (default: it does exactly when its selected
    /// field is not a number, or when --column is a name).
    #[arg(long, conflicts_with = "no_header")]
    header: bool,

    /// Text inputs: the first row is data, not column names.
    #[arg(long)]
    no_header: bool,

    /// Text inputs: fields meaning "no value", comma-separated (e.g. `NA,null,` — a trailing
    /// comma adds the empty field). Counted as nulls, apart from invalid fields.
    #[arg(long, value_name = "TOKENS", allow_hyphen_values = true)]
    null: Option<String>,

    /// Text inputs: the field delimiter (one character; `tab` or `\t` for tabs, `space` for runs
    /// of whitespace). Default: the format's (`,` for .csv, tab for .tsv, whitespace for .txt).
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    delimiter: Option<Delimiter>,

    /// Text inputs: count empty fields, non-numbers and missing columns and skip them, instead
    /// of stopping with an error naming the line and column.
    #[arg(long)]
    skip_invalid: bool,

    /// Read regular raw and .npy files through a buffer instead of memory-mapping them (mapped
    /// files are reduced in place, without a copy; a file truncated by another process while it
    /// is being read can then stop the program with SIGBUS, as for any program that maps files).
    #[arg(long)]
    no_mmap: bool,

    /// With several inputs, also give each input's own statistics.
    #[arg(long)]
    per_file: bool,

    /// Also write the mergeable partial result to FILE (see `microbatch merge`).
    #[arg(long, value_name = "FILE")]
    partial: Option<PathBuf>,

    /// Reduce on processing services (`microbatch serve`) instead of here: the inputs are read
    /// and cut into batches here, each batch is sent to one of the servers (comma-separated
    /// base URLs, e.g. http://10.0.0.5:8787), and their answers merged here in batch order. A
    /// batch whose request fails is sent again, to another server where there is one.
    /// Batches of 1 Mi elements unless --batch-size says otherwise.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    remote: Vec<String>,

    /// With --remote: a file holding the servers' bearer token.
    #[arg(long, value_name = "FILE", requires = "remote")]
    token_file: Option<PathBuf>,

    /// Elements per micro-batch (≥ 1; accepts 1e6). Default: 16 Mi for inputs reduced in place
    /// (memory-mapped raw and .npy files, text, Parquet, Arrow), 4 Mi for inputs read through a
    /// buffer (stdin, pipes, compressed files, --no-mmap): the fastest of each, measured.
    #[arg(short, long, value_name = "B", value_parser = parse_batch)]
    batch_size: Option<usize>,

    /// Workgroups per dispatch, the P parallel processors (GPU only; default chosen per adapter).
    #[arg(short = 'p', long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    workgroups: Option<u32>,

    /// Backend: `auto` takes a hardware GPU when there is one, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Use the GPU adapter whose name contains TEXT (case-insensitive; see `microbatch devices`).
    #[arg(long, value_name = "TEXT")]
    adapter: Option<String>,

    #[command(flatten)]
    stats: StatsArgs,

    #[command(flatten)]
    rows: table::RowArgs,

    /// Quantiles to report, comma-separated (each in [0, 1]): the values numpy's
    /// `quantile(a, q, method="inverted_cdf")` gives (`nanquantile` with --skip-nan), within
    /// --quantile-error relatively, from a mergeable sketch built in the same pass (it goes into
    /// --partial files, and `merge` combines it exactly).
    #[arg(long, value_name = "Q,…", value_delimiter = ',', value_parser = parse_quantile)]
    quantiles: Vec<f64>,

    /// The median (the 0.5 quantile; see --quantiles).
    #[arg(long)]
    median: bool,

    /// The quantiles' relative error bound (0 < E ≤ 0.25). The sketch keeps mantissa bits for
    /// it: its own bound, a power of two at or below E, is what the report states.
    #[arg(long, value_name = "E", default_value_t = microbatch::sketch::DEFAULT_QUANTILE_ERROR)]
    quantile_error: f64,

    /// A histogram of the values in BINS bins from the exact minimum to the exact maximum (from
    /// the quantile sketch: a value within --quantile-error of a bin edge may be counted in the
    /// bin beside it; every other value is in its own bin). NaN and infinities are counted
    /// apart. With several columns, groups or an --axis: one per row. Printed with the table
    /// or --json (not with --csv/--tsv, whose rows have no place for it).
    #[arg(long, value_name = "BINS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    histogram: Option<u32>,

    /// With --histogram: linear bins (equal widths) or log bins (equal ratios; positive data).
    #[arg(
        long,
        value_name = "SCALE",
        default_value = "linear",
        requires = "histogram"
    )]
    histogram_scale: HistogramScale,

    /// With --histogram: also draw it as SVG to FILE.svg (several rows: one chart each,
    /// stacked, at most 64).
    #[cfg(feature = "plot")]
    #[arg(long, value_name = "FILE.svg", requires = "histogram")]
    histogram_plot: Option<PathBuf>,

    /// No progress bar (it shows on a terminal once a run takes over a second).
    #[arg(short, long)]
    quiet: bool,
}

/// How histogram bins are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HistogramScale {
    Linear,
    Log,
}

/// What the statistics mean and how they are printed.
#[derive(Debug, Args)]
struct StatsArgs {
    /// Delta degrees of freedom: var divides by count − ddof (0 like numpy, 1 for the sample
    /// variance; any integer ≥ 0). var and std are null when count ≤ ddof.
    #[arg(long, default_value_t = 0)]
    ddof: u32,

    /// Leave NaNs out of every statistic (numpy's nansum, nanmean, nanvar…).
    #[arg(long)]
    skip_nan: bool,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// Partial files written by `run --partial` (`-` reads one or more JSON objects from stdin).
    #[arg(value_name = "PARTIAL", required = true)]
    partials: Vec<PathBuf>,

    /// Also write the merged partial to FILE (for a merge of merges).
    #[arg(long, value_name = "FILE")]
    partial: Option<PathBuf>,

    /// Delta degrees of freedom for the merged variance (any integer ≥ 0). Default: the one the
    /// shards were run with (an error if they differ).
    #[arg(long)]
    ddof: Option<u32>,

    /// Leave NaNs out of the merged statistics. Default: as the shards were run (an error if
    /// they differ).
    #[arg(long, conflicts_with = "keep_nan")]
    skip_nan: bool,

    /// Keep NaNs in the merged statistics (numpy's rule: any NaN makes them NaN).
    #[arg(long)]
    keep_nan: bool,

    /// Quantiles of all the shards' values (each in [0, 1]), from their sketches merged
    /// exactly: every shard must have been run with --quantiles or --median.
    #[arg(long, value_name = "Q,…", value_delimiter = ',', value_parser = parse_quantile)]
    quantiles: Vec<f64>,

    /// The median of all the shards' values (see --quantiles).
    #[arg(long)]
    median: bool,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    rows: table::RowArgs,

    /// Shards of groups: rows in key order (numeric when every key is a number, else by text).
    #[arg(long)]
    sort_groups: bool,
}

fn parse_delimiter(s: &str) -> Result<Delimiter, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok(Delimiter::Byte(b'\t')),
        "space" | "whitespace" | " " => Ok(Delimiter::Whitespace),
        _ if s.len() == 1 && s.is_ascii() => Ok(Delimiter::Byte(s.as_bytes()[0])),
        _ => Err(format!(
            "the delimiter must be one ASCII character, `tab` or `space`, got {s:?}"
        )),
    }
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
        Command::Merge(args) => merge(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::serve(args),
        Command::Bench(args) => bench::bench(args),
        Command::Calibrate { adapter, output } => choose::calibrate(adapter, output),
        Command::Devices { json } => devices(json),
    }
}

/// A quantile: a number in [0, 1].
fn parse_quantile(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(q) if (0.0..=1.0).contains(&q) => Ok(q),
        Ok(q) => Err(format!("{q} is not a quantile: it must lie in [0, 1]")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

impl RunArgs {
    /// The quantiles asked for (--quantiles, and 0.5 for --median), in order, once each.
    fn quantile_list(&self) -> Vec<f64> {
        let mut qs = self.quantiles.clone();
        if self.median && !qs.contains(&0.5) {
            qs.insert(0, 0.5);
        }
        qs
    }
}

fn run(args: RunArgs) -> Result<()> {
    let mut config = EngineConfig {
        backend: match args.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Gpu => BackendChoice::Gpu,
            BackendArg::Cpu => BackendChoice::Cpu,
        },
        adapter: args.adapter.clone(),
        batch_size: args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        workgroups: args.workgroups,
        ddof: args.stats.ddof,
        skip_nan: args.stats.skip_nan,
    };
    let options = InputOptions {
        format: args.format,
        dtype: args.dtype,
        endian: args.endian,
        text: TextOptions {
            column: args.column[0].clone(),
            columns: if args.column.len() > 1 {
                args.column.clone()
            } else {
                Vec::new()
            },
            all_columns: args.columns.is_some(),
            group_by: args.group_by.clone(),
            max_groups: args.max_groups,
            header: if args.header {
                Some(true)
            } else if args.no_header {
                Some(false)
            } else {
                None
            },
            delimiter: args.delimiter,
            skip_invalid: args.skip_invalid,
            nulls: args
                .null
                .as_deref()
                .map(|t| t.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        },
        no_mmap: args.no_mmap,
    };
    if args.inputs.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        anyhow::bail!("stdin (`-`) can be read only once");
    }
    let several = args.column.len() > 1
        || args.columns.is_some()
        || args.axis.is_some()
        || args.group_by.is_some();
    if several {
        let other = if args.random.is_some() {
            Some("--random")
        } else if !args.remote.is_empty() {
            Some("--remote")
        } else {
            None
        };
        if let Some(flag) = other {
            anyhow::bail!(
                "{flag} reduces one series: it takes one --column, not several columns or an --axis"
            );
        }
    }
    // Every input is checked before a GPU is brought up or anything is reduced: a missing file
    // or a directory is reported first. Headers are read as each input is opened.
    let mut total_bytes = Some(0u64);
    for p in args.inputs.iter().filter(|p| p.as_os_str() != "-") {
        let len = microbatch::source::input_len(p)?;
        total_bytes = total_bytes.zip(len).map(|(t, l)| t + l);
    }
    if args.inputs.iter().any(|p| p.as_os_str() == "-") {
        total_bytes = None;
    }
    if let Some(n) = args.random {
        total_bytes = Some(n * 4);
    }

    if args.histogram.is_some() && args.rows.delimited() {
        anyhow::bail!(
            "--histogram prints with the table or --json: --csv/--tsv rows have no place for it"
        );
    }
    if !args.remote.is_empty() {
        if args.histogram.is_some() {
            anyhow::bail!("--histogram is not available with --remote: drop --remote to get it");
        }
        return run_remote(&args, &options, total_bytes);
    }
    // `auto` without an adapter: the cost model decides, before any GPU is probed. N is the
    // number of f32 values: f64, integer and text inputs are reduced by the CPU kernels on
    // either backend (the GPU kernel reads f32), so only f32 inputs can gain from a GPU. Each
    // file is opened to ask (headers only; nothing is read twice but a header).
    let choice = if args.backend == BackendArg::Auto && args.adapter.is_none() {
        let n = match (args.random, total_bytes) {
            (Some(n), _) => Some(n),
            (None, None) => None,
            (None, Some(_)) => {
                let mut f32_values = 0u64;
                for p in &args.inputs {
                    let source = microbatch::source::open(p, &options)?;
                    if source.element() == microbatch::source::Element::F32 {
                        f32_values += source.len_bytes().unwrap_or(0) / 4;
                    }
                }
                Some(f32_values)
            }
        };
        let c = choose::choose(n)?;
        match &c.gpu {
            None => config.backend = BackendChoice::Cpu,
            Some(name) if name.is_empty() => config.backend = BackendChoice::Auto,
            Some(name) => {
                config.backend = BackendChoice::Gpu;
                config.adapter = Some(name.clone());
            }
        }
        Some(c)
    } else {
        None
    };
    let mut engine = match Engine::new(&config) {
        // The profile's adapter is gone (another machine's profile, a driver removed): the
        // CPU, saying so.
        Err(microbatch::Error::AdapterNotFound { .. }) if choice.is_some() => {
            eprintln!(
                "microbatch: the calibrated GPU {:?} is not here; reducing on the CPU (run `microbatch calibrate` again)",
                config.adapter.as_deref().unwrap_or("")
            );
            config.backend = BackendChoice::Cpu;
            config.adapter = None;
            Engine::new(&config)?
        }
        other => other?,
    };
    if args.batch_size.is_none() {
        engine.set_buffered_batch_size(microbatch::BUFFERED_BATCH_SIZE);
    }
    let qs = args.quantile_list();
    if !qs.is_empty() || args.histogram.is_some() {
        engine.set_quantiles(Some(args.quantile_error))?;
    }
    let mut noticed = engine.notice().map(str::to_string);
    if let Some(notice) = &noticed {
        eprintln!("microbatch: {notice}");
    }
    let progress = Progress::new(total_bytes, args.quiet);
    if several {
        return run_columns(&args, &options, &mut engine, &progress);
    }
    let mut reports = Vec::new();
    let mut described = Vec::new();
    let mut done_bytes = 0u64;
    let mut run_one = |mut source: Box<dyn BatchSource>| -> Result<()> {
        let report = engine
            .run_observed(source.as_mut(), &mut |s| {
                progress.update(done_bytes + s.bytes_read())
            })
            .with_context(|| format!("reducing {}", source.describe()))?;
        if engine.notice() != noticed.as_deref() {
            noticed = engine.notice().map(str::to_string);
            if let Some(notice) = &noticed {
                eprintln!("microbatch: {notice}");
            }
        }
        done_bytes += source.bytes_read();
        described.push(Described::of(source.as_ref()));
        reports.push(report);
        Ok(())
    };
    if let Some(n) = args.random {
        run_one(Box::new(RandomSource::new(n, args.seed)))?;
    }
    for p in &args.inputs {
        let source = if p.as_os_str() == "-" {
            microbatch::source::open_reader(Box::new(std::io::stdin()), "<stdin>", &options)?
        } else {
            microbatch::source::open(p, &options)?
        };
        run_one(source)?;
    }
    progress.finish();
    let report = Report::combine(&reports).expect("at least one input");
    report.partial.check_range("the inputs together")?;
    let skipped: u64 = described.iter().map(|d| d.skipped).sum();

    let histogram = match args.histogram {
        Some(_) => args.histogram_of(report.sketch.as_ref(), &report.partial)?,
        None => None,
    };
    // Everything succeeded: only now is anything written.
    write_partial(&args, report.partial, report.sketch.clone(), skipped)?;
    #[cfg(feature = "plot")]
    if let (Some(path), Some(h)) = (&args.histogram_plot, &histogram) {
        plot::histograms(path, &[(None, h, &report.partial)])
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    let quantiles_of =
        |r: &Report| -> Vec<Option<f64>> { qs.iter().map(|&q| r.quantile(q)).collect() };
    if args.stats.json {
        let mut v = report.to_json();
        v["input"] = Described::inputs_json(&described, skipped);
        if !qs.is_empty() {
            v["stats"]["quantiles"] = Report::quantiles_json(
                report.sketch.as_ref(),
                &report.partial,
                report.stats.skip_nan,
                &qs,
            );
            v["quantile_error"] =
                serde_json::json!(report.sketch.as_ref().map(|s| s.relative_error()));
        }
        if args.histogram.is_some() {
            v["histogram"] = histogram_json(histogram.as_ref(), &report.partial);
        }
        if let Some(c) = &choice {
            v["choice"] = c.json.clone();
        }
        if args.per_file {
            v["files"] = reports
                .iter()
                .zip(&described)
                .map(|(r, d)| {
                    let mut stats = Report::stats_json(&r.stats);
                    if !qs.is_empty() {
                        stats["quantiles"] = Report::quantiles_json(
                            r.sketch.as_ref(),
                            &r.partial,
                            r.stats.skip_nan,
                            &qs,
                        );
                    }
                    serde_json::json!({
                        "input": d.name,
                        "stats": stats,
                    })
                })
                .collect();
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else if args.rows.delimited() {
        let mut rows = vec![table::Row {
            key: if described.len() == 1 {
                described[0].name.clone()
            } else {
                "all".to_string()
            },
            stats: &report.stats,
            nulls: described.iter().map(|d| d.nulls).sum(),
            skipped,
            quantiles: quantiles_of(&report),
        }];
        if args.per_file {
            rows.extend(reports.iter().zip(&described).map(|(r, d)| table::Row {
                key: d.name.clone(),
                stats: &r.stats,
                nulls: d.nulls,
                skipped: d.skipped,
                quantiles: quantiles_of(r),
            }));
        }
        args.rows.write(&mut out, "input", &rows, &qs)?;
    } else {
        for d in &described {
            writeln!(out, "input        {}", d.name)?;
        }
        if args.skip_invalid {
            writeln!(out, "skipped      {skipped} invalid field(s)")?;
        }
        writeln!(out, "{report}")?;
        write_quantiles(
            &mut out,
            report.sketch.as_ref(),
            &report.partial,
            report.stats.skip_nan,
            &qs,
        )?;
        if args.histogram.is_some() {
            write_histogram(&mut out, histogram.as_ref(), &report.partial)?;
        }
        if let Some(c) = &choice {
            writeln!(out, "chosen       {}", c.line)?;
        }
        if args.per_file {
            writeln!(out)?;
            let rows: Vec<table::Row<'_>> = reports
                .iter()
                .zip(&described)
                .map(|(r, d)| table::Row {
                    key: d.name.clone(),
                    stats: &r.stats,
                    nulls: d.nulls,
                    skipped: d.skipped,
                    quantiles: quantiles_of(r),
                })
                .collect();
            args.rows.write(&mut out, "file", &rows, &qs)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `run` with several columns: each input read in one pass per input, every column to its own
/// statistics, one row each.
fn run_columns(
    args: &RunArgs,
    options: &InputOptions,
    engine: &mut Engine,
    progress: &Progress,
) -> Result<()> {
    let mut reports = Vec::new();
    let mut names = Vec::new();
    let mut done_bytes = 0u64;
    let mut result_shape = None;
    let mut axis_k = None;
    for p in &args.inputs {
        let mut source = if p.as_os_str() == "-" {
            microbatch::source::open_reader(Box::new(std::io::stdin()), "<stdin>", options)?
        } else {
            microbatch::source::open(p, options)?
        };
        let name = source.describe();
        let mut along;
        let columns: &mut dyn microbatch::source::ColumnsSource = match args.axis {
            Some(k) => {
                let batch = args.batch_size.unwrap_or(microbatch::BUFFERED_BATCH_SIZE);
                along = microbatch::source::AxisSource::new(source, k, batch)?;
                result_shape = Some(along.result_shape().to_vec());
                axis_k = Some(along.axis());
                &mut along
            }
            None => match source.as_columns() {
                Some(c) => c,
                None => anyhow::bail!(
                    "{name}: several columns are read from text, Parquet and Arrow inputs; reduce this input one --column at a time"
                ),
            },
        };
        let report = engine
            .run_columns(columns, &mut |s| {
                progress.update(done_bytes + s.bytes_read())
            })
            .with_context(|| format!("reducing {name}"))?;
        done_bytes += columns.bytes_read();
        names.push(columns.describe());
        reports.push(report);
    }
    progress.finish();
    let Some(mut report) = microbatch::ColumnsReport::combine(&reports) else {
        let list = |r: &microbatch::ColumnsReport| {
            r.columns
                .iter()
                .map(|c| c.label())
                .collect::<Vec<_>>()
                .join(", ")
        };
        anyhow::bail!(
            "the inputs' columns differ ({} has {}; {} has {}): reduce them apart",
            names[0],
            list(&reports[0]),
            names[reports.len() - 1],
            list(&reports[reports.len() - 1])
        );
    };
    for c in &report.columns {
        c.partial
            .check_range(&format!("the inputs together, series {}", c.label()))?;
    }
    if args.sort_groups {
        sort_groups(&mut report.columns);
    }
    let (key, several_columns) = series_rows(&report.columns, args.axis.is_some());
    let qs = args.quantile_list();
    let quantiles_of = |c: &microbatch::ColumnStats| series_quantiles(c, &qs);
    type Owned = (String, microbatch::Stats, u64, u64, Vec<Option<f64>>);
    let row_key = |c: &microbatch::ColumnStats| row_key(c, several_columns);
    // Each row's histogram (with --histogram), in the report's column order.
    let histograms_of = |r: &microbatch::ColumnsReport| -> Result<Vec<Option<Histogram>>> {
        if args.histogram.is_none() {
            return Ok(Vec::new());
        }
        r.columns
            .iter()
            .map(|c| {
                args.histogram_of(c.sketch.as_ref(), &c.partial)
                    .with_context(|| format!("the histogram of {}", row_key(c)))
            })
            .collect()
    };
    let histograms = histograms_of(&report)?;
    // Everything succeeded: only now is anything written.
    if let Some(path) = &args.partial {
        let mut file = microbatch::SeriesPartialFile::of(
            &report,
            axis_k.zip(result_shape.clone()),
            partial_inputs(args),
            args.stats.ddof,
            args.stats.skip_nan,
        );
        file.grouped = args.group_by.is_some();
        file.write(path)?;
    }
    #[cfg(feature = "plot")]
    if let Some(path) = &args.histogram_plot {
        let charts: Vec<_> = report
            .columns
            .iter()
            .zip(&histograms)
            .filter_map(|(c, h)| Some((Some(row_key(c)), h.as_ref()?, &c.partial)))
            .collect();
        if charts.len() > plot::MAX_HISTOGRAM_CHARTS {
            anyhow::bail!(
                "--histogram-plot draws at most {} charts; this run has {} rows: pick fewer columns",
                plot::MAX_HISTOGRAM_CHARTS,
                charts.len()
            );
        }
        plot::histograms(path, &charts).with_context(|| format!("drawing {}", path.display()))?;
    }
    let rows_of = |r: &microbatch::ColumnsReport| -> Vec<Owned> {
        r.columns
            .iter()
            .map(|c| (row_key(c), c.stats, c.nulls, c.skipped, quantiles_of(c)))
            .collect()
    };
    // Each column's `stats` JSON with its quantiles, and its histogram beside `stats`.
    let with_quantiles = |r: &microbatch::ColumnsReport,
                          histograms: &[Option<Histogram>],
                          v: &mut serde_json::Value| {
        let list = if r.grouped() { "groups" } else { "columns" };
        for (i, (c, j)) in r
            .columns
            .iter()
            .zip(v[list].as_array_mut().into_iter().flatten())
            .enumerate()
        {
            if !qs.is_empty() {
                j["stats"]["quantiles"] =
                    Report::quantiles_json(c.sketch.as_ref(), &c.partial, c.stats.skip_nan, &qs);
            }
            if args.histogram.is_some() {
                j["histogram"] =
                    histogram_json(histograms.get(i).and_then(Option::as_ref), &c.partial);
            }
        }
    };
    let mut out = std::io::stdout().lock();
    if args.stats.json {
        let mut v = report.to_json();
        with_quantiles(&report, &histograms, &mut v);
        v["inputs"] = names.iter().map(|n| serde_json::json!(n)).collect();
        if let Some(shape) = &result_shape {
            v["axis"] = serde_json::json!({ "axis": args.axis, "result_shape": shape });
        }
        if args.per_file {
            v["files"] = reports
                .iter()
                .zip(&names)
                .map(|(r, n)| {
                    let mut f = r.to_json();
                    with_quantiles(r, &histograms_of(r)?, &mut f);
                    f["input"] = serde_json::json!(n);
                    Ok(f)
                })
                .collect::<Result<Vec<_>>>()?
                .into();
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let mut owned = rows_of(&report);
    if args.per_file && reports.len() > 1 {
        for (r, n) in reports.iter().zip(&names) {
            owned.extend(
                rows_of(r)
                    .into_iter()
                    .map(|(k, s, nl, sk, q)| (format!("{n}: {k}"), s, nl, sk, q)),
            );
        }
    }
    let rows: Vec<table::Row<'_>> = owned
        .iter()
        .map(|(key, stats, nulls, skipped, quantiles)| table::Row {
            key: key.clone(),
            stats,
            nulls: *nulls,
            skipped: *skipped,
            quantiles: quantiles.clone(),
        })
        .collect();
    if args.rows.delimited() {
        args.rows.write(&mut out, key, &rows, &qs)?;
        out.flush()?;
        return Ok(());
    }
    for n in &names {
        writeln!(out, "input        {n}")?;
    }
    for (c, why) in &report.excluded {
        writeln!(out, "excluded     column {c}: {why}")?;
    }
    writeln!(out)?;
    args.rows.write(&mut out, key, &rows, &qs)?;
    for (c, h) in report.columns.iter().zip(&histograms) {
        writeln!(out)?;
        writeln!(out, "{key:<12} {}", row_key(c))?;
        write_histogram(&mut out, h.as_ref(), &c.partial)?;
    }
    write_quantile_note(&mut out, &report.columns, &qs)?;
    let t = &report.timings;
    let b = &report.backend;
    writeln!(out)?;
    writeln!(
        out,
        "backend      {} ({}), {} round(s) of up to {} values per column",
        b.kind, b.adapter, report.batches.count, report.batches.size
    )?;
    writeln!(
        out,
        "timings      read {:.3} s, compute {:.3} s ({}), merge {:.3} s, total {:.3} s",
        t.read.as_secs_f64(),
        t.compute.as_secs_f64(),
        t.compute_clock.as_str(),
        t.merge.as_secs_f64(),
        t.total.as_secs_f64()
    )?;
    out.flush()?;
    Ok(())
}

/// `merge`'s first line: how many partials over how many inputs.
fn write_merged_line(out: &mut impl Write, partials: usize, inputs: usize) -> Result<()> {
    writeln!(
        out,
        "merged       {partials} partial(s) over {inputs} input(s)"
    )?;
    Ok(())
}

/// The line under a table of rows with quantiles: what they are and their error bound.
fn write_quantile_note(
    out: &mut impl Write,
    columns: &[microbatch::ColumnStats],
    qs: &[f64],
) -> Result<()> {
    if let Some(s) = columns
        .iter()
        .find_map(|c| c.sketch.as_ref())
        .filter(|_| !qs.is_empty())
    {
        writeln!(
            out,
            "quantiles as numpy's inverted_cdf, within {} % relative error",
            table::significant(s.relative_error() * 100.0, 3)
        )?;
    }
    Ok(())
}

/// How the rows of several series are named: the header of the key column (`index` for axis
/// lanes, `group`, `group/column`, `column`) and whether a group's rows name their column too
/// (groups of several columns).
fn series_rows(columns: &[microbatch::ColumnStats], axis: bool) -> (&'static str, bool) {
    let grouped = columns.iter().any(|c| c.group.is_some());
    // Only groups need asking: a million axis lanes are not compared for it.
    let several_columns = grouped && {
        let first = columns.first().map(|c| c.label());
        columns.iter().any(|c| Some(c.label()) != first)
    };
    let key = match (axis, grouped, several_columns) {
        (true, _, _) => "index",
        (false, true, false) => "group",
        (false, true, true) => "group/column",
        (false, false, _) => "column",
    };
    (key, several_columns)
}

/// A series' row name: its group's key (and column, with `several_columns`) or its column.
fn row_key(c: &microbatch::ColumnStats, several_columns: bool) -> String {
    match (&c.group, several_columns) {
        (Some(g), false) => g.clone(),
        (Some(g), true) => format!("{g}/{}", c.label()),
        (None, _) => c.label(),
    }
}

/// A series' quantiles `qs` from its sketch (`None` each without one or without values).
fn series_quantiles(c: &microbatch::ColumnStats, qs: &[f64]) -> Vec<Option<f64>> {
    qs.iter()
        .map(|&q| {
            c.sketch
                .as_ref()
                .and_then(|s| s.quantile_of(&c.partial, c.stats.skip_nan, q))
        })
        .collect()
}

/// Puts the groups of a report in key order: numeric when every key is a number, else by text;
/// a group's columns keep their order.
fn sort_groups(columns: &mut [microbatch::ColumnStats]) {
    let numeric = columns.iter().all(|c| {
        c.group
            .as_deref()
            .is_some_and(|g| g.trim().parse::<f64>().is_ok())
    });
    if numeric {
        columns.sort_by(|a, b| {
            let k = |c: &microbatch::ColumnStats| {
                c.group
                    .as_deref()
                    .and_then(|g| g.trim().parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            k(a).total_cmp(&k(b))
        });
    } else {
        columns.sort_by(|a, b| a.group.cmp(&b.group));
    }
}

/// Writes `--partial FILE` (if asked) once a run has succeeded.
fn write_partial(
    args: &RunArgs,
    partial: microbatch::Partial,
    sketch: Option<microbatch::sketch::Sketch>,
    skipped: u64,
) -> Result<()> {
    let Some(path) = &args.partial else {
        return Ok(());
    };
    PartialFile {
        sketch,
        partial,
        ddof: args.stats.ddof,
        skip_nan: args.stats.skip_nan,
        inputs: partial_inputs(args),
        skipped_invalid: skipped,
    }
    .write(path)?;
    Ok(())
}

/// What a run's partial file says it reduced.
fn partial_inputs(args: &RunArgs) -> Vec<String> {
    let mut inputs: Vec<String> = args
        .random
        .map(|n| format!("random({n}, seed {})", args.seed))
        .into_iter()
        .collect();
    inputs.extend(args.inputs.iter().map(|p| p.display().to_string()));
    inputs
}

/// `run --remote`: every input's batches through the processing services, the same report as
/// a local run plus what each server did.
fn run_remote(args: &RunArgs, options: &InputOptions, total_bytes: Option<u64>) -> Result<()> {
    let start = std::time::Instant::now();
    let token = args
        .token_file
        .as_deref()
        .map(remote::read_token)
        .transpose()?;
    let endpoints = args
        .remote
        .iter()
        .map(|url| http::Endpoint::parse(url).map_err(|e| anyhow::anyhow!("--remote {e}")))
        .collect::<Result<Vec<_>>>()?;
    let batch = args.batch_size.unwrap_or(1 << 20);
    let qs = args.quantile_list();
    // With quantiles, every server sends back a sketch of its batch; they merge here exactly.
    let quantile_error = (!qs.is_empty()).then_some(args.quantile_error);
    if let Some(e) = quantile_error {
        microbatch::sketch::mantissa_bits_for(e)?;
    }
    let mut remote = remote::Remote::start(
        &args.remote,
        endpoints,
        token,
        args.stats.ddof,
        quantile_error,
        batch,
    );
    let progress = Progress::new(total_bytes, args.quiet);
    let mut described = Vec::new();
    let mut batches = 0;
    let mut done_bytes = 0u64;
    let mut sources: Vec<Box<dyn BatchSource>> = Vec::new();
    if let Some(n) = args.random {
        sources.push(Box::new(RandomSource::new(n, args.seed)));
    }
    let mut inputs = args.inputs.iter();
    loop {
        let mut source = match sources.pop() {
            Some(s) => s,
            None => match inputs.next() {
                None => break,
                Some(p) if p.as_os_str() == "-" => {
                    microbatch::source::open_reader(Box::new(std::io::stdin()), "<stdin>", options)?
                }
                Some(p) => microbatch::source::open(p, options)?,
            },
        };
        batches += remote
            .send_all(source.as_mut())
            .with_context(|| format!("sending {}", source.describe()))?;
        done_bytes += source.bytes_read();
        progress.update(done_bytes);
        described.push(Described::of(source.as_ref()));
    }
    let remote::Finished {
        partial,
        sketch,
        servers,
        backend,
        times,
    } = remote.finish()?;
    progress.finish();
    let kind = match backend.as_ref().and_then(|b| b["kind"].as_str()) {
        Some("gpu") => microbatch::BackendKind::Gpu,
        _ => microbatch::BackendKind::Cpu,
    };
    let report = Report {
        stats: partial.finish(args.stats.ddof, args.stats.skip_nan),
        backend: microbatch::BackendInfo {
            kind,
            adapter: format!(
                "remote: {} ({})",
                args.remote.join(", "),
                backend
                    .as_ref()
                    .and_then(|b| b["adapter"].as_str())
                    .unwrap_or("no batch sent")
            ),
            api: "http".to_string(),
            device_type: "remote".to_string(),
            workgroups: times.workgroups,
        },
        batches: microbatch::report::BatchCounts {
            count: batches,
            size: batch,
            workgroups: times.workgroups,
        },
        // The stages as a remote run has them: read here, upload = waiting on the network and
        // the servers, compute = the servers' own (summed over batches), merge here.
        timings: microbatch::report::Timings {
            read: times.read,
            upload: times.wait,
            compute: times.server_compute,
            readback: std::time::Duration::ZERO,
            merge: times.merge,
            total: start.elapsed(),
            compute_clock: microbatch::backend::ComputeClock::Wall,
        },
        partial,
        sketch,
    };
    let skipped: u64 = described.iter().map(|d| d.skipped).sum();
    write_partial(args, partial, report.sketch.clone(), skipped)?;
    let per_server: Vec<serde_json::Value> = servers
        .iter()
        .map(|s| {
            serde_json::json!({
                "url": s.url,
                "batches": s.batches,
                "bytes": s.bytes,
                "retries": s.retries,
                "busy_s": s.busy.as_secs_f64(),
                "last_error": s.last_error,
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.stats.json {
        let mut v = report.to_json();
        v["input"] = Described::inputs_json(&described, skipped);
        if !qs.is_empty() {
            v["stats"]["quantiles"] = Report::quantiles_json(
                report.sketch.as_ref(),
                &report.partial,
                report.stats.skip_nan,
                &qs,
            );
            v["quantile_error"] =
                serde_json::json!(report.sketch.as_ref().map(|s| s.relative_error()));
        }
        v["remote"] = serde_json::json!({ "servers": per_server });
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        for d in &described {
            writeln!(out, "input        {}", d.name)?;
        }
        writeln!(out, "{report}")?;
        write_quantiles(
            &mut out,
            report.sketch.as_ref(),
            &report.partial,
            report.stats.skip_nan,
            &qs,
        )?;
        for s in &servers {
            writeln!(
                out,
                "server       {}: {} batches, {:.1} MB, {} retries, busy {:.3} s",
                s.url,
                s.batches,
                s.bytes as f64 / 1e6,
                s.retries,
                s.busy.as_secs_f64()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

impl Described {
    /// The report's `input` object: every source, and the fields skipped as invalid.
    fn inputs_json(described: &[Described], skipped: u64) -> serde_json::Value {
        serde_json::json!({
            "sources": described.iter().map(Described::to_json).collect::<Vec<_>>(),
            "skipped_invalid": skipped,
        })
    }
}

/// What a report says about one input.
struct Described {
    name: String,
    shape: Option<Vec<u64>>,
    /// The element type as read (`f32`, `i64`, `text`, …).
    dtype: String,
    /// The precision it was reduced in.
    precision: &'static str,
    skipped: u64,
    nulls: u64,
}

impl Described {
    /// What `source` says of itself once read.
    fn of(source: &dyn BatchSource) -> Self {
        Self {
            name: source.describe(),
            shape: source.shape().map(<[u64]>::to_vec),
            skipped: source.skipped(),
            nulls: source.nulls(),
            dtype: source.dtype_name(),
            precision: source.element().name(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "shape": self.shape,
            "dtype": self.dtype,
            "precision": self.precision,
            "skipped_invalid": self.skipped,
            "nulls": self.nulls,
        })
    }
}

/// A progress bar on stderr: bytes read, rate, and the ETA when the input's size is known.
/// It appears only on a terminal, only once a run has taken a second, and never with --quiet.
struct Progress {
    bar: indicatif::ProgressBar,
    start: std::time::Instant,
    enabled: bool,
    shown: std::cell::Cell<bool>,
}

impl Progress {
    fn new(total: Option<u64>, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bar = match total {
            Some(t) => indicatif::ProgressBar::with_draw_target(
                Some(t),
                indicatif::ProgressDrawTarget::hidden(),
            )
            .with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("valid template"),
            ),
            None => indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::hidden(),
            )
            .with_style(
                indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        Self {
            bar,
            start: std::time::Instant::now(),
            enabled: !quiet && std::io::stderr().is_terminal(),
            shown: std::cell::Cell::new(false),
        }
    }

    fn update(&self, bytes: u64) {
        if self.enabled
            && !self.shown.get()
            && self.start.elapsed() > std::time::Duration::from_secs(1)
        {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.shown.set(true);
        }
        self.bar.set_position(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The command-line flags that mend a library error, where there are some (the library's
/// messages name its own options, not the flags).
pub(crate) fn hint(e: &microbatch::Error) -> Option<&'static str> {
    use microbatch::{ColumnRef, Error, Location};
    Some(match e {
        Error::UnknownFormat {
            looks_like_text: true,
            ..
        } => "pass --format csv or --format txt",
        Error::UnknownFormat { .. } => "pass --format raw --dtype f32 (or f64, i16, …)",
        // A field of the column that is not a number (the error names the column by index;
        // a missing column, an empty input or a CSV syntax error do not).
        Error::InvalidInput {
            at:
                Location::Line {
                    column: Some(ColumnRef { index: Some(_), .. }),
                    ..
                },
            message,
            ..
        } => {
            if message == "empty field" {
                "--null '' counts empty fields as nulls; --skip-invalid skips fields that are not numbers"
            } else if message.contains("distinct group keys") {
                "--max-groups N raises the limit on distinct keys"
            } else {
                "--skip-invalid counts and skips fields that are not numbers"
            }
        }
        _ => return None,
    })
}

fn merge(args: MergeArgs) -> Result<()> {
    use microbatch::AnyPartialFile;
    let mut files: Vec<(PathBuf, AnyPartialFile)> = Vec::new();
    for p in &args.partials {
        if p.as_os_str() != "-" {
            files.push((p.clone(), AnyPartialFile::read(p)?));
            continue;
        }
        // Standard input: any number of partials, one after another (`cat *.json | merge -`).
        let name = PathBuf::from("<stdin>");
        for v in serde_json::Deserializer::from_reader(std::io::stdin().lock())
            .into_iter::<serde_json::Value>()
        {
            let v = v.map_err(|e| microbatch::Error::IncompatiblePartial {
                path: name.clone(),
                message: format!("not JSON: {e}"),
            })?;
            files.push((name.clone(), AnyPartialFile::from_json(&v, &name)?));
        }
    }
    let mut shards: Vec<(PathBuf, PartialFile)> = Vec::new();
    let mut series: Vec<(PathBuf, microbatch::SeriesPartialFile)> = Vec::new();
    for (p, f) in files {
        match f {
            AnyPartialFile::One(f) => shards.push((p, f)),
            AnyPartialFile::Series(f) => series.push((p, f)),
        }
    }
    if let (Some((a, _)), Some((b, _))) = (shards.first(), series.first()) {
        anyhow::bail!(
            "{} holds one series and {} several (columns, groups or axis lanes): merge shards of the same run's kind",
            a.display(),
            b.display()
        );
    }
    let mut qs = args.quantiles.clone();
    if args.median && !qs.contains(&0.5) {
        qs.insert(0, 0.5);
    }
    let explicit_nan = (args.skip_nan || args.keep_nan).then_some(args.skip_nan);
    if !series.is_empty() {
        return merge_series(&args, &series, &qs, explicit_nan);
    }
    if args.sort_groups {
        anyhow::bail!("--sort-groups is for shards of groups; these partials hold one series");
    }
    let mut merged = PartialFile::merge(shards.iter().map(|(p, f)| (p.as_path(), f)))?;
    merged.partial.check_range("the partials together")?;
    if !qs.is_empty()
        && let Some((p, _)) = shards.iter().find(|(_, f)| f.sketch.is_none())
    {
        anyhow::bail!(
            "{} has no quantile sketch: run that shard with --quantiles (or --median) to merge quantiles",
            p.display()
        );
    }
    let (ddof, skip_nan) = match (args.ddof, explicit_nan) {
        (Some(d), Some(k)) => (d, k),
        _ => {
            let (d, k) = PartialFile::common_options(shards.iter().map(|(p, f)| (p.as_path(), f)))?;
            (args.ddof.unwrap_or(d), explicit_nan.unwrap_or(k))
        }
    };
    merged.ddof = ddof;
    merged.skip_nan = skip_nan;
    let stats: Stats = merged.partial.finish(ddof, skip_nan);
    if let Some(path) = &args.partial {
        merged.write(path)?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::json!({
            "stats": Report::stats_json(&stats),
            "partials": shards.len(),
            "inputs": merged.inputs,
            "skipped_invalid": merged.skipped_invalid,
        });
        if !qs.is_empty() {
            v["stats"]["quantiles"] =
                Report::quantiles_json(merged.sketch.as_ref(), &merged.partial, skip_nan, &qs);
            v["quantile_error"] =
                serde_json::json!(merged.sketch.as_ref().map(|s| s.relative_error()));
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else if args.rows.delimited() {
        let row = table::Row {
            key: "all".to_string(),
            stats: &stats,
            nulls: 0,
            skipped: merged.skipped_invalid,
            quantiles: qs
                .iter()
                .map(|&q| {
                    merged
                        .sketch
                        .as_ref()
                        .and_then(|s| s.quantile_of(&merged.partial, skip_nan, q))
                })
                .collect(),
        };
        args.rows.write(&mut out, "input", &[row], &qs)?;
    } else {
        write_merged_line(&mut out, shards.len(), merged.inputs.len())?;
        if merged.skipped_invalid > 0 {
            writeln!(
                out,
                "skipped      {} invalid field(s)",
                merged.skipped_invalid
            )?;
        }
        writeln!(out, "{}", Report::stats_table(&stats))?;
        write_quantiles(
            &mut out,
            merged.sketch.as_ref(),
            &merged.partial,
            skip_nan,
            &qs,
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `merge` of shards of several series: each series merged with the same series of the other
/// shards, printed as `run` prints them (one row per column, group or lane).
fn merge_series(
    args: &MergeArgs,
    shards: &[(PathBuf, microbatch::SeriesPartialFile)],
    qs: &[f64],
    explicit_nan: Option<bool>,
) -> Result<()> {
    use microbatch::SeriesPartialFile;
    let mut merged = SeriesPartialFile::merge(shards.iter().map(|(p, f)| (p.as_path(), f)))?;
    for c in &merged.columns {
        c.partial.check_range(&format!(
            "the partials together, series {}",
            row_key(c, true)
        ))?;
    }
    if args.sort_groups {
        if !merged.grouped {
            anyhow::bail!("--sort-groups is for shards of groups; these hold {}", {
                if merged.axis.is_some() {
                    "axis lanes"
                } else {
                    "columns"
                }
            });
        }
        sort_groups(&mut merged.columns);
    }
    if !qs.is_empty() {
        for (p, f) in shards {
            if let Some(c) = f.columns.iter().find(|c| c.sketch.is_none()) {
                anyhow::bail!(
                    "{} has no quantile sketch for {}: run that shard with --quantiles (or --median) to merge quantiles",
                    p.display(),
                    row_key(c, true)
                );
            }
        }
    }
    let (ddof, skip_nan) = match (args.ddof, explicit_nan) {
        (Some(d), Some(k)) => (d, k),
        _ => {
            let (d, k) =
                SeriesPartialFile::common_options(shards.iter().map(|(p, f)| (p.as_path(), f)))?;
            (args.ddof.unwrap_or(d), explicit_nan.unwrap_or(k))
        }
    };
    merged.finish(ddof, skip_nan);
    if let Some(path) = &args.partial {
        merged.write(path)?;
    }
    let (key, several_columns) = series_rows(&merged.columns, merged.axis.is_some());
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut list = microbatch::ColumnsReport::series_json(&merged.columns);
        if !qs.is_empty() {
            for (c, j) in merged
                .columns
                .iter()
                .zip(list.as_array_mut().into_iter().flatten())
            {
                j["stats"]["quantiles"] =
                    Report::quantiles_json(c.sketch.as_ref(), &c.partial, skip_nan, qs);
            }
        }
        let mut v = serde_json::json!({
            "partials": shards.len(),
            "inputs": merged.inputs,
            "excluded": microbatch::ColumnsReport::excluded_json(&merged.excluded),
        });
        v[if merged.grouped { "groups" } else { "columns" }] = list;
        if let Some((axis, shape)) = &merged.axis {
            v["axis"] = serde_json::json!({ "axis": axis, "result_shape": shape });
        }
        if !qs.is_empty() {
            v["quantile_error"] = serde_json::json!(
                merged
                    .columns
                    .iter()
                    .find_map(|c| c.sketch.as_ref())
                    .map(|s| s.relative_error())
            );
        }
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let rows: Vec<table::Row<'_>> = merged
        .columns
        .iter()
        .map(|c| table::Row {
            key: row_key(c, several_columns),
            stats: &c.stats,
            nulls: c.nulls,
            skipped: c.skipped,
            quantiles: series_quantiles(c, qs),
        })
        .collect();
    if !args.rows.delimited() {
        write_merged_line(&mut out, shards.len(), merged.inputs.len())?;
        for (c, why) in &merged.excluded {
            writeln!(out, "excluded     column {c}: {why}")?;
        }
        writeln!(out)?;
    }
    args.rows.write(&mut out, key, &rows, qs)?;
    if !args.rows.delimited() {
        write_quantile_note(&mut out, &merged.columns, qs)?;
    }
    out.flush()?;
    Ok(())
}

impl RunArgs {
    /// The histogram --histogram asks for, of the values `sketch` and `partial` describe (none
    /// without finite values or without --histogram).
    fn histogram_of(
        &self,
        sketch: Option<&microbatch::sketch::Sketch>,
        partial: &microbatch::Partial,
    ) -> Result<Option<Histogram>> {
        let (Some(bins), Some(sketch)) = (self.histogram, sketch) else {
            return Ok(None);
        };
        let scale = match self.histogram_scale {
            HistogramScale::Linear => microbatch::sketch::Scale::Linear,
            HistogramScale::Log => microbatch::sketch::Scale::Log,
        };
        Ok(sketch.histogram(bins as usize, scale, partial.min, partial.max)?)
    }
}

/// The `histogram` object of `run --json`: scale, edges, counts, the relative error at edges,
/// and the values outside (NaN, ±inf); null edges and counts without finite values.
fn histogram_json(
    h: Option<&microbatch::sketch::Histogram>,
    p: &microbatch::Partial,
) -> serde_json::Value {
    serde_json::json!({
        "scale": h.map(|h| h.scale),
        "edges": h.map(|h| h.edges.iter().map(|&e| serde_json::json!(e)).collect::<Vec<_>>()),
        "counts": h.map(|h| h.counts.clone()),
        "relative_error": h.map(|h| h.relative_error),
        "outside": {"nan": p.nan_count, "neg_inf": p.neg_inf_count, "pos_inf": p.pos_inf_count},
    })
}

/// The table's `histogram` section: a line per bin with its count and a bar.
fn write_histogram(
    out: &mut impl Write,
    h: Option<&microbatch::sketch::Histogram>,
    p: &microbatch::Partial,
) -> Result<()> {
    let Some(h) = h else {
        writeln!(out, "histogram    no finite values")?;
        return Ok(());
    };
    writeln!(
        out,
        "histogram    {} bins, {:?} (values within {} % of an edge may sit in the bin beside it)",
        h.counts.len(),
        h.scale,
        table::significant(h.relative_error * 100.0, 3)
    )?;
    let top = h.counts.iter().copied().max().unwrap_or(0).max(1);
    let edge = |x: f64| format!("{x:.6e}");
    for (i, &c) in h.counts.iter().enumerate() {
        let close = if i + 1 == h.counts.len() { "]" } else { ")" };
        let bar = "#".repeat(((c as f64 / top as f64) * 40.0).round() as usize);
        writeln!(
            out,
            "  [{}, {}{close}  {c:>12}  {bar}",
            edge(h.edges[i]),
            edge(h.edges[i + 1])
        )?;
    }
    if p.nan_count + p.neg_inf_count + p.pos_inf_count > 0 {
        writeln!(
            out,
            "  outside: {} NaN, {} -inf, {} +inf",
            p.nan_count, p.neg_inf_count, p.pos_inf_count
        )?;
    }
    Ok(())
}

/// The table's `quantiles` section (nothing without quantiles asked or a sketch).
fn write_quantiles(
    out: &mut impl Write,
    sketch: Option<&microbatch::sketch::Sketch>,
    partial: &microbatch::Partial,
    skip_nan: bool,
    qs: &[f64],
) -> Result<()> {
    let Some(sketch) = sketch.filter(|_| !qs.is_empty()) else {
        return Ok(());
    };
    writeln!(
        out,
        "quantiles    (as numpy's inverted_cdf, within {} % relative error)",
        table::significant(sketch.relative_error() * 100.0, 3)
    )?;
    for &q in qs {
        let v = sketch.quantile_of(partial, skip_nan, q);
        let text = v.map_or("undefined".to_string(), |x| x.to_string());
        writeln!(out, "  {:<10} {text}", table::quantile_name(q))?;
    }
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

/// glibc maps every allocation over its (adaptive) threshold afresh and unmaps it when freed:
/// hyper's read buffers and the batches of a large body would then be faulted in page by page
/// for every request (~11k page faults per 400 MB body), and text chunks for every round. A fixed threshold above them keeps
/// them in the heap, reused from request to request; the heap's top is still returned to the
/// system past 64 MiB.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
