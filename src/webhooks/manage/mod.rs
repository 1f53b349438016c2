//! `serve --manage-webhooks`: keeps the live webhook configurations equal to what the policy in
//! force computes, by server-side apply with one field manager.
//!
//! Every replica runs this task once it is ready (policy and certificate loaded, caches synced):
//! they all apply the same objects as the same field manager, so their writes are idempotent and
//! never conflict with each other. The apply is forced: a field tokengate sets that someone
//! changed by hand (and so came to own) is taken back and reset. Server-side apply never removes
//! a field another manager owns, so after each apply the webhooks are compared with what was
//! applied and any field tokengate does not set (an `objectSelector` or a match condition added
//! by hand, a webhook added to tokengate's configurations) is removed with a JSON patch guarded
//! by `test` operations. Two things are kept: a `caBundle` set by cert-manager's cainjector (or
//! anyone else) when no bundle is configured, and values the API server itself defaults. A
//! failed write is logged, counted and retried with backoff; it never touches readiness.
//!
//! With `--native-policies` ([`native`]) each round first applies the native policies the API
//! server serves, then the webhook configurations narrowed beside them, and only then removes
//! native policies the policy no longer needs: a rule is always enforced by one side or the
//! other. When the native policies cannot be applied, the full configurations are applied.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

mod additions;
pub mod native;

use super::native::{narrow, native_for, ServedApis};
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
    /// How long after the last successful apply the configurations are applied again although
    /// they did not change (policy changes that leave them alone do not put this off), to undo
    /// edits and deletions by hand.
    pub resync: Duration,
    /// Where the Events recording each apply go (the policy ConfigMap or tokengate's Pod).
    pub event_target: Option<ObjectReference>,
    /// `--native-policies`: apply the native policies the API server serves and narrow the
    /// webhooks beside them. Off, native policies an earlier run applied are removed (after the
    /// full configurations are in place).
    pub native_policies: bool,
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
            native_policies: false,
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
    /// The configuration or the patch removing fields added by hand did not serialise (a bug).
    #[error("encoding the webhook configuration: {0}")]
    Encode(#[from] serde_json::Error),
    /// Discovering, applying or removing native policies failed.
    #[error(transparent)]
    Native(#[from] native::NativeError),
}

/// What one round puts in place: the native objects (none without `--native-policies`, or on an
/// API server that serves no admission policies), the webhook configurations narrowed beside
/// them, and the full configurations to fall back on.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// What the API server serves; `None` without `--native-policies` (not asked).
    served: Option<ServedApis>,
    native: Vec<Value>,
    narrowed: Configurations,
    full: Configurations,
}

impl Plan {
    /// How many admission policies (not bindings) the plan applies.
    fn native_policies(&self) -> usize {
        self.native.iter().filter(|object| object["kind"].as_str().is_some_and(|k| k.ends_with("Policy"))).count()
    }
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
    let mut applied: Option<Plan> = None;
    let mut backoff = options.initial_backoff;
    // When to apply again although nothing changed: one period after the last successful apply,
    // however many policy changes (that leave the configurations alone) come in between.
    let mut resync_at = tokio::time::Instant::now() + options.resync;
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
        // Asked again every round: an upgrade of the API server may serve more.
        let outcome = match plan(&client, &current, &options).await {
            Ok(wanted) if applied.as_ref() == Some(&wanted) => Ok(None),
            Ok(wanted) => put_in_place(&client, &wanted, &options).await.map(|()| Some(wanted)),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(wanted)) => {
                metrics.webhooks_applied(generation);
                if options.native_policies {
                    metrics.native_policies_applied(wanted.native_policies());
                }
                tracing::info!(
                    name = %options.webhooks.name,
                    policy_generation = generation,
                    native_policies = wanted.native_policies(),
                    served = ?wanted.served,
                    "webhook configurations applied"
                );
                record_event(&client, &options, generation, wanted.native_policies()).await;
                applied = Some(wanted);
                backoff = options.initial_backoff;
                resync_at = tokio::time::Instant::now() + options.resync;
            }
            Err(err) => {
                match err {
                    ApplyError::Native(_) => metrics.native_policies_apply_failed(),
                    _ => metrics.webhooks_apply_failed(),
                }
                tracing::warn!(
                    error = %err,
                    retry_in = ?backoff,
                    "could not put the webhook configurations (and native policies) in place"
                );
                // What is in place is no longer known: the next round writes everything.
                applied = None;
                tokio::select! {
                    changed = policy.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(options.max_backoff);
                continue;
            }
        }
        tokio::select! {
            changed = policy.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(resync_at) => applied = None,
        }
    }
}

/// What `policy` needs in place: with `--native-policies`, the native policies of what the API
/// server serves and the configurations narrowed beside them; otherwise the full configurations.
async fn plan(client: &kube::Client, policy: &Policy, options: &ManageOptions) -> Result<Plan, ApplyError> {
    let full = configurations(policy, &options.webhooks);
    if !options.native_policies {
        return Ok(Plan { served: None, native: Vec::new(), narrowed: full.clone(), full });
    }
    let served = native::served_apis(client).await?;
    let name = &options.webhooks.name;
    let policies = native_for(policy, name, served);
    let objects = policies.objects().into_iter().map(|object| native::labelled(object, name)).collect();
    let narrowed = narrow::narrow(policy, full.clone(), &policies);
    Ok(Plan { served: Some(served), native: objects, narrowed, full })
}

/// Puts `plan` in place in the order that never leaves a rule to neither side: the native
/// objects first (each applied is accepted: the API server validated and stored it), then the
/// configurations narrowed beside them, and only then the removal of native objects the plan no
/// longer holds (their rules are back in the configurations just applied). When a native object
/// is refused, the full configurations are applied instead and the error returned.
async fn put_in_place(client: &kube::Client, plan: &Plan, options: &ManageOptions) -> Result<(), ApplyError> {
    if let Err(err) = native::apply_all(client, &plan.native).await {
        if let Err(fallback) = apply(client, &plan.full).await {
            tracing::warn!(error = %fallback, "could not apply the full webhook configurations after a native policy was refused");
        }
        return Err(err.into());
    }
    apply(client, &plan.narrowed).await?;
    let name = &options.webhooks.name;
    let removed = native::remove_unwanted(client, name, &plan.native, !options.native_policies).await?;
    if !removed.is_empty() {
        tracing::info!(
            ?removed,
            "removed native policies the policy no longer needs (their rules are back in the webhooks)"
        );
    }
    Ok(())
}

/// Server-side applies both configurations (creating them when missing).
pub async fn apply(client: &kube::Client, configurations: &Configurations) -> Result<(), ApplyError> {
    apply_one::<MutatingWebhookConfiguration>(client, &configurations.mutating).await?;
    apply_one::<ValidatingWebhookConfiguration>(client, &configurations.validating).await
}

async fn apply_one<K>(client: &kube::Client, configuration: &WebhookConfiguration) -> Result<(), ApplyError>
where
    K: kube::Resource<DynamicType = ()>,
{
    // The raw object is read back (never a typed round trip), so fields k8s-openapi does not
    // know are seen and kept.
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    let body = serde_json::to_value(configuration)?;
    let name = &configuration.metadata.name;
    let failed = |source| ApplyError::Api { kind: static_kind(&configuration.kind), name: name.clone(), source };
    // force: take back fields an edit by hand (or an earlier `kubectl apply`) came to own.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let live = api.patch(name, &params, &Patch::Apply(&body)).await.map_err(failed)?;
    let removed = additions::remove(&api, name, &live.data, &body, "webhooks").await.map_err(failed)?;
    if !removed.is_empty() {
        tracing::warn!(
            kind = static_kind(&configuration.kind),
            name = %name,
            removed = ?removed,
            "removed fields that tokengate does not set from its webhook configuration (added by hand?)"
        );
    }
    Ok(())
}

fn static_kind(kind: &str) -> &'static str {
    if kind.starts_with("Mutating") {
        "MutatingWebhookConfiguration"
    } else {
        "ValidatingWebhookConfiguration"
    }
}

async fn record_event(client: &kube::Client, options: &ManageOptions, generation: i64, native_policies: usize) {
    let Some(target) = &options.event_target else { return };
    let beside = match native_policies {
        0 => String::new(),
        n => format!(" (narrowed beside {n} native policies)"),
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "WebhooksApplied".to_string(),
        note: Some(format!(
            "tokengate applied the webhook configurations {}{beside} for policy generation {generation}",
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
