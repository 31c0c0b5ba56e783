//! The guard in front of every route: request size limits, bearer tokens (the producers' and
//! the admin's), and who the peer is.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::*;

/// Longest request target we serve (414 past it).
pub(super) const MAX_URI: usize = 8 << 10;
/// Most header bytes a request may carry (431 past it).
pub(super) const MAX_HEADER_BYTES: usize = 64 << 10;

/// Request-line and header limits, authentication and per-route request counting.
pub(super) async fn guard(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let uri_len = req.uri().to_string().len();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let limit = if uri_len > MAX_URI {
        Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri_len} bytes; the limit is {MAX_URI}"),
        ))
    } else if header_bytes > MAX_HEADER_BYTES {
        Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        ))
    } else {
        None
    };
    if let Some(e) = limit {
        let mut r = e.into_response();
        close_after(&mut r);
        state.metrics.request("(refused)", r.status());
        return r;
    }
    let route = req.uri().path().to_string();
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes())
        .unwrap_or(&[]);
    let admin = state
        .admin_token
        .as_ref()
        .is_some_and(|t| constant_time_eq(given, t));
    // /healthz reveals nothing and answers without the token (load balancers probe it).
    if let Some(token) = state.token.as_ref().filter(|_| route != "/healthz")
        && !admin
        && !constant_time_eq(given, token)
    {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
            .into_response();
        close_after(&mut r);
        state.metrics.request(&route, r.status());
        return r;
    }
    req.extensions_mut().insert(Admin(admin));
    let post = req.method() == axum::http::Method::POST;
    let mut r = next.run(req).await;
    // A refused POST may leave its body unread: say that the connection closes after it.
    if post && (r.status().is_client_error() || r.status().is_server_error()) {
        close_after(&mut r);
    }
    state.metrics.request(&route, r.status());
    r
}

pub(super) fn close_after(r: &mut Response) {
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
}

/// Compares two byte strings in time that depends only on their lengths.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
