//! `tokengate explain`: every credential a pod (or each pod of a workload) will hold, and the
//! verdict on each: the `audiences` entry that allows it, or the violation as the webhook words it.
//!
//! Objects go through `simulate::create`, the path `check` takes (automount volume and mutation
//! first for manifests, so injected tokens appear), so both report the same violations and
//! notes; the rows come from `review::credentials::pod_credentials`, the list the Pod
//! validation takes its violations from.

pub mod live;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::manifest::Document;
use crate::policy::{describe_audience, Lifetime, Mode, Policy, Token};
use crate::report::DecidedBy;
use crate::review::credentials::{self, Credential, Found, Origin, Outcome};
use crate::review::legacy_token::{self, SERVICE_ACCOUNT_NAME_ANNOTATION};
use crate::review::lookup::Cluster;
use crate::review::pod_view::{Pod, PodView};
use crate::review::{Subject, Violation};
use crate::simulate::{self, claim_credentials, classify, AdmittedPod, Classified, Extras};

/// The kubelet asks for a fresh token once it is older than this, whatever its lifetime.
/// Upstream: `maxTTL` in `pkg/kubelet/token/token_manager.go`.
pub const MAX_REFRESH_SECONDS: u64 = 24 * 60 * 60;

/// When the kubelet refreshes a token: at 80 % of its lifetime or after 24 h, whichever comes
/// first. Upstream, `Manager.requiresRefresh` (pkg/kubelet/token/token_manager.go) measures
/// the lifetime from `status.expirationTimestamp`, which `TokenREST.Create`
/// (pkg/registry/core/serviceaccount/storage/token.go) sets from the requested
/// `expirationSeconds` even when the token itself is extended: so an extended automount token
/// (valid one year) is still replaced about every 48 minutes. The jitter (up to 10 s) is left out.
pub fn refresh_after_seconds(lifetime: Lifetime) -> u64 {
    let requested = lifetime.requested;
    (requested - requested * 20 / 100).min(MAX_REFRESH_SECONDS)
}

/// Where a credential comes from; a closed set, in the order rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The `kube-api-access-*` volume.
    Automount,
    /// A projected `serviceAccountToken` source (also those an injection adds).
    Projected,
    /// A token a CSI driver the pod reaches has the kubelet mint.
    CsiDriver,
    /// A Secret of type `kubernetes.io/service-account-token` the pod mounts.
    LegacySecret,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Automount => "automount token",
            Source::Projected => "projected token",
            Source::CsiDriver => "CSI driver token",
            Source::LegacySecret => "legacy Secret token",
        }
    }
}

/// A container that mounts the credential's volume, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub container: String,
    pub path: String,
}

/// An environment variable an injection sets, as the patched pod carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    pub container: String,
    pub name: String,
    pub value: String,
}

/// The injection a projected token volume belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionRow {
    pub name: String,
    /// Whether the mutating webhook adds it (false: the pod already carries it).
    pub added_by_webhook: bool,
    pub env: Vec<Env>,
}

/// `reachedThrough` of a CSI driver the pod mounts inline.
pub const INLINE: &str = "inline";

/// The CSI driver a token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverRow {
    pub name: String,
    /// `inline`, `PersistentVolumeClaim NAME -> PersistentVolume NAME`, ...
    pub reached_through: String,
    /// `spec.requiresRepublish` of the CSIDriver, when the object is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_republish: Option<bool>,
    /// `spec.serviceAccountTokenInSecrets`: whether the token travels in the NodePublishVolume
    /// secrets field rather than the volume context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_in_secrets: Option<bool>,
}

/// The verdict on one credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum RowVerdict {
    /// Admitted whatever the allow-list says.
    #[serde(rename_all = "camelCase")]
    AlwaysAdmitted { reason: String },
    /// The `audiences` entry that allows it.
    #[serde(rename_all = "camelCase")]
    Allowed { entry: usize, namespaces: Vec<String>, service_accounts: Vec<String>, max_expiration_seconds: u64 },
    /// A legacy token the policy's `legacyTokens` lists.
    #[serde(rename_all = "camelCase")]
    LegacyTokenListed,
    /// The violation, as the webhook words it: the object is refused for it.
    #[serde(rename_all = "camelCase")]
    Violation {
        /// The rule it breaks (`review::rules`).
        #[serde(skip)]
        rule: &'static str,
        field: String,
        message: String,
    },
    /// A token of a CSI driver reached through a claim that the policy refuses: the pod is
    /// admitted (the Pod decision does not follow claims), and the kubelet's TokenRequest for
    /// the token is what gets refused, so the volume never mounts.
    #[serde(rename_all = "camelCase")]
    RefusedAtTokenRequest { field: String, message: String },
    /// A legacy token Secret the policy refuses: the Secret itself is refused when it is
    /// created; the pod that mounts it is not.
    #[serde(rename_all = "camelCase")]
    SecretRefused { field: String, message: String },
}

/// One credential a pod will hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub source: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Where the credential sits in the object.
    pub field: String,
    /// The audience as written (absent: the API server audience).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Whether the audience is the API server's (`""`, absent, or in `apiServerAudiences`).
    pub api_server_audience: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_seconds: Option<u64>,
    /// What the API server issues (`None`: never expires).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_after_seconds: Option<u64>,
    pub mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DriverRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The service account the token is for, `namespace/name`.
    pub service_account: String,
    pub verdict: RowVerdict,
    /// Who decides it at admission (set by the caller from the native split, see
    /// `who_decides`).
    #[serde(flatten)]
    pub decided: Option<DecidedBy>,
}

/// Everything explained about one Pod or workload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub credentials: Vec<Row>,
    /// Violations of the object that belong to no credential (a required injection missing, a
    /// collision, a lookup that failed, a CSIDriver's or Secret's own), as the webhook words them.
    pub other_violations: Vec<Violation>,
    /// What the webhooks would tell the requester (e.g. a variable left out), and every object a
    /// lookup did not find: the notes `check` prints.
    pub notes: Vec<String>,
    /// Claims whose CSI driver could not be followed, so their tokens are not shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<String>,
    /// How many violations the object has: those `check` reports.
    pub violation_count: usize,
    /// For a CSIDriver or a legacy token Secret (whose credentials have no rows): who decides
    /// the object at admission.
    #[serde(flatten)]
    pub decided: Option<DecidedBy>,
}

impl Explained {
    /// Keeps the decision's violations that no credential row carries, once each.
    fn set_violations(&mut self, decided: Vec<Violation>) {
        let in_rows: Vec<Violation> = self.row_violations().collect();
        self.violation_count = decided.len();
        let mut others: Vec<Violation> = Vec::new();
        for violation in decided {
            if !in_rows.contains(&violation) && !others.contains(&violation) {
                others.push(violation);
            }
        }
        self.other_violations = others;
    }

    /// The violations the rows carry, of tokens the object itself is refused for.
    fn row_violations(&self) -> impl Iterator<Item = Violation> + '_ {
        self.credentials.iter().filter_map(|row| match &row.verdict {
            RowVerdict::Violation { rule, field, message } => Some(Violation::new(rule, field, message)),
            _ => None,
        })
    }
}

/// Everything `explain` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub mode: &'static str,
    pub objects: Vec<Explained>,
    /// How many violations there are, in all objects.
    pub violations: usize,
}

impl Report {
    /// Whether a violation would be denied at admission (Enforce mode).
    pub fn fails(&self) -> bool {
        self.mode == Mode::Enforce.as_str() && self.violations > 0
    }

    /// The report for people: one block per object, one paragraph per credential.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for object in &self.objects {
            write_object(&mut out, object, self.mode);
        }
        out
    }
}

/// Explains every object `check` judges among `documents` (Pods and workloads with a row per
/// credential; CSIDrivers and legacy token Secrets by their violations); others are skipped.
pub async fn explain<C: Cluster>(
    policy: &Policy,
    documents: &[Document],
    cluster: &C,
    extras: &Extras,
    options: simulate::Options<'_>,
) -> Report {
    let mut objects = Vec::new();
    for document in documents {
        let Ok(target) = classify(&document.object, options.default_namespace) else { continue };
        objects.push(explain_object(policy, document, &target, cluster, extras, options).await);
    }
    let violations = objects.iter().map(|o| o.violation_count).sum();
    Report { mode: policy.mode().as_str(), objects, violations }
}

async fn explain_object<C: Cluster>(
    policy: &Policy,
    document: &Document,
    target: &Classified,
    cluster: &C,
    extras: &Extras,
    options: simulate::Options<'_>,
) -> Explained {
    let created = simulate::create(&document.object, target, options, policy, cluster, extras).await;
    let mut explained = Explained {
        file: document.file.clone(),
        kind: target.kind.clone(),
        namespace: target.namespace().to_string(),
        name: target.name.clone(),
        service_account: String::new(),
        credentials: Vec::new(),
        other_violations: Vec::new(),
        notes: created.notes,
        unresolved: Vec::new(),
        violation_count: 0,
        decided: None,
    };
    if let Some(pod) = &created.pod {
        add_rows(&mut explained, pod, target, policy, cluster, extras).await;
    }
    explained.set_violations(created.violations);
    explained
}

/// The rows of every credential the pod will hold.
async fn add_rows<C: Cluster>(
    explained: &mut Explained,
    admitted: &AdmittedPod,
    target: &Classified,
    policy: &Policy,
    cluster: &C,
    extras: &Extras,
) {
    let pod = &admitted.after_mutation;
    let Ok(typed) = serde_json::from_value::<Pod>(pod.clone()) else { return };
    let Some(view) = PodView::new(&typed, target.namespace(), admitted.spec_field.clone()) else { return };
    explained.service_account = view.service_account.to_string();
    let pod_name = (target.subject == Subject::Pod).then_some(target.name.as_str());
    let inline = credentials::pod_credentials(&view, policy, cluster).await;
    let mut found: Vec<(Found<'_>, Option<String>)> = inline.into_iter().map(|f| (f, None)).collect();
    found.extend(claim_credentials(&view, pod, pod_name, policy, cluster, &mut explained.unresolved).await);
    for (item, via) in found {
        if let Found::Token(credential) = item {
            let row = token_row(&view, &credential, via, (&admitted.before_mutation, pod), policy, extras);
            explained.credentials.push(row);
        }
    }
    explained.credentials.extend(legacy_rows(&view, pod, policy, extras));
    explained.credentials.sort_by_key(|row| row.source);
}

/// The row of one token the pod's volumes give it.
fn token_row(
    view: &PodView<'_>,
    credential: &Credential<'_>,
    via: Option<String>,
    (original, pod): (&Value, &Value),
    policy: &Policy,
    extras: &Extras,
) -> Row {
    let volume = credential.origin.volume().to_string();
    let verdict = token_verdict(&credential.outcome, &credential.token(view), via.is_some(), policy);
    let (source, field, driver) = locate_token(&credential.origin, &view.field, via, extras);
    let injection = (source == Source::Projected).then(|| injection_row(&volume, original, pod, policy)).flatten();
    Row {
        source,
        volume: Some(volume.clone()),
        field,
        audience: credential.written_audience.clone(),
        api_server_audience: credential.audience.is_empty(),
        requested_seconds: Some(credential.lifetime.requested),
        effective_seconds: Some(credential.lifetime.effective),
        refresh_after_seconds: Some(refresh_after_seconds(credential.lifetime)),
        mounts: mounts_of(pod, &volume),
        injection,
        driver,
        secret: None,
        service_account: format!("{}/{}", view.namespace, view.service_account),
        verdict,
        decided: None,
    }
}

/// Where a token comes from: its source, the field that asks for it under `spec_field`, and
/// for a CSI driver's token the driver (`via`: the claim it is reached through, if any).
fn locate_token(
    origin: &Origin<'_>,
    spec_field: &str,
    via: Option<String>,
    extras: &Extras,
) -> (Source, String, Option<DriverRow>) {
    match origin {
        Origin::Automount { volume_index, .. } => {
            (Source::Automount, format!("{spec_field}.volumes[{volume_index}]"), None)
        }
        Origin::Projected { volume_index, source_index, .. } => (
            Source::Projected,
            format!("{spec_field}.volumes[{volume_index}].projected.sources[{source_index}].serviceAccountToken"),
            None,
        ),
        Origin::CsiDriver { volume_index, driver, request_index, .. } => {
            let field = format!(
                "{spec_field}.volumes[{volume_index}] -> CSIDriver {driver} spec.tokenRequests[{request_index}]"
            );
            (Source::CsiDriver, field, Some(driver_row(driver.clone(), via, extras)))
        }
    }
}

/// The CSI driver `name`, reached inline or through the claim `via`, with the flags its
/// CSIDriver object sets when that object is known.
fn driver_row(name: String, via: Option<String>, extras: &Extras) -> DriverRow {
    let reached_through = via.unwrap_or_else(|| INLINE.to_string());
    let flags = extras.drivers.get(&name).copied();
    let (requires_republish, token_in_secrets) = (flags.map(|f| f.0), flags.map(|f| f.1));
    DriverRow { name, reached_through, requires_republish, token_in_secrets }
}

/// The verdict on a token: the entry that allows it, or the violation; a denied token reached
/// through a claim is refused when the kubelet requests it rather than at pod admission.
fn token_verdict(outcome: &Outcome, token: &Token<'_>, reached_through_claim: bool, policy: &Policy) -> RowVerdict {
    match outcome {
        Outcome::AlwaysAdmitted => RowVerdict::AlwaysAdmitted {
            reason: "the automount volume (kube-api-access-*) is always admitted".to_string(),
        },
        Outcome::Allowed => match policy.allowing_entry(token) {
            Some(entry) => RowVerdict::Allowed {
                entry: entry.index,
                namespaces: entry.namespaces.to_vec(),
                service_accounts: entry.service_accounts.to_vec(),
                max_expiration_seconds: entry.max_seconds,
            },
            None => RowVerdict::AlwaysAdmitted { reason: "allowed".to_string() },
        },
        Outcome::Denied(violation) if reached_through_claim => {
            RowVerdict::RefusedAtTokenRequest { field: violation.field.clone(), message: violation.message.clone() }
        }
        Outcome::Denied(violation) => RowVerdict::Violation {
            rule: violation.rule,
            field: violation.field.clone(),
            message: violation.message.clone(),
        },
    }
}

/// The injection whose volume this is, and the variables it set in the patched pod.
fn injection_row(volume: &str, original: &Value, pod: &Value, policy: &Policy) -> Option<InjectionRow> {
    let injection = policy.injections().iter().find(|i| i.volume.name == volume)?;
    let had_it = volume_names(original).iter().any(|v| v == volume);
    let names: Vec<&str> = injection.env.iter().map(|e| e.name.as_str()).collect();
    let mut env = Vec::new();
    for container in containers(pod) {
        let mounts_it = container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.get("name").and_then(Value::as_str) == Some(volume)));
        if !mounts_it {
            continue;
        }
        let container_name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        for var in container.get("env").and_then(Value::as_array).into_iter().flatten() {
            let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
            if let (true, Some(value)) = (names.contains(&name), var.get("value").and_then(Value::as_str)) {
                env.push(Env {
                    container: container_name.to_string(),
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Some(InjectionRow { name: injection.name.clone(), added_by_webhook: !had_it, env })
}

/// Legacy token Secrets the pod mounts (`secret` volumes naming a known Secret of type
/// `kubernetes.io/service-account-token`), judged by the Secret decision.
fn legacy_rows(view: &PodView<'_>, pod: &Value, policy: &Policy, extras: &Extras) -> Vec<Row> {
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        let Some(secret_name) = volume.pointer("/secret/secretName").and_then(Value::as_str) else { continue };
        let Some(secret) = extras.legacy_secrets.get(&(view.namespace.to_string(), secret_name.to_string())) else {
            continue;
        };
        let service_account = secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SERVICE_ACCOUNT_NAME_ANNOTATION))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Ok(raw) = serde_json::value::to_raw_value(secret) else { continue };
        let findings = legacy_token::validate(&raw, None, view.namespace, policy);
        let verdict = match findings.violations.into_iter().chain(findings.undecodable).next() {
            Some(violation) => RowVerdict::SecretRefused {
                field: format!("Secret {}/{secret_name} {}", view.namespace, violation.field),
                message: violation.message,
            },
            None => RowVerdict::LegacyTokenListed,
        };
        let volume_name = volume.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        rows.push(Row {
            source: Source::LegacySecret,
            volume: Some(volume_name.clone()),
            field: format!("{}.volumes[{i}].secret", view.field),
            audience: None,
            api_server_audience: true,
            requested_seconds: None,
            effective_seconds: None,
            refresh_after_seconds: None,
            mounts: mounts_of(pod, &volume_name),
            injection: None,
            driver: None,
            secret: Some(secret_name.to_string()),
            service_account: format!("{}/{service_account}", view.namespace),
            verdict,
            decided: None,
        });
    }
    rows
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|key| pod.pointer(&format!("/spec/{key}")).and_then(Value::as_array))
        .flatten()
}

fn volume_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Every container (init containers first) that mounts `volume`, and where.
fn mounts_of(pod: &Value, volume: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for container in containers(pod) {
        let name = container.get("name").and_then(Value::as_str).unwrap_or_default();
        for mount in container.get("volumeMounts").and_then(Value::as_array).into_iter().flatten() {
            if mount.get("name").and_then(Value::as_str) == Some(volume) {
                let path = mount.get("mountPath").and_then(Value::as_str).unwrap_or_default();
                mounts.push(Mount { container: name.to_string(), path: path.to_string() });
            }
        }
    }
    mounts
}

fn write_object(out: &mut String, object: &Explained, mode: &str) {
    let file = object.file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default();
    match (object.namespace.as_str(), object.service_account.as_str()) {
        ("", _) => {
            let _ = writeln!(out, "{} {}{file}", object.kind, object.name);
        }
        (namespace, "") => {
            let _ = writeln!(out, "{} {namespace}/{}{file}", object.kind, object.name);
        }
        (namespace, account) => {
            let _ = writeln!(
                out,
                "{} {namespace}/{}{file}: service account {namespace}/{account}",
                object.kind, object.name
            );
            if object.credentials.is_empty() {
                let _ = writeln!(out, "  no service-account token");
            }
        }
    }
    let denied = match mode {
        "Enforce" => "DENIED",
        "Warn" => "WARNED",
        _ => "AUDITED",
    };
    for row in &object.credentials {
        write_row(out, row, denied);
    }
    for violation in &object.other_violations {
        let _ = writeln!(out, "  {denied} {violation}");
    }
    if let Some(decided) = &object.decided {
        let _ = writeln!(out, "  decided by {}", decided.describe());
    }
    for note in &object.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    for unresolved in &object.unresolved {
        let _ = writeln!(out, "  not followed: {unresolved}");
    }
    out.push('\n');
}

/// One credential's paragraph: where it comes from, its audience and lifetime, the driver's
/// flags, where it is mounted, the variables an injection sets, and the verdict.
fn write_row(out: &mut String, row: &Row, denied: &str) {
    let _ = writeln!(out, "  {}: {}", row.source.label(), describe_origin(row));
    write_lifetime(out, row);
    if let Some(driver) = &row.driver {
        write_driver_flags(out, driver);
    }
    write_mounts(out, &row.mounts);
    if let Some(injection) = &row.injection {
        write_injected_env(out, injection);
    }
    let _ = writeln!(out, "    {}", describe_verdict(&row.verdict, denied));
    if let Some(decided) = &row.decided {
        let _ = writeln!(out, "    decided by {}", decided.describe());
    }
}

/// The volume a credential comes from, and the injection, driver or Secret behind it.
fn describe_origin(row: &Row) -> String {
    let volume = row.volume.as_deref().unwrap_or_default();
    match (&row.injection, &row.driver, &row.secret) {
        (Some(injection), _, _) if injection.added_by_webhook => {
            format!("volume {volume}, added by injection {:?}", injection.name)
        }
        (Some(injection), _, _) => format!("volume {volume}, of injection {:?}", injection.name),
        (None, Some(driver), _) => {
            format!("driver {} through volume {volume} ({})", driver.name, driver.reached_through)
        }
        (None, None, Some(secret)) => format!("Secret {secret} through volume {volume}"),
        _ if row.source == Source::Automount && volume.ends_with("<random>") => {
            format!("volume {volume}, added by the API server's ServiceAccount admission plugin")
        }
        _ => format!("volume {volume}"),
    }
}

/// The audience line: whom the token is for, for how long, and when the kubelet refreshes it.
fn write_lifetime(out: &mut String, row: &Row) {
    let audience = match &row.audience {
        Some(a) if !row.api_server_audience => describe_audience(a),
        Some(a) if !a.is_empty() => format!("{a:?} (an API server audience)"),
        _ => describe_audience(""),
    };
    match (row.requested_seconds, row.effective_seconds, row.refresh_after_seconds) {
        (Some(requested), Some(effective), Some(refresh)) => {
            let effective = if effective == requested {
                String::new()
            } else {
                format!(", extended by the API server to {effective} s")
            };
            let _ = writeln!(
                out,
                "    audience {audience} for {}, {requested} s{effective}; refreshed by the kubelet after {refresh} s",
                row.service_account
            );
        }
        _ => {
            let _ = writeln!(out, "    audience {audience} for {}, never expires", row.service_account);
        }
    }
}

/// The CSIDriver flags that decide how its token travels (`unknown` when the object is not).
fn write_driver_flags(out: &mut String, driver: &DriverRow) {
    let flag = |value: Option<bool>| value.map_or("unknown".to_string(), |v| v.to_string());
    let _ = writeln!(
        out,
        "    requiresRepublish {}, token in the secrets field {}",
        flag(driver.requires_republish),
        flag(driver.token_in_secrets)
    );
}

/// Every container that mounts the credential, and where; nothing when none does.
fn write_mounts(out: &mut String, mounts: &[Mount]) {
    if !mounts.is_empty() {
        let mounts: Vec<String> = mounts.iter().map(|m| format!("{} at {}", m.container, m.path)).collect();
        let _ = writeln!(out, "    mounted in {}", mounts.join(", "));
    }
}

/// One line per variable and value an injection sets, naming every container that gets it.
fn write_injected_env(out: &mut String, injection: &InjectionRow) {
    let mut lines: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for env in &injection.env {
        match lines.iter_mut().find(|(name, value, _)| *name == env.name && *value == env.value) {
            Some((_, _, containers)) => containers.push(&env.container),
            None => lines.push((&env.name, &env.value, vec![&env.container])),
        }
    }
    for (name, value, containers) in lines {
        let _ = writeln!(out, "    env {name}={value} in {}", containers.join(", "));
    }
}

/// The verdict as a sentence; `denied` is how the policy's mode words a refusal.
fn describe_verdict(verdict: &RowVerdict, denied: &str) -> String {
    match verdict {
        RowVerdict::AlwaysAdmitted { reason } => format!("allowed: {reason}"),
        RowVerdict::Allowed { entry, namespaces, service_accounts, max_expiration_seconds } => format!(
            "allowed by spec.audiences[{entry}] (namespaces {namespaces:?}, serviceAccounts {service_accounts:?}, up to {max_expiration_seconds} s)"
        ),
        RowVerdict::LegacyTokenListed => "allowed: spec.legacyTokens lists the service account".to_string(),
        RowVerdict::Violation { field, message, .. } => format!("{denied} {field}: {message}"),
        RowVerdict::RefusedAtTokenRequest { field, message } => format!(
            "{denied} when the kubelet requests it (the pod itself is admitted; the volume will not mount): {field}: {message}"
        ),
        RowVerdict::SecretRefused { field, message } => {
            format!("{denied} when the Secret is created (not counted against the pod): {field}: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_refreshes_at_80_percent_of_the_requested_lifetime_or_after_a_day() {
        let extended = Lifetime { requested: 3607, effective: 31_536_000 };
        assert_eq!(refresh_after_seconds(extended), 2886);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(600)), 480);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(86_400)), 69_120);
        assert_eq!(refresh_after_seconds(Lifetime::as_requested(172_800)), MAX_REFRESH_SECONDS);
    }
}
