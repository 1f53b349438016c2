//! Pure admission decisions: an AdmissionReview in, a verdict and its response out.
//!
//! Nothing here does I/O of its own: the cluster is read through [`Cluster`], and logs and
//! metrics are recorded by the caller from the returned [`Summary`].

pub mod admission;
pub mod credentials;
mod csi_driver;
mod inject;
pub mod legacy_token;
pub mod lookup;
mod pod;
mod pod_lists;
pub mod pod_view;
pub mod rules;
mod text;
mod token_request;

use std::fmt;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::policy::{Mode, Policy};
use admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReviewIn, Operation, RequestObject, Status, ADMISSION_API_VERSION,
};
use lookup::Cluster;

use crate::k8s::kinds;
pub use crate::k8s::kinds::WorkloadKind;
pub use inject::SKIP_ANNOTATION;

/// Which endpoint a review arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    /// `/validate`: allow or deny.
    Validate,
    /// `/mutate`: add what injections require.
    Mutate,
}

impl Webhook {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
    }
}

/// What a request is about; a closed set, used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Pod,
    Workload(WorkloadKind),
    CsiDriver,
    TokenRequest,
    /// A Secret; only those of type `kubernetes.io/service-account-token` are governed.
    Secret,
    /// Anything tokengate does not govern.
    Other,
}

impl Subject {
    /// Classifies a request by its kind and subresource.
    pub fn of(group: &str, kind: &str, sub_resource: Option<&str>) -> Subject {
        let sub_resource = sub_resource.unwrap_or_default();
        match (group, kind, sub_resource) {
            ("", "Pod", "") => Subject::Pod,
            ("storage.k8s.io", "CSIDriver", "") => Subject::CsiDriver,
            ("authentication.k8s.io", "TokenRequest", "token") => Subject::TokenRequest,
            ("", "Secret", "") => Subject::Secret,
            (group, kind, "") => WorkloadKind::ALL
                .into_iter()
                .find(|w| w.group_kind() == (group, kind))
                .map_or(Subject::Other, Subject::Workload),
            _ => Subject::Other,
        }
    }

    /// The resource webhook rules name it by; `None` for what tokengate does not govern.
    pub fn resource(self) -> Option<kinds::Resource> {
        match self {
            Subject::Pod => Some(kinds::PODS),
            Subject::Workload(kind) => Some(kind.resource()),
            Subject::CsiDriver => Some(kinds::CSI_DRIVERS),
            Subject::TokenRequest => Some(kinds::SERVICE_ACCOUNT_TOKENS),
            Subject::Secret => Some(kinds::SECRETS),
            Subject::Other => None,
        }
    }

    /// Every subject tokengate governs, workloads in [`WorkloadKind::ALL`]'s order.
    pub fn governed() -> impl Iterator<Item = Subject> {
        [Subject::Pod, Subject::TokenRequest, Subject::CsiDriver, Subject::Secret]
            .into_iter()
            .chain(WorkloadKind::ALL.into_iter().map(Subject::Workload))
    }

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Pod => "Pod",
            Subject::Workload(w) => w.group_kind().1,
            Subject::CsiDriver => "CSIDriver",
            Subject::TokenRequest => "TokenRequest",
            Subject::Secret => "Secret",
            Subject::Other => "Other",
        }
    }
}

/// The outcome of a review; a closed set, used as a metric label and audit annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Checked and compliant.
    Allowed,
    /// Compliant after the returned patch.
    Patched,
    /// Violations in Enforce mode.
    Denied,
    /// Violations in Warn mode: allowed with warnings.
    Warned,
    /// Violations in Audit mode: allowed, recorded in the audit log.
    Audited,
    /// The requester or namespace is exempt.
    Exempt,
    /// Not something tokengate governs (other kinds, DELETE, Pod UPDATE, ...).
    Ignored,
    /// The review could not be decoded.
    Invalid,
}

impl Decision {
    /// The label used in metrics, logs and the `decision` audit annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Patched => "patched",
            Decision::Denied => "denied",
            Decision::Warned => "warned",
            Decision::Audited => "audited",
            Decision::Exempt => "exempt",
            Decision::Ignored => "ignored",
            Decision::Invalid => "invalid",
        }
    }
}

/// One broken rule: which (named in [`rules`]), where, and what is wrong (and what would be
/// allowed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Violation {
    #[serde(skip)]
    pub rule: &'static str,
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(rule: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { rule, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What a decision found before the policy mode is applied.
#[derive(Debug, Default)]
pub struct Findings {
    pub violations: Vec<Violation>,
    /// Violations found beyond those a decision was asked to keep: counted, not kept.
    pub unlisted_violations: usize,
    /// Things the requester should know that are not violations (sent as warnings).
    pub notes: Vec<String>,
    pub patch: json_patch::Patch,
    /// Set when the object could not be decoded: the request is refused whatever the mode.
    pub undecodable: Option<Violation>,
}

impl Findings {
    /// The findings on an object that could not be decoded.
    fn undecodable(violation: Violation) -> Self {
        Findings { undecodable: Some(violation), ..Default::default() }
    }

    /// Adds `violation`, or only counts it once `keep` are kept.
    fn add_violation(&mut self, violation: Violation, keep: usize) {
        if self.violations.len() < keep {
            self.violations.push(violation);
        } else {
            self.unlisted_violations += 1;
        }
    }
}

/// Decodes the request's object as the `kind` it claims to be. On failure the object is decoded
/// once more, slowly, only to name the field at fault.
// The findings are the answer itself, made once per review: a box would only add an allocation.
#[allow(clippy::result_large_err)]
fn decode_object<T: DeserializeOwned>(object: &RawValue, kind: &str) -> Result<T, Findings> {
    serde_json::from_str(object.get()).map_err(|_| {
        let mut deserializer = serde_json::Deserializer::from_str(object.get());
        let error = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
            Err(err) if err.path().iter().next().is_some() => format!("{}: {}", err.path(), err.inner()),
            Err(err) => err.into_inner().to_string(),
            Ok(_) => "it decodes only on a second attempt".to_string(),
        };
        Findings::undecodable(Violation::new(
            rules::READABLE_REQUEST,
            "object",
            format!("could not decode the {kind}: {error}"),
        ))
    })
}

/// The decision on one request.
#[derive(Debug)]
pub struct Verdict {
    pub subject: Subject,
    pub decision: Decision,
    pub violations: Vec<Violation>,
    pub notes: Vec<String>,
    pub patch: json_patch::Patch,
}

impl Verdict {
    fn without_checks(subject: Subject, decision: Decision) -> Self {
        Verdict { subject, decision, violations: Vec::new(), notes: Vec::new(), patch: json_patch::Patch(Vec::new()) }
    }

    /// Applies the policy mode to what a decision found.
    fn from_findings(subject: Subject, mode: Mode, findings: Findings) -> Self {
        if let Some(violation) = findings.undecodable {
            let mut verdict = Verdict::without_checks(subject, Decision::Invalid);
            verdict.violations.push(violation);
            return verdict;
        }
        let decision = match (findings.violations.is_empty(), mode) {
            (true, _) if findings.patch.0.is_empty() => Decision::Allowed,
            (true, _) => Decision::Patched,
            (false, Mode::Enforce) => Decision::Denied,
            (false, Mode::Warn) => Decision::Warned,
            (false, Mode::Audit) => Decision::Audited,
        };
        // A denied request is never patched.
        let patch = if decision == Decision::Denied { json_patch::Patch(Vec::new()) } else { findings.patch };
        Verdict { subject, decision, violations: findings.violations, notes: findings.notes, patch }
    }

    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        !matches!(self.decision, Decision::Denied | Decision::Invalid)
    }

    /// The AdmissionReview response for request `uid`.
    pub fn response(&self, uid: &str) -> AdmissionResponse {
        self.response_counting(uid, 0)
    }

    /// The AdmissionReview response for request `uid`, when `unlisted` more violations than
    /// these were found.
    fn response_counting(&self, uid: &str, unlisted: usize) -> AdmissionResponse {
        let mut response = AdmissionResponse { uid: uid.to_string(), allowed: self.allowed(), ..Default::default() };
        response.audit_annotations.insert("decision".to_string(), self.decision.as_str().to_string());
        if !self.violations.is_empty() {
            let all = listed_violations(&self.violations, unlisted);
            response.audit_annotations.insert("violations".to_string(), all.clone());
            match self.decision {
                Decision::Denied | Decision::Invalid => {
                    let code = if self.decision == Decision::Invalid { 400 } else { 403 };
                    response.status = Some(Status::failure(code, format!("tokengate: {all}")));
                }
                Decision::Warned => {
                    // Only what fits in the 4 KiB the API server passes on is rendered.
                    let fitting = self.violations.iter().take(MAX_WARNED_VIOLATIONS);
                    response.warnings.extend(fitting.map(ToString::to_string));
                }
                _ => {}
            }
        }
        response.warnings.extend(self.notes.iter().cloned());
        response.warnings = fit_warnings(std::mem::take(&mut response.warnings));
        if !self.patch.0.is_empty() {
            let json = serde_json::to_vec(&self.patch).expect("a JSON patch always serialises");
            response.patch_type = Some("JSONPatch".to_string());
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
        }
        response
    }
}

/// Most violations a denial message and the `violations` audit annotation list; the rest are
/// counted. A hostile 7 MiB pod with thousands of forbidden tokens would otherwise be answered
/// with a message many times its size.
pub const MAX_LISTED_VIOLATIONS: usize = 50;

/// The violations as a denial lists them: the first [`MAX_LISTED_VIOLATIONS`], then a count of
/// the others, `unlisted` of which were counted but not kept.
fn listed_violations(violations: &[Violation], unlisted: usize) -> String {
    let mut listed =
        violations.iter().take(MAX_LISTED_VIOLATIONS).map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let more = violations.len().saturating_sub(MAX_LISTED_VIOLATIONS) + unlisted;
    if more > 0 {
        listed.push_str(&format!("; and {more} more violations"));
    }
    listed
}

/// Most characters of one warning: the API server's guidance is 120 where possible, and
/// warnings over 256 may be truncated (`k8s.io/apiserver/pkg/warning`), so each violation,
/// which reads field first and verdict next, is kept within 256.
pub const MAX_WARNING_CHARS: usize = 256;
/// Most bytes of all warnings together the API server passes on.
const MAX_WARNINGS_BYTES: usize = 4096;
/// Most violations rendered as warnings (each takes at least 16 of the bytes).
const MAX_WARNED_VIOLATIONS: usize = MAX_WARNINGS_BYTES / 16;
/// Most violations a response can show, as warnings or listed in a denial: what a review keeps.
const MAX_SHOWN_VIOLATIONS: usize =
    if MAX_WARNED_VIOLATIONS > MAX_LISTED_VIOLATIONS { MAX_WARNED_VIOLATIONS } else { MAX_LISTED_VIOLATIONS };

/// Shortens each warning to 256 characters and keeps the list under 4 KiB, as the API server
/// would otherwise truncate or drop them.
fn fit_warnings(warnings: Vec<String>) -> Vec<String> {
    let mut total = 0;
    let mut fitted = Vec::with_capacity(warnings.len());
    for warning in warnings {
        let warning = format!("tokengate: {warning}");
        let short = if warning.chars().count() > MAX_WARNING_CHARS {
            let mut cut: String = warning.chars().take(MAX_WARNING_CHARS - 1).collect();
            cut.push('…');
            cut
        } else {
            warning
        };
        total += short.len();
        if total > MAX_WARNINGS_BYTES {
            break;
        }
        fitted.push(short);
    }
    fitted
}

/// The one table of what each endpoint judges: the operations of each subject it checks
/// (Pod UPDATE, DELETE and everything else are let through unchanged). `decide` governs exactly
/// these requests, and the webhook configurations' rules are generated from this table.
pub fn governed_operations(webhook: Webhook, subject: Subject) -> &'static [Operation] {
    match (webhook, subject) {
        (_, Subject::Pod) => &[Operation::Create],
        (Webhook::Validate, Subject::Workload(_) | Subject::CsiDriver | Subject::Secret) => {
            &[Operation::Create, Operation::Update]
        }
        (Webhook::Validate, Subject::TokenRequest) => &[Operation::Create],
        _ => &[],
    }
}

/// Decides one decoded request, with every violation it finds.
pub async fn decide<C: Cluster>(
    request: &AdmissionRequest<'_>,
    webhook: Webhook,
    policy: &Policy,
    cluster: &C,
) -> Verdict {
    decide_keeping(request, webhook, policy, cluster, usize::MAX).await.0
}

/// Decides one decoded request, keeping at most `keep` of the violations of a Pod or workload
/// (a body can carry a violation every 52 bytes) and counting the others: the verdict, and how
/// many violations it does not list.
async fn decide_keeping<C: Cluster>(
    request: &AdmissionRequest<'_>,
    webhook: Webhook,
    policy: &Policy,
    cluster: &C,
    keep: usize,
) -> (Verdict, usize) {
    let subject = Subject::of(&request.kind.group, &request.kind.kind, request.sub_resource.as_deref());
    if !governed_operations(webhook, subject).contains(&request.operation) {
        return (Verdict::without_checks(subject, Decision::Ignored), 0);
    }
    let user = &request.user_info;
    let namespace = request.namespace.as_deref();
    let pod_exempt = matches!(subject, Subject::Pod | Subject::Workload(_)) && policy.exempts_pods_in(namespace);
    if pod_exempt || policy.is_exempt(namespace, &user.username, &user.groups) {
        return (Verdict::without_checks(subject, Decision::Exempt), 0);
    }
    let Some(object) = &request.object else {
        let findings = Findings::undecodable(Violation::new(
            rules::READABLE_REQUEST,
            "request.object",
            "missing: there is nothing to check",
        ));
        return (Verdict::from_findings(subject, policy.mode(), findings), 0);
    };
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let old_object = request.old_object.filter(|_| request.operation == Operation::Update);
    let findings = match (subject, webhook, object) {
        (Subject::Pod, _, _) => pod::review_pod(object, webhook, namespace, policy, cluster, keep).await,
        (Subject::Other, _, _) => Findings::default(),
        // Only a request whose kind is Pod, which cannot change once read, carries a decoded Pod.
        (_, _, RequestObject::Pod(_)) => Findings::undecodable(Violation::new(
            rules::READABLE_REQUEST,
            "request.kind",
            "a Pod object in a request that is not about a Pod",
        )),
        (Subject::Workload(kind), _, RequestObject::Raw(raw)) => {
            pod::validate_workload(raw, old_object, kind, namespace, policy, cluster, keep).await
        }
        (Subject::CsiDriver, _, RequestObject::Raw(raw)) => csi_driver::validate(raw, policy),
        (Subject::TokenRequest, _, RequestObject::Raw(raw)) => {
            token_request::validate(raw, request, policy, cluster).await
        }
        (Subject::Secret, _, RequestObject::Raw(raw)) => legacy_token::validate(raw, old_object, namespace, policy),
    };
    let unlisted = if findings.undecodable.is_some() { 0 } else { findings.unlisted_violations };
    (Verdict::from_findings(subject, policy.mode(), findings), unlisted)
}

/// What a caller logs and counts about one review; never object bodies.
#[derive(Debug, Clone)]
pub struct Summary {
    pub uid: String,
    pub subject: Subject,
    pub operation: Operation,
    pub namespace: String,
    pub name: String,
    pub decision: Decision,
    pub violations: usize,
    pub dry_run: bool,
}

/// The answer to an HTTP request carrying an AdmissionReview.
#[derive(Debug)]
pub enum Reply {
    /// An AdmissionReview response (HTTP 200), with what to log.
    Review { body: Vec<u8>, summary: Summary },
    /// No uid could be read: answer HTTP 400 with this plain message.
    BadRequest(String),
}

/// Decodes an AdmissionReview body, decides it and encodes the response. The server's
/// `/validate` and `/mutate` and `tokengate review` all answer through here.
pub async fn review<C: Cluster>(body: &[u8], webhook: Webhook, policy: &Policy, cluster: &C) -> Reply {
    // Of the requester's groups, decisions read only these.
    let mut groups_read = policy.exempt_groups();
    groups_read.push(crate::k8s::tokens::NODES_GROUP);
    let envelope = match AdmissionReviewIn::from_slice_reading_groups(body, &groups_read) {
        Ok(envelope) => envelope,
        Err(err) => return undecodable(body, format!("the body is not an AdmissionReview: {err}")),
    };
    let Some(request) = envelope.request else {
        return Reply::BadRequest("the AdmissionReview has no request".to_string());
    };
    if request.uid.is_empty() {
        return Reply::BadRequest("the AdmissionReview request has no uid".to_string());
    }
    if envelope.api_version != ADMISSION_API_VERSION || envelope.kind != "AdmissionReview" {
        let message = format!(
            "expected an AdmissionReview of {ADMISSION_API_VERSION}, got kind {:?} of {:?}: list only {ADMISSION_API_VERSION} in admissionReviewVersions",
            envelope.kind, envelope.api_version
        );
        return invalid(request.uid, message);
    }
    // The response shows at most MAX_SHOWN_VIOLATIONS: the others are only counted.
    let (verdict, unlisted) = decide_keeping(&request, webhook, policy, cluster, MAX_SHOWN_VIOLATIONS).await;
    let body = verdict.response_counting(&request.uid, unlisted).into_review_json();
    let summary = Summary {
        uid: request.uid,
        subject: verdict.subject,
        operation: request.operation,
        namespace: request.namespace.unwrap_or_default(),
        name: request.name.unwrap_or_default(),
        decision: verdict.decision,
        violations: verdict.violations.len() + unlisted,
        dry_run: request.dry_run.unwrap_or(false),
    };
    Reply::Review { body, summary }
}

fn undecodable(body: &[u8], message: String) -> Reply {
    match admission::salvage_uid(body) {
        Some(uid) => invalid(uid, message),
        None => Reply::BadRequest(message),
    }
}

/// A response refusing a review that could not be decided.
fn invalid(uid: String, message: String) -> Reply {
    let mut verdict = Verdict::without_checks(Subject::Other, Decision::Invalid);
    verdict.violations.push(Violation::new(rules::READABLE_REQUEST, "request", message));
    let body = verdict.response(&uid).into_review_json();
    let summary = Summary {
        uid,
        subject: Subject::Other,
        operation: Operation::Other,
        namespace: String::new(),
        name: String::new(),
        decision: Decision::Invalid,
        violations: 1,
        dry_run: false,
    };
    Reply::Review { body, summary }
}

#[cfg(test)]
mod tests;
