//! HTTP routes: `/validate` and `/mutate` on the TLS port; `/livez`, `/readyz`, `/metrics` on
//! the admin port. Handlers only decode, call the pure review, and encode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::sync::Semaphore;

use crate::cluster::{timeout_from_query, Cluster, WithDeadline};
use crate::metrics::{Metrics, Rejection};
use crate::review::{self, Reply, Summary, Webhook};
use crate::source::PolicyReceiver;

use super::body::{BodyBudget, BodyError, Buffered, DecodeBudget, Peer};
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
    /// Bytes that request bodies being read or reviewed, and answers, may take: all together,
    /// and per client.
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
        .route("/validate", post(|s, c, p, r| handle(s, c, p, r, Webhook::Validate)))
        .route("/mutate", post(|s, c, p, r| handle(s, c, p, r, Webhook::Mutate)))
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

/// A request refused before a decision: counted by reason, answered in plain text.
struct Refusal {
    reason: Rejection,
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(reason: Rejection, status: StatusCode, message: impl Into<String>) -> Self {
        Self { reason, status, message: message.into() }
    }

    fn overloaded() -> Self {
        Self::new(Rejection::Overloaded, StatusCode::SERVICE_UNAVAILABLE, "tokengate is overloaded, retry later")
    }

    /// Counts the refusal and answers it.
    fn respond(self, metrics: &Metrics) -> Response {
        metrics.rejected(self.reason);
        plain(self.status, self.message)
    }

    /// Counts the refusal and answers it, closing the connection: the body was not read whole,
    /// and what is left of it is not worth reading.
    fn respond_unread(self, metrics: &Metrics) -> Response {
        let mut response = self.respond(metrics);
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

impl From<BodyError> for Refusal {
    fn from(err: BodyError) -> Self {
        let (reason, status) = match err {
            BodyError::TooLarge { .. } => (Rejection::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            BodyError::OverBudget => (Rejection::BodyBudget, StatusCode::SERVICE_UNAVAILABLE),
            BodyError::PeerOverBudget => (Rejection::PeerBudget, StatusCode::TOO_MANY_REQUESTS),
            BodyError::Read(_) => (Rejection::BadRequest, StatusCode::BAD_REQUEST),
        };
        Self::new(reason, status, err.to_string())
    }
}

async fn handle<C: Cluster + Send + Sync + 'static>(
    State(state): State<Arc<AppState<C>>>,
    clock: Option<Extension<Arc<Deadlines>>>,
    peer: Option<Extension<Peer>>,
    request: Request,
    webhook: Webhook,
) -> Response {
    let peer = peer.map_or(Peer::UNKNOWN, |Extension(peer)| peer);
    let (Parts { headers, uri, .. }, body) = request.into_parts();
    let body = match receive(&state, peer, &headers, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal.respond_unread(&state.metrics),
    };
    if let Some(Extension(clock)) = clock {
        clock.request_read();
    }
    let timeout = timeout_from_query(uri.query()).unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
    decide(&state, peer, body, webhook, timeout).await.unwrap_or_else(|refusal| refusal.respond(&state.metrics))
}

/// Checks the Content-Type and reads the body whole under the byte budget and the read deadline.
///
/// The body is read before a decision permit is taken, so slow clients hold no permit; on
/// HTTP/1.1 the connection's read clock (started at the request's first byte) fires first, this
/// deadline covers HTTP/2 streams.
async fn receive<C>(state: &AppState<C>, peer: Peer, headers: &HeaderMap, body: Body) -> Result<Buffered, Refusal> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let is_json = content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        let message = "Content-Type must be application/json";
        return Err(Refusal::new(Rejection::ContentType, StatusCode::BAD_REQUEST, message));
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let read = state.body_budget.read(peer, body, declared, MAX_BODY_BYTES);
    match tokio::time::timeout(state.read_timeout, read).await {
        Ok(read) => Ok(read?),
        Err(_) => {
            let message = "the request was not received within the read timeout";
            Err(Refusal::new(Rejection::ReadTimeout, StatusCode::REQUEST_TIMEOUT, message))
        }
    }
}

/// Reviews a body read whole, once a decision permit, a policy and room to decode it are there.
async fn decide<C: Cluster + Send + Sync + 'static>(
    state: &AppState<C>,
    peer: Peer,
    body: Buffered,
    webhook: Webhook,
    timeout: Duration,
) -> Result<Response, Refusal> {
    let _permit = state.in_flight.try_acquire().map_err(|_| Refusal::overloaded())?;
    let Some(policy) = state.policy.borrow().clone() else {
        let message = "tokengate has no valid policy loaded";
        return Err(Refusal::new(Rejection::NoPolicy, StatusCode::SERVICE_UNAVAILABLE, message));
    };
    let decoding = state.decoding.admit(body.bytes().len(), DECODE_WAIT).await.ok_or_else(Refusal::overloaded)?;
    let started = Instant::now();
    // Lookups end before the API server stops waiting, so a slow API still gets our reason.
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
            let answer = state.body_budget.answer(peer, body)?;
            Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response())
        }
        Reply::BadRequest(message) => Err(Refusal::new(Rejection::BadRequest, StatusCode::BAD_REQUEST, message)),
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
