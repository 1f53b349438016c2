//! `serve --manage-webhooks`: keeps the live webhook configurations equal to what the policy in
//! force computes, by server-side apply with one field manager.
//!
//! Every replica runs this task once it is ready (policy and certificate loaded, caches synced):
//! they all apply the same objects as the same field manager, so their writes are idempotent and
//! never conflict. Only the fields written here are owned: a `caBundle` set by cert-manager's
//! cainjector (or anyone else) stays as it is unless a bundle is configured. A failed write is
//! logged, counted and retried with backoff; it never touches readiness.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{configurations, Configurations, Options, WebhookConfiguration};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::source::PolicyReceiver;

/// The field manager of every write (server-side apply).
pub const FIELD_MANAGER: &str = "tokengate-webhooks";

/// How the manager behaves.
#[derive(Debug, Clone)]
pub struct ManageOptions {
    pub webhooks: Options,
    /// First wait after a failed apply; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How often readiness is checked before the first apply.
    pub readiness_poll: Duration,
    /// How often the configurations are applied again although the policy did not change, to
    /// undo edits and deletions by hand.
    pub resync: Duration,
    /// Where the Events recording each apply go (the policy ConfigMap or tokengate's Pod).
    pub event_target: Option<ObjectReference>,
}

impl ManageOptions {
    /// The defaults: backoff 1 s to 1 min, readiness checked every second, resync every 10 min.
    pub fn new(webhooks: Options) -> Self {
        ManageOptions {
            webhooks,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            readiness_poll: Duration::from_secs(1),
            resync: Duration::from_secs(600),
            event_target: None,
        }
    }
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused the write or could not be reached.
    #[error("applying {kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The configuration did not serialise (a bug).
    #[error("encoding the webhook configuration: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Runs until every policy sender is gone: waits for `ready()`, then applies the configurations
/// for each policy in force, retrying failures with backoff.
pub async fn run<R>(
    client: kube::Client,
    mut policy: PolicyReceiver,
    ready: R,
    options: ManageOptions,
    metrics: Arc<Metrics>,
) where
    R: Fn() -> bool + Send,
{
    let mut applied: Option<Configurations> = None;
    let mut backoff = options.initial_backoff;
    loop {
        let current: Option<Arc<Policy>> = policy.borrow_and_update().clone();
        let Some(current) = current.filter(|_| ready()) else {
            tokio::select! {
                changed = policy.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(options.readiness_poll) => {}
            }
            continue;
        };
        let generation = metrics.policy_generation();
        let wanted = configurations(&current, &options.webhooks);
        if applied.as_ref() != Some(&wanted) {
            match apply(&client, &wanted).await {
                Ok(()) => {
                    metrics.webhooks_applied(generation);
                    tracing::info!(
                        name = %options.webhooks.name,
                        policy_generation = generation,
                        "webhook configurations applied"
                    );
                    record_event(&client, &options, generation).await;
                    applied = Some(wanted);
                    backoff = options.initial_backoff;
                }
                Err(err) => {
                    metrics.webhooks_apply_failed();
                    tracing::warn!(error = %err, retry_in = ?backoff, "could not apply the webhook configurations");
                    tokio::select! {
                        changed = policy.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(options.max_backoff);
                    continue;
                }
            }
        }
        tokio::select! {
            changed = policy.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(options.resync) => applied = None,
        }
    }
}

/// Server-side applies both configurations (creating them when missing).
pub async fn apply(client: &kube::Client, configurations: &Configurations) -> Result<(), ApplyError> {
    apply_one::<MutatingWebhookConfiguration>(client, &configurations.mutating).await?;
    apply_one::<ValidatingWebhookConfiguration>(client, &configurations.validating).await
}

async fn apply_one<K>(client: &kube::Client, configuration: &WebhookConfiguration) -> Result<(), ApplyError>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let body = serde_json::to_value(configuration)?;
    // force: take over fields an earlier `kubectl apply` of the same objects owned.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = &configuration.metadata.name;
    api.patch(name, &params, &Patch::Apply(&body)).await.map(|_| ()).map_err(|source| ApplyError::Api {
        kind: static_kind(&configuration.kind),
        name: name.clone(),
        source,
    })
}

fn static_kind(kind: &str) -> &'static str {
    if kind.starts_with("Mutating") {
        "MutatingWebhookConfiguration"
    } else {
        "ValidatingWebhookConfiguration"
    }
}

async fn record_event(client: &kube::Client, options: &ManageOptions, generation: i64) {
    let Some(target) = &options.event_target else { return };
    let event = Event {
        type_: EventType::Normal,
        reason: "WebhooksApplied".to_string(),
        note: Some(format!(
            "tokengate applied the webhook configurations {} for policy generation {generation}",
            options.webhooks.name
        )),
        action: "ApplyWebhookConfigurations".to_string(),
        secondary: None,
    };
    let reporter = Reporter { controller: "tokengate".to_string(), instance: std::env::var("POD_NAME").ok() };
    if let Err(err) = Recorder::new(client.clone(), reporter).publish(&event, target).await {
        tracing::warn!(error = %err, "could not record an Event for the applied webhook configurations");
    }
}
