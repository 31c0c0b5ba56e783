//! Named streams: create, append batches exactly once (idempotency keys), read, list, delete.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use microbatch::shard::PartialFile;
use microbatch::{Partial, Report};

use super::store;

use super::*;

/// `GET /v1/streams`: every open stream with its owner, batches, count, age and idle time
/// (admin token only), oldest first.
pub(super) async fn list_streams(
    State(state): State<Shared>,
    axum::Extension(Admin(admin)): axum::Extension<Admin>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    if !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            if state.admin_token.is_some() {
                "listing streams needs the admin token (--admin-token-file)"
            } else {
                "listing streams needs the admin token, and this server has none (--admin-token-file)"
            },
        ));
    }
    let mut rows: Vec<(f64, Value)> = {
        let streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .iter()
            .map(|(id, s)| {
                let age = s.created.elapsed().as_secs_f64();
                (
                    age,
                    json!({
                        "id": id,
                        "owner": s.owner,
                        "batches": s.batches,
                        "count": s.partial.count,
                        "age_s": age,
                        "idle_s": s.last_used.elapsed().as_secs_f64(),
                    }),
                )
            })
            .collect()
    };
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let list: Vec<Value> = rows.into_iter().map(|(_, v)| v).collect();
    Ok(axum::Json(json!({"streams": list, "open": list.len()})).into_response())
}

pub(super) async fn create_stream(
    State(state): State<Shared>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &["quantile_error"])?;
    // A stream opened with `?quantile_error=E` keeps a mergeable quantile sketch of its batches.
    let sketch = match query.get("quantile_error") {
        None => None,
        Some(e) => {
            let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
            let e: f64 = e
                .parse()
                .map_err(|_| bad(format!("quantile_error {e:?} is not a number")))?;
            let bits = microbatch::sketch::mantissa_bits_for(e).map_err(|x| bad(x.to_string()))?;
            Some(microbatch::sketch::Sketch::with_mantissa_bits(bits))
        }
    };
    let (id, ticket) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() >= state.limits.max_streams {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} streams are open, the limit (--max-streams)",
                    streams.len()
                ),
            ));
        }
        let mine = streams.values().filter(|s| s.owner == peer).count();
        if mine >= state.limits.max_streams_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this client ({peer}) has {mine} streams open, the limit (--max-streams-per-client): delete some first"
                ),
            ));
        }
        // 128 random bits: only whoever was given the id can use the stream.
        let id = format!("s{:032x}", rand::random::<u128>());
        let ticket = state
            .store
            .save(&id, &Partial::EMPTY, 0, &peer, sketch.as_ref(), None)
            .map_err(store_error)?;
        let now = Instant::now();
        streams.insert(
            id.clone(),
            Stream {
                partial: Partial::EMPTY,
                batches: 0,
                created: now,
                last_used: now,
                keys: HashMap::new(),
                key_order: std::collections::VecDeque::new(),
                owner: peer,
                sketch,
            },
        );
        (id, ticket)
    };
    state.store.wait(ticket).await;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response())
}

pub(super) fn store_error(e: anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the stream store failed, nothing was applied: {e:#}"),
    )
}

/// The `Idempotency-Key` of a batch: any string of 1 to 128 bytes.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
    let k = v
        .to_str()
        .map_err(|_| bad("the Idempotency-Key must be visible ASCII"))?;
    if k.is_empty() || k.len() > 128 {
        return Err(bad("the Idempotency-Key must be 1 to 128 bytes"));
    }
    Ok(Some(k.to_string()))
}

pub(super) fn unknown(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no stream {id:?} (never created, deleted, or expired)"),
    )
}

pub(super) fn stream_json(state: &AppState, id: &str, s: &Stream, view: &View) -> Value {
    stream_view(
        state,
        id,
        &s.partial,
        s.sketch.as_ref(),
        s.batches,
        s.created,
        view,
    )
}

/// How a stream's statistics are shown: `?ddof=` and `?quantiles=0.5,0.9` (for a stream with
/// a sketch).
pub(super) struct View {
    pub(super) ddof: u32,
    pub(super) quantiles: Vec<f64>,
}

impl View {
    pub(super) fn of(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
        let quantiles = match query.get("quantiles") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|q| match q.trim().parse::<f64>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                    _ => Err(bad(format!("quantile {q:?} is not a number in [0, 1]"))),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            ddof: ddof_of(query)?,
            quantiles,
        })
    }
}

pub(super) fn stream_view(
    state: &AppState,
    id: &str,
    partial: &Partial,
    sketch: Option<&microbatch::sketch::Sketch>,
    batches: u64,
    created: Instant,
    view: &View,
) -> Value {
    let mut stats = Report::stats_json(&partial.finish(view.ddof, false));
    if !view.quantiles.is_empty() {
        stats["quantiles"] = Report::quantiles_json(sketch, partial, false, &view.quantiles);
    }
    json!({
        "id": id,
        "batches": batches,
        "stats": stats,
        "quantile_error": sketch.map(|s| s.relative_error()),
        "age_s": created.elapsed().as_secs_f64(),
        "backend": state.backend,
    })
}

pub(super) async fn append_batch(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Everything is validated before anything is read or applied: a refused batch is never
    // merged (a client that retries after a 400 must not count its data twice).
    // `quantiles` shapes the answer, not the body: it is taken out before the body's checks.
    let view = View::of(&query)?;
    let mut body_query = query.clone();
    body_query.remove("quantiles");
    let mut spec = BodySpec::of(&state, &headers, &body_query, Some(state.limits.max_batch))?;
    let key = idempotency_key(&headers)?;
    let replay = |answer: &str| -> Response {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("idempotent-replay"), "true"),
            ],
            answer.to_string(),
        )
            .into_response()
    };
    let seen = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        // The upload counts as use: the stream cannot expire while its batch arrives.
        let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
        s.last_used = Instant::now();
        spec.sketch_bits = s.sketch.as_ref().map(|k| k.mantissa_bits);
        key.as_ref().and_then(|k| s.keys.get(k)).cloned()
    };
    // A key already applied: the original answer (once it is on disk), nothing applied again.
    if let Some((answer, ticket)) = seen {
        state.store.wait(ticket).await;
        return Ok(replay(&answer));
    }
    let (done, info) = reduce_request(Arc::clone(&state), body, spec).await?;
    // All of the batch is reduced: apply it whole, and commit its effect and its key before
    // answering.
    let mut batch = Partial::EMPTY;
    for d in &done {
        batch.merge(&d.partial);
    }
    let (answer, ticket, replayed) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
        // The same key may have arrived twice at once: only the first applies.
        if let Some((answer, ticket)) = key.as_ref().and_then(|k| s.keys.get(k)) {
            (answer.clone(), *ticket, true)
        } else {
            let now_s = store::unix_now();
            let mut partial = s.partial;
            partial.merge(&batch);
            // A batch whose values, with the stream's, lose the sum past f64's range is
            // refused; the stream keeps what it had.
            partial
                .check_range("the stream with this batch")
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
            // (`merge` leaves the result trimmed.)
            let sketch = match (&s.sketch, &info.sketch) {
                (Some(a), Some(b)) => {
                    let mut m = a.clone();
                    m.merge(b).map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    })?;
                    Some(m)
                }
                (other, _) => other.clone(),
            };
            let batches = s.batches + 1;
            let answer = stream_view(
                &state,
                &id,
                &partial,
                sketch.as_ref(),
                batches,
                s.created,
                &view,
            )
            .to_string();
            // Queued under the lock, so the store sees this stream's states in order.
            let ticket = state
                .store
                .save(
                    &id,
                    &partial,
                    batches,
                    &s.owner,
                    sketch.as_ref(),
                    key.as_deref().map(|k| (k, answer.as_str(), now_s)),
                )
                .map_err(store_error)?;
            s.partial = partial;
            s.sketch = sketch;
            s.batches = batches;
            s.last_used = Instant::now();
            if let Some(k) = key {
                s.key_order.push_back((now_s, k.clone()));
                s.keys.insert(k, (answer.clone(), ticket));
            }
            state.metrics.batches.fetch_add(1, Ordering::Relaxed);
            (answer, ticket, false)
        }
    };
    // Committed (with everything else waiting, in one transaction) before the answer goes out.
    state.store.wait(ticket).await;
    if replayed {
        return Ok(replay(&answer));
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response())
}

pub(super) async fn get_stream(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &["ddof", "quantiles"])?;
    let view = View::of(&query)?;
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
    s.last_used = Instant::now();
    Ok(axum::Json(stream_json(&state, &id, s, &view)).into_response())
}

pub(super) async fn stream_partial(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &[])?;
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
    s.last_used = Instant::now();
    let file = PartialFile {
        sketch: s.sketch.clone(),
        partial: s.partial,
        ddof: DEFAULT_DDOF,
        skip_nan: false,
        inputs: vec![format!("stream {id}")],
        skipped_invalid: 0,
    };
    Ok(axum::Json(file.to_json()).into_response())
}

pub(super) async fn delete_stream(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_params(&query, &["quantiles"])?;
    let view = View::of(&query)?;
    let (s, ticket) = {
        let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !streams.contains_key(&id) {
            return Err(unknown(&id));
        }
        let ticket = state.store.delete(std::slice::from_ref(&id));
        let s = streams.remove(&id).ok_or_else(|| unknown(&id))?;
        (s, ticket)
    };
    state.store.wait(ticket).await;
    Ok(axum::Json(stream_json(&state, &id, &s, &view)).into_response())
}
