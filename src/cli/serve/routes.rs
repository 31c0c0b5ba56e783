//! The stateless routes: health, devices, metrics, and `POST /v1/reduce` with its parameters.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use microbatch::report::{BatchCounts, Timings};
use microbatch::shard::PartialFile;
use microbatch::source::{Column, Format, InputOptions, TextOptions};
use microbatch::{Partial, Report, list_adapters};

use super::*;

pub(super) async fn healthz(State(state): State<Shared>) -> Response {
    axum::Json(json!({"status": "ok", "backend": state.backend})).into_response()
}

pub(super) async fn devices() -> Response {
    axum::Json(serde_json::to_value(list_adapters()).unwrap_or(Value::Null)).into_response()
}

pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    let open = state.streams.lock().map(|s| s.len()).unwrap_or(0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(open),
    )
        .into_response()
}

/// The query parameters a body-reading route accepts.
pub(super) const BODY_PARAMS: &[&str] = &[
    "dtype",
    "endian",
    "column",
    "header",
    "delimiter",
    "null",
    "skip_invalid",
    "ddof",
];

/// Refuses any query parameter not in `accepted` (a misspelt `?colum=` must not silently reduce
/// column 0), naming the accepted ones.
pub(super) fn check_params(
    query: &HashMap<String, String>,
    accepted: &[&str],
) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !accepted.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "unknown query parameter{} {}; this route accepts: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if accepted.is_empty() {
                "none".to_string()
            } else {
                accepted.join(", ")
            }
        ),
    ))
}

/// A boolean query parameter: exactly `true`, `false`, `1` or `0`.
pub(super) fn flag(query: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match query.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name} must be true, false, 1 or 0, got {other:?}"),
        )),
    }
}

/// How to read a body: from its Content-Type and Content-Encoding and the query (`column`,
/// `header`, `delimiter`, `null`, `dtype`, `endian`, `skip_invalid`). Without a declared type
/// (none, or the form encoding curl sends by default) the format is detected from the content
/// as the CLI does; a declared type that is not an input format is 415.
pub(super) fn input_options(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<InputOptions, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/x-www-form-urlencoded" | "" => None,
        "application/octet-stream" => Some(Format::Raw),
        "application/x-npy" => Some(Format::Npy),
        "text/csv" => Some(Format::Csv),
        "text/tab-separated-values" => Some(Format::Tsv),
        "text/plain" => Some(Format::Txt),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {other:?}: application/octet-stream (raw), application/x-npy, text/csv, text/tab-separated-values, text/plain"
                ),
            ));
        }
    };
    let mut o = InputOptions {
        format,
        ..InputOptions::default()
    };
    if let Some(d) = query.get("dtype") {
        o.dtype = Some(d.parse().map_err(bad)?);
    }
    if let Some(e) = query.get("endian") {
        o.endian = e.parse().map_err(bad)?;
    }
    let mut text = TextOptions::default();
    if let Some(c) = query.get("column") {
        text.column = c.parse::<Column>().expect("infallible");
    }
    text.header = flag(query, "header")?;
    if let Some(d) = query.get("delimiter") {
        text.delimiter = Some(crate::cli::parse_delimiter(d).map_err(bad)?);
    }
    if let Some(n) = query.get("null") {
        text.nulls = n.split(',').map(str::to_string).collect();
    }
    text.skip_invalid = flag(query, "skip_invalid")?.unwrap_or(false);
    o.text = text;
    Ok(o)
}

/// An input error as an HTTP error: limits and timeouts by their own codes, the rest 400.
pub(super) fn api_error(e: microbatch::Error) -> ApiError {
    if let microbatch::Error::Io { error, .. } = &e
        && let Some(inner) = error.get_ref()
    {
        if inner.is::<BodyTooLarge>() || inner.is::<LineTooLong>() {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, inner.to_string());
        }
        if inner.is::<Cancelled>() || inner.is::<BodyIdle>() {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, inner.to_string());
        }
    }
    ApiError::new(StatusCode::BAD_REQUEST, message(&e))
}

/// An error and its sources, as one line (`<request body>: line 3: …`).
pub(super) fn message(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Reduces a request's body under the request timeout: a small body gathered and reduced on
/// the spot ([`BodySpec::small`]), any other streamed through a blocking thread.
pub(super) async fn reduce_request(
    state: Shared,
    body: Body,
    spec: BodySpec,
) -> Result<Reduced, ApiError> {
    let permit = Arc::clone(&state.inflight)
        .try_acquire_owned()
        .map_err(|_| {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests are reading a body (--max-inflight): retry shortly",
            );
            e.retry_after = Some(1);
            e
        })?;
    let timeout = state.limits.request_timeout;
    let timed_out = || {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", timeout.as_secs()),
        )
    };
    if spec.small() {
        let length = spec.length.unwrap_or(0);
        let bytes = tokio::time::timeout(timeout, gather_body(&state, body, length))
            .await
            .map_err(|_| timed_out())??;
        state
            .metrics
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let reader: Box<dyn std::io::Read + Send> = Box::new(io::Cursor::new(bytes));
        if state.backend_info.kind == microbatch::BackendKind::Cpu {
            return reduce_reader(&state, reader, &spec, Reducer::Here);
        }
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            reduce_reader(&state, reader, &spec, Reducer::Engine)
        });
        return match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )),
            Err(_) => Err(timed_out()),
        };
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader = body_reader(&state, body, Arc::clone(&received), Arc::clone(&cancel));
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = reduce_reader(&state, reader, &spec, Reducer::Engine);
        state
            .metrics
            .bytes
            .fetch_add(received.load(Ordering::Relaxed), Ordering::Relaxed);
        result
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            Err(timed_out())
        }
    }
}

/// The answer to `POST /v1/reduce`: the object `microbatch run --json` prints; 422 when the
/// body's sum is lost past f64's range ([`Partial::check_range`]).
pub(super) fn report_json(
    state: &AppState,
    done: &[Done],
    info: BodyInfo,
    ddof: u32,
    quantiles: &[f64],
    total: Duration,
) -> Result<Value, ApiError> {
    let mut partial = Partial::EMPTY;
    let mut t = Timings::default();
    for d in done {
        partial.merge(&d.partial);
        t += d.times;
    }
    partial
        .check_range("the request body")
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let report = Report {
        stats: partial.finish(ddof, false),
        backend: state.backend_info.clone(),
        batches: BatchCounts {
            count: done.len() as u64,
            size: state.limits.batch,
            workgroups: state.backend_info.workgroups,
        },
        timings: Timings {
            read: Duration::ZERO,
            total,
            ..t
        },
        partial,
        sketch: info.sketch.map(|mut s| {
            s.trim();
            s
        }),
    };
    let mut v = report.to_json();
    if !quantiles.is_empty() {
        v["stats"]["quantiles"] =
            Report::quantiles_json(report.sketch.as_ref(), &partial, false, quantiles);
        v["quantile_error"] = json!(report.sketch.as_ref().map(|s| s.relative_error()));
    }
    // The batch's mergeable state, as in a partial file: a batching client (`run --remote`)
    // merges these exactly, nothing rebuilt from rounded statistics.
    v["partial"] = PartialFile {
        sketch: report.sketch.clone(),
        partial,
        ddof,
        skip_nan: false,
        inputs: vec!["<request body>".to_string()],
        skipped_invalid: info.skipped,
    }
    .to_json();
    v["input"] = json!({
        "sources": [{
            "name": "<request body>",
            "shape": info.shape,
            "dtype": info.dtype,
            "precision": info.precision,
            "nulls": info.nulls,
            "skipped_invalid": info.skipped,
        }],
        "skipped_invalid": info.skipped,
    });
    Ok(v)
}

pub(super) async fn reduce(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    // Everything about the request is checked before any of its body is read. `quantiles`
    // and `quantile_error` shape the answer (a sketch of the body), not the body: they are
    // taken out before the body's checks.
    let view = super::streams::View::of(&query)?;
    let mut body_query = query.clone();
    body_query.remove("quantiles");
    let error = body_query.remove("quantile_error");
    let mut spec = BodySpec::of(&state, &headers, &body_query, None)?;
    let ddof = ddof_of(&query)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    spec.sketch_bits = match (&error, view.quantiles.is_empty()) {
        (None, true) => None,
        (None, false) => Some(
            microbatch::sketch::mantissa_bits_for(microbatch::sketch::DEFAULT_QUANTILE_ERROR)
                .map_err(|e| bad(e.to_string()))?,
        ),
        (Some(e), _) => {
            let e: f64 = e
                .parse()
                .map_err(|_| bad(format!("quantile_error {e:?} is not a number")))?;
            Some(microbatch::sketch::mantissa_bits_for(e).map_err(|x| bad(x.to_string()))?)
        }
    };
    let (done, info) = reduce_request(Arc::clone(&state), body, spec).await?;
    let v = report_json(&state, &done, info, ddof, &view.quantiles, start.elapsed())?;
    Ok(axum::Json(v).into_response())
}

pub(super) fn ddof_of(query: &HashMap<String, String>) -> Result<u32, ApiError> {
    match query.get("ddof") {
        None => Ok(DEFAULT_DDOF),
        Some(d) => d.parse::<u32>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("ddof must be an integer ≥ 0, got {d:?}"),
            )
        }),
    }
}
