//! Prometheus metrics: reviews, rejections, policy and certificate reloads, build info.
//!
//! Every label value comes from a closed set (webhook, kind, decision, reason, result), never
//! from namespaces, names or error text.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::{Decision, Subject, Webhook};

/// Why the server refused an HTTP request before deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The body is larger than the limit (413).
    BodyTooLarge,
    /// The Content-Type is not JSON (400).
    ContentType,
    /// Too many reviews in flight (503).
    Overloaded,
    /// The body is not an AdmissionReview with a uid (400).
    BadRequest,
    /// No valid policy has been loaded yet (503).
    NoPolicy,
    /// The request (headers and body) did not arrive within the read timeout: the connection
    /// is closed.
    ReadTimeout,
    /// Buffering the body (or the answer) would take what is buffered past the byte budget, or
    /// a large body past the part of it that small bodies do not keep (503).
    BodyBudget,
    /// Buffering the body (or the answer) would take what its client (IP address) holds past
    /// that client's share of the byte budget (429).
    PeerBudget,
    /// The client did not take the answer within the read timeout: the connection is closed.
    WriteTimeout,
}

impl Rejection {
    fn as_str(self) -> &'static str {
        match self {
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::ContentType => "content_type",
            Rejection::Overloaded => "overloaded",
            Rejection::BadRequest => "bad_request",
            Rejection::NoPolicy => "no_policy",
            Rejection::ReadTimeout => "read_timeout",
            Rejection::BodyBudget => "body_budget",
            Rejection::PeerBudget => "peer_budget",
            Rejection::WriteTimeout => "write_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    webhook: &'static str,
    kind: &'static str,
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// An API server audience: from the cluster's configuration, a handful at most.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AudienceLabels {
    audience: String,
}

/// The kinds the watch caches keep (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CachedKind {
    ServiceAccount,
    CsiDriver,
    Pod,
    PersistentVolumeClaim,
    PersistentVolume,
}

impl CachedKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            CachedKind::ServiceAccount => "ServiceAccount",
            CachedKind::CsiDriver => "CSIDriver",
            CachedKind::Pod => "Pod",
            CachedKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            CachedKind::PersistentVolume => "PersistentVolume",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric tokengate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    durations: Family<WebhookLabels, Histogram>,
    rejections: Family<ReasonLabels, Counter>,
    policy_generation: Gauge,
    policy_reloads: Family<ResultLabels, Counter>,
    certificate_expiry: Gauge,
    certificate_reloads: Family<ResultLabels, Counter>,
    webhooks_applied_generation: Gauge,
    webhooks_applies: Family<ResultLabels, Counter>,
    native_policies: Gauge,
    native_policy_applies: Family<ResultLabels, Counter>,
    api_server_audiences: Family<AudienceLabels, Gauge>,
    cache_decode_failures: Family<KindLabels, Counter>,
    cache_undecodable: Family<KindLabels, Gauge>,
}

/// Latency buckets in seconds, from 50 µs: decisions take microseconds.
const DURATION_BUCKETS: [f64; 12] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `tokengate_` prefix.
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("tokengate"),
            reviews: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            rejections: Family::default(),
            policy_generation: Gauge::default(),
            policy_reloads: Family::default(),
            certificate_expiry: Gauge::default(),
            certificate_reloads: Family::default(),
            webhooks_applied_generation: Gauge::default(),
            webhooks_applies: Family::default(),
            native_policies: Gauge::default(),
            native_policy_applies: Family::default(),
            api_server_audiences: Family::default(),
            cache_decode_failures: Family::default(),
            cache_undecodable: Family::default(),
        };
        // The exposition lists metrics in the order they are registered.
        metrics.register_admission();
        metrics.register_reloads();
        metrics.register_webhook_configurations();
        metrics.register_build_info();
        metrics.register_cluster();
        metrics
    }

    /// Reviews answered, how long they took, and HTTP requests refused before a decision.
    fn register_admission(&mut self) {
        self.registry.register(
            "admission_reviews",
            "Admission reviews answered, by webhook, kind and decision",
            self.reviews.clone(),
        );
        self.registry.register(
            "admission_review_duration_seconds",
            "Time to decode, decide and encode one review",
            self.durations.clone(),
        );
        self.registry.register(
            "http_rejections",
            "HTTP requests refused before a decision, by reason",
            self.rejections.clone(),
        );
    }

    /// The policy in force and the serving certificate's expiry, and how their loads went.
    fn register_reloads(&mut self) {
        self.registry.register(
            "policy_generation",
            "How many valid policies have been loaded",
            self.policy_generation.clone(),
        );
        self.registry.register(
            "policy_reloads",
            "Policy loads, by result (success, error)",
            self.policy_reloads.clone(),
        );
        self.registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time)",
            self.certificate_expiry.clone(),
        );
        self.registry.register(
            "certificate_reloads",
            "Serving certificate loads, by result (success, error)",
            self.certificate_reloads.clone(),
        );
    }

    /// The policy generation the webhook configurations follow, and how their applies went.
    fn register_webhook_configurations(&mut self) {
        self.registry.register(
            "webhook_configurations_policy_generation",
            "The policy generation the webhook configurations were last applied for (serve --manage-webhooks)",
            self.webhooks_applied_generation.clone(),
        );
        self.registry.register(
            "webhook_configuration_applies",
            "Server-side applies of the webhook configurations, by result (success, error)",
            self.webhooks_applies.clone(),
        );
        self.registry.register(
            "native_policies",
            "Admission policies tokengate keeps in force inside the API server (serve --native-policies)",
            self.native_policies.clone(),
        );
        self.registry.register(
            "native_policy_applies",
            "Rounds applying and removing the native policies (serve --native-policies), by result (success, error)",
            self.native_policy_applies.clone(),
        );
    }

    /// The version this binary was built from, as a label of a gauge that is always 1.
    fn register_build_info(&mut self) {
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        self.registry.register("build_info", "Build information; always 1", build_info);
    }

    /// What was learned from the cluster: its API server audiences, and the objects the watch
    /// caches could not decode.
    fn register_cluster(&mut self) {
        self.registry.register(
            "api_server_audiences_info",
            "The API server audiences learned from tokengate's own service-account token; always 1",
            self.api_server_audiences.clone(),
        );
        self.registry.register(
            "cache_decode_failures",
            "Objects a watch cache skipped because they do not decode, counted once per object, by kind",
            self.cache_decode_failures.clone(),
        );
        self.registry.register(
            "cache_undecodable_objects",
            "Objects currently skipped by a watch cache because they do not decode, by kind",
            self.cache_undecodable.clone(),
        );
    }

    /// Counts an object a watch cache found not to decode (once per object).
    pub fn cache_decode_failed(&self, kind: CachedKind) {
        self.cache_decode_failures.get_or_create(&KindLabels { kind: kind.as_str() }).inc();
    }

    /// Records how many objects of `kind` a watch cache currently skips.
    pub fn cache_undecodable(&self, kind: CachedKind, count: usize) {
        self.cache_undecodable
            .get_or_create(&KindLabels { kind: kind.as_str() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Records the API server audiences learned from the cluster.
    pub fn api_server_audiences(&self, audiences: &[String]) {
        for audience in audiences {
            self.api_server_audiences.get_or_create(&AudienceLabels { audience: audience.clone() }).set(1);
        }
    }

    /// Counts one answered review.
    pub fn review(&self, webhook: Webhook, subject: Subject, decision: Decision, duration: Duration) {
        let labels = ReviewLabels { webhook: webhook.as_str(), kind: subject.as_str(), decision: decision.as_str() };
        self.reviews.get_or_create(&labels).inc();
        self.durations.get_or_create(&WebhookLabels { webhook: webhook.as_str() }).observe(duration.as_secs_f64());
    }

    /// Counts one refused HTTP request.
    pub fn rejected(&self, reason: Rejection) {
        self.rejections.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// Records a policy that loaded and is now in force.
    pub fn policy_loaded(&self, generation: u64) {
        self.policy_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.policy_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
    }

    /// Records a policy update that was refused (the previous policy stays).
    pub fn policy_failed(&self) {
        self.policy_reloads.get_or_create(&ResultLabels { result: "error" }).inc();
    }

    /// Records a serving certificate that loaded, with its expiry (Unix seconds).
    pub fn certificate_loaded(&self, not_after: i64) {
        self.certificate_expiry.set(not_after);
        self.certificate_reloads.get_or_create(&ResultLabels { result: "success" }).inc();
    }

    /// Records a certificate update that was refused (the previous certificate stays).
    pub fn certificate_failed(&self) {
        self.certificate_reloads.get_or_create(&ResultLabels { result: "error" }).inc();
    }

    /// The generation of the policy in force (0 before one has loaded).
    pub fn policy_generation(&self) -> i64 {
        self.policy_generation.get()
    }

    /// Records that the webhook configurations now follow policy `generation`.
    pub fn webhooks_applied(&self, generation: i64) {
        self.webhooks_applied_generation.set(generation);
        self.webhooks_applies.get_or_create(&ResultLabels { result: "success" }).inc();
    }

    /// Records a refused or failed apply of the webhook configurations (it is retried).
    pub fn webhooks_apply_failed(&self) {
        self.webhooks_applies.get_or_create(&ResultLabels { result: "error" }).inc();
    }

    /// Records that `count` native policies are in force, applied with the configurations.
    pub fn native_policies_applied(&self, count: usize) {
        self.native_policies.set(i64::try_from(count).unwrap_or(i64::MAX));
        self.native_policy_applies.get_or_create(&ResultLabels { result: "success" }).inc();
    }

    /// Records a failed discovery, apply or removal of native policies (it is retried; the full
    /// webhook configurations stay or are put back).
    pub fn native_policies_apply_failed(&self) {
        self.native_policy_applies.get_or_create(&ResultLabels { result: "error" }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
