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
    check_params(&query, &[])?;
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
            .save(&id, &Partial::EMPTY, 0, &peer, None)
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

pub(super) fn stream_json(state: &AppState, id: &str, s: &Stream, ddof: u32) -> Value {
    stream_view(state, id, &s.partial, s.batches, s.created, ddof)
}

pub(super) fn stream_view(
    state: &AppState,
    id: &str,
    partial: &Partial,
    batches: u64,
    created: Instant,
    ddof: u32,
) -> Value {
    json!({
        "id": id,
        "batches": batches,
        "stats": Report::stats_json(&partial.finish(ddof, false)),
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
    let spec = BodySpec::of(&state, &headers, &query, Some(state.limits.max_batch))?;
    let ddof = ddof_of(&query)?;
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
        key.as_ref().and_then(|k| s.keys.get(k)).cloned()
    };
    // A key already applied: the original answer (once it is on disk), nothing applied again.
    if let Some((answer, ticket)) = seen {
        state.store.wait(ticket).await;
        return Ok(replay(&answer));
    }
    let (done, _) = reduce_request(Arc::clone(&state), body, spec).await?;
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
            let batches = s.batches + 1;
            let answer = stream_view(&state, &id, &partial, batches, s.created, ddof).to_string();
            // Queued under the lock, so the store sees this stream's states in order.
            let ticket = state
                .store
                .save(
                    &id,
                    &partial,
                    batches,
                    &s.owner,
                    key.as_deref().map(|k| (k, answer.as_str(), now_s)),
                )
                .map_err(store_error)?;
            s.partial = partial;
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
    check_params(&query, &["ddof"])?;
    let ddof = ddof_of(&query)?;
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    let s = streams.get_mut(&id).ok_or_else(|| unknown(&id))?;
    s.last_used = Instant::now();
    Ok(axum::Json(stream_json(&state, &id, s, ddof)).into_response())
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
        sketch: None,
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
    check_params(&query, &[])?;
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
    Ok(axum::Json(stream_json(&state, &id, &s, DEFAULT_DDOF)).into_response())
}
