//! Statistics as rows: one row per column, file or group, as a table for people (`--digits`) or
//! as CSV/TSV for programs (every digit: the shortest text that reads back to the same f64).

use std::io::Write;

use anyhow::Result;
use clap::Args;

use microbatch::Stats;

/// How rows of statistics are printed.
#[derive(Debug, Args, Clone)]
pub struct RowArgs {
    /// Print the rows as CSV (a header line, then one line per column, group or file).
    #[arg(long, conflicts_with_all = ["tsv", "json"])]
    pub csv: bool,

    /// Print the rows as tab-separated values.
    #[arg(long, conflicts_with = "json")]
    pub tsv: bool,

    /// Significant digits of the numbers in the table (default: every digit needed to read the
    /// f64 back). CSV, TSV and JSON always carry every digit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=17))]
    pub digits: Option<u32>,
}

/// One row: what it is (a column's name, a file, a group's key) and its statistics.
pub struct Row<'a> {
    pub key: String,
    pub stats: &'a Stats,
    pub nulls: u64,
    pub skipped: u64,
    /// The asked quantiles, in the order asked (empty when none were).
    pub quantiles: Vec<Option<f64>>,
}

/// A quantile's column name: `q0.5`, `q0.99`.
pub fn quantile_name(q: f64) -> String {
    format!("q{q}")
}

impl RowArgs {
    /// Whether rows are asked for machine-readably.
    pub fn delimited(&self) -> bool {
        self.csv || self.tsv
    }

    /// Writes `rows` under a header whose first column is `key` (`column`, `file`, `group`),
    /// with a column per quantile in `qs`.
    pub fn write(
        &self,
        out: &mut impl Write,
        key: &str,
        rows: &[Row<'_>],
        qs: &[f64],
    ) -> Result<()> {
        let extra_nulls = rows.iter().any(|r| r.nulls > 0);
        let extra_skipped = rows.iter().any(|r| r.skipped > 0);
        let mut header: Vec<String> = [
            key,
            "count",
            "nan_count",
            "sum",
            "mean",
            "min",
            "max",
            "var",
            "std",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        header.extend(qs.iter().map(|&q| quantile_name(q)));
        if extra_nulls {
            header.push("nulls".into());
        }
        if extra_skipped {
            header.push("skipped".into());
        }
        let digits = if self.delimited() { None } else { self.digits };
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let s = r.stats;
                let exact = s.exact;
                let mut v = vec![
                    r.key.clone(),
                    s.count.to_string(),
                    s.nan_count.to_string(),
                    exact.map_or_else(|| num(s.sum, digits), |e| e.sum.to_string()),
                    num(s.mean, digits),
                    exact.map_or_else(|| num(s.min, digits), |e| e.min.to_string()),
                    exact.map_or_else(|| num(s.max, digits), |e| e.max.to_string()),
                    num(s.var, digits),
                    num(s.std, digits),
                ];
                v.extend(r.quantiles.iter().map(|&q| num(q, digits)));
                if extra_nulls {
                    v.push(r.nulls.to_string());
                }
                if extra_skipped {
                    v.push(r.skipped.to_string());
                }
                v
            })
            .collect();
        if self.csv || self.tsv {
            let mut w = csv::WriterBuilder::new()
                .delimiter(if self.tsv { b'\t' } else { b',' })
                .from_writer(Vec::new());
            w.write_record(&header)?;
            for row in &cells {
                w.write_record(row)?;
            }
            out.write_all(&w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
            return Ok(());
        }
        // Aligned: the key to the left, numbers to the right.
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&cells) {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        format!("{c:<w$}", w = widths[0])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

/// A number for a row: empty when undefined, `NaN`/`inf`/`-inf`, else the shortest text that
/// reads back to the same f64 or `digits` significant digits.
fn num(x: Option<f64>, digits: Option<u32>) -> String {
    let Some(v) = x else {
        return String::new();
    };
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    match digits {
        None => {
            if v != 0.0 && !(1e-4..1e16).contains(&v.abs()) {
                format!("{v:e}")
            } else {
                format!("{v}")
            }
        }
        Some(d) => significant(v, d as usize),
    }
}

/// `v` with `d` significant digits, like C's `%g`: fixed notation for moderate exponents, else
/// scientific; trailing zeros dropped.
pub(crate) fn significant(v: f64, d: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.*e}", d - 1, v);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if exp < -4 || exp >= d as i32 {
        let m = trim_zeros(mantissa);
        return format!("{m}e{exp}");
    }
    let decimals = (d as i32 - 1 - exp).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_digits_like_percent_g() {
        for (v, d, want) in [
            (1234.5678, 3, "1.23e3"),
            (1234.5678, 4, "1235"),
            (1234.5678, 6, "1234.57"),
            (0.000123456, 3, "0.000123"),
            (0.0000123456, 3, "1.23e-5"),
            (-2.5, 3, "-2.5"),
            (1.0, 5, "1"),
            (9.9999, 2, "10"),
            (1e300, 4, "1e300"),
        ] {
            assert_eq!(significant(v, d), want, "{v} with {d} digits");
        }
        assert_eq!(num(None, Some(3)), "");
        assert_eq!(num(Some(f64::NAN), Some(3)), "NaN");
        assert_eq!(num(Some(0.1 + 0.2), None), "0.30000000000000004");
    }
}
