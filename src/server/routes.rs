//! HTTP routes: `/validate` and `/mutate` on the TLS port; `/livez`, `/readyz`, `/metrics` on
//! the admin port. Handlers only decode, call the pure review, and encode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::Semaphore;

use crate::cluster::{timeout_from_query, Cluster, WithDeadline};
use crate::metrics::{Metrics, Rejection};
use crate::review::{self, Reply, Summary, Webhook};
use crate::source::PolicyReceiver;

/// The largest AdmissionReview body accepted: an UPDATE carries object and oldObject of up
/// to 3 MiB each, plus the envelope.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

/// The API server's default webhook timeout, for requests that carry no `?timeout=`.
const DEFAULT_WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the handlers share.
pub struct AppState<C> {
    pub policy: PolicyReceiver,
    pub cluster: Arc<C>,
    pub metrics: Arc<Metrics>,
    /// Permits for reviews in flight; when none is left, requests fail fast with 503.
    pub in_flight: Semaphore,
    /// Set when SIGTERM arrives: readiness fails from then on.
    pub shutting_down: AtomicBool,
    /// Whether review logs are written (one line per review).
    pub log_reviews: bool,
}

/// The webhook routes.
pub fn webhook_router<C: Cluster + Send + Sync + 'static>(state: Arc<AppState<C>>) -> Router {
    Router::new()
        .route("/validate", post(|s, r| handle(s, r, Webhook::Validate)))
        .route("/mutate", post(|s, r| handle(s, r, Webhook::Mutate)))
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
    request: Request,
    webhook: Webhook,
) -> Response {
    let (Parts { headers, uri, .. }, body) = request.into_parts();
    let reject = |reason: Rejection, status: StatusCode, message: &str| {
        state.metrics.rejected(reason);
        plain(status, message)
    };
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return reject(Rejection::Overloaded, StatusCode::SERVICE_UNAVAILABLE, "tokengate is overloaded, retry later");
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let is_json = content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return reject(Rejection::ContentType, StatusCode::BAD_REQUEST, "Content-Type must be application/json");
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = format!("the body exceeds {MAX_BODY_BYTES} bytes");
    if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
        return reject(Rejection::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return reject(Rejection::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
        }
        Err(err) => {
            return reject(Rejection::BadRequest, StatusCode::BAD_REQUEST, &format!("cannot read the body: {err}"));
        }
    };
    let Some(policy) = state.policy.borrow().clone() else {
        return reject(Rejection::NoPolicy, StatusCode::SERVICE_UNAVAILABLE, "tokengate has no valid policy loaded");
    };
    let started = Instant::now();
    // Lookups end before the API server stops waiting, so a slow API still gets our reason.
    let timeout = timeout_from_query(uri.query()).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
    let cluster = WithDeadline::new(state.cluster.as_ref(), timeout);
    match review::review(&bytes, webhook, &policy, &cluster).await {
        Reply::Review { body, summary } => {
            let elapsed = started.elapsed();
            state.metrics.review(webhook, summary.subject, summary.decision, elapsed);
            if state.log_reviews {
                log_review(webhook, &summary, elapsed);
            }
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
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
