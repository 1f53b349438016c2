//! HTTP routes: `/validate` and `/mutate` on the TLS port; `/livez`, `/readyz`, `/metrics` on
//! the admin port. Handlers only decode, call the pure review, and encode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::sync::Semaphore;

use crate::cluster::{timeout_from_query, Cluster, WithDeadline};
use crate::metrics::{Metrics, Rejection};
use crate::review::{self, Reply, Summary, Webhook};
use crate::source::PolicyReceiver;

use super::body::{BodyBudget, BodyError, DecodeBudget};
use super::deadline::Deadlines;

/// The largest AdmissionReview body accepted: an UPDATE carries object and oldObject of up
/// to 3 MiB each, plus the envelope.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// How long a review may wait for other bodies' decoding to make room before it is refused.
const DECODE_WAIT: Duration = Duration::from_secs(1);

/// The API server's default webhook timeout, for requests that carry no `?timeout=`.
const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState<C> {
    pub policy: PolicyReceiver,
    pub cluster: Arc<C>,
    pub metrics: Arc<Metrics>,
    /// Permits for reviews in flight, taken once the body is read; when none is left,
    /// requests fail fast with 503.
    pub in_flight: Semaphore,
    /// Bytes that request bodies being read or reviewed may take, all together.
    pub body_budget: BodyBudget,
    /// Longest time a request body may take to arrive.
    pub read_timeout: std::time::Duration,
    /// Bytes of request bodies being reviewed at once (decoding takes memory in proportion to
    /// the body).
    pub decoding: DecodeBudget,
    /// Set when SIGTERM arrives: readiness fails from then on.
    pub shutting_down: AtomicBool,
    /// Whether review logs are written (one line per review).
    pub log_reviews: bool,
}

/// The webhook routes. `GET /livez` is answered here too, so a liveness probe over HTTPS
/// proves that this listener accepts connections and completes TLS handshakes.
pub fn webhook_router<C: Cluster + Send + Sync + 'static>(state: Arc<AppState<C>>) -> Router {
    Router::new()
        .route("/validate", post(|s, c, r| handle(s, c, r, Webhook::Validate)))
        .route("/mutate", post(|s, c, r| handle(s, c, r, Webhook::Mutate)))
        .route("/livez", get(|| async { "ok\n" }))
        .with_state(state)
}

/// The admin routes.
pub fn admin_router<C: Cluster + Send + Sync + 'static>(state: Arc<AppState<C>>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<C>))
        .route("/metrics", get(metrics::<C>))
        .with_state(state)
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

async fn handle<C: Cluster + Send + Sync + 'static>(
    State(state): State<Arc<AppState<C>>>,
    clock: Option<Extension<Arc<Deadlines>>>,
    request: Request,
    webhook: Webhook,
) -> Response {
    let (Parts { headers, uri, .. }, body) = request.into_parts();
    let reject = |reason: Rejection, status: StatusCode, message: &str| {
        state.metrics.rejected(reason);
        plain(status, message)
    };
    // A refusal before the body is read whole closes the connection: what is left of the body
    // is not worth reading.
    let reject_unread = |reason: Rejection, status: StatusCode, message: &str| {
        let mut response = reject(reason, status, message);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let is_json = content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return reject_unread(Rejection::ContentType, StatusCode::BAD_REQUEST, "Content-Type must be application/json");
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    // The body is read before a decision permit is taken, so slow clients hold no permit; on
    // HTTP/1.1 the connection's read clock (started at the request's first byte) fires first,
    // this deadline covers HTTP/2 streams.
    let read = tokio::time::timeout(state.read_timeout, state.body_budget.read(body, declared, MAX_BODY_BYTES)).await;
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(err @ BodyError::TooLarge { .. })) => {
            return reject_unread(Rejection::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE, &err.to_string());
        }
        Ok(Err(err @ BodyError::OverBudget)) => {
            return reject_unread(Rejection::BodyBudget, StatusCode::SERVICE_UNAVAILABLE, &err.to_string());
        }
        Ok(Err(err @ BodyError::Read(_))) => {
            return reject_unread(Rejection::BadRequest, StatusCode::BAD_REQUEST, &err.to_string());
        }
        Err(_) => {
            let message = "the request was not received within the read timeout";
            return reject_unread(Rejection::ReadTimeout, StatusCode::REQUEST_TIMEOUT, message);
        }
    };
    if let Some(Extension(clock)) = clock {
        clock.request_read();
    }
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return reject(Rejection::Overloaded, StatusCode::SERVICE_UNAVAILABLE, "tokengate is overloaded, retry later");
    };
    let Some(policy) = state.policy.borrow().clone() else {
        return reject(Rejection::NoPolicy, StatusCode::SERVICE_UNAVAILABLE, "tokengate has no valid policy loaded");
    };
    let Some(decoding) = state.decoding.admit(body.bytes().len(), DECODE_WAIT).await else {
        return reject(Rejection::Overloaded, StatusCode::SERVICE_UNAVAILABLE, "tokengate is overloaded, retry later");
    };
    let started = Instant::now();
    // Lookups end before the API server stops waiting, so a slow API still gets our reason.
    let timeout = timeout_from_query(uri.query()).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
    let cluster = WithDeadline::new(state.cluster.as_ref(), timeout);
    let reply = review::review(body.bytes(), webhook, &policy, &cluster).await;
    // The review's memory is gone; the body's share of the budget goes back before the answer
    // takes its own.
    drop((decoding, body));
    match reply {
        Reply::Review { body, summary } => {
            let elapsed = started.elapsed();
            state.metrics.review(webhook, summary.subject, summary.decision, elapsed);
            if state.log_reviews {
                log_review(webhook, &summary, elapsed);
            }
            match state.body_budget.answer(body) {
                Ok(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
                Err(err) => reject(Rejection::BodyBudget, StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
            }
        }
        Reply::BadRequest(message) => reject(Rejection::BadRequest, StatusCode::BAD_REQUEST, &message),
    }
}

/// One structured line per review; never the object.
fn log_review(webhook: Webhook, summary: &Summary, elapsed: std::time::Duration) {
    tracing::info!(
        target: "tokengate::review",
        uid = %summary.uid,
        webhook = webhook.as_str(),
        kind = summary.subject.as_str(),
        namespace = %summary.namespace,
        name = %summary.name,
        operation = summary.operation.as_str(),
        decision = summary.decision.as_str(),
        violations = summary.violations,
        dry_run = summary.dry_run,
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "review"
    );
}

async fn readyz<C: Cluster + Send + Sync + 'static>(State(state): State<Arc<AppState<C>>>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if state.policy.borrow().is_none() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no valid policy loaded");
    }
    if !state.cluster.is_ready() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "cluster caches have not synced yet");
    }
    plain(StatusCode::OK, "ok")
}

async fn metrics<C: Cluster + Send + Sync + 'static>(State(state): State<Arc<AppState<C>>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}
