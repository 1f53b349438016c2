//! Pods and workload pod templates: token volumes, CSI drivers used inline, and injections.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::admission::RequestObject;
use super::credentials::{self, Credential, Found, Outcome};
use super::inject::{self, State};
use super::lookup::{Cluster, ServiceAccountInfo};
use super::pod_view::{Pod, PodView, Workload};
use super::{decode_object, Findings, Violation, Webhook, WorkloadKind};
use crate::k8s::names::MIRROR_ANNOTATION;
use crate::policy::Policy;

/// Pod CREATE on either webhook.
pub async fn review_pod<C: Cluster>(
    object: &RequestObject<'_>,
    webhook: Webhook,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
) -> Findings {
    let pod = match decode_pod(object) {
        Ok(pod) => pod,
        Err(findings) => return findings,
    };
    let Some(view) = PodView::new(&pod, namespace, "spec".to_string()) else { return Findings::default() };
    match webhook {
        Webhook::Validate => validate_pod(&view, policy, cluster).await,
        Webhook::Mutate => mutate_pod(&view, policy, cluster).await,
    }
}

/// Pod CREATE on `/validate`: every token the pod would get, and every required injection.
async fn validate_pod<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C) -> Findings {
    let mut findings = Findings::default();
    check_tokens(view, policy, cluster, &mut findings).await;
    if !is_mirror(view) {
        let service_account = service_account_for(view, policy, cluster, &mut findings).await;
        for planned in inject::plan(view, policy, service_account.as_ref(), &mut Vec::new()) {
            match planned.state {
                State::Collision(violation) => findings.violations.push(violation),
                State::Missing { field, .. } if planned.injection.required => findings.violations.push(Violation::new(
                    field,
                    format!(
                        "injection {:?} is required for this pod but missing (volume {:?}, its mounts or env); the tokengate mutating webhook adds it: check that it is installed and reached this pod",
                        planned.injection.name, planned.injection.volume.name
                    ),
                )),
                _ => {}
            }
        }
    }
    findings
}

/// Pod CREATE on `/mutate`: a patch adding what matching injections require.
async fn mutate_pod<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C) -> Findings {
    let mut findings = Findings::default();
    if is_mirror(view) {
        return findings;
    }
    let service_account = service_account_for(view, policy, cluster, &mut findings).await;
    let skipped = inject::skipped_names(view);
    let mut additions = Vec::new();
    for planned in inject::plan(view, policy, service_account.as_ref(), &mut findings.notes) {
        let injection = planned.injection;
        if skipped.contains(&injection.name.as_str()) {
            findings.notes.push(format!(
                "{}: injection {:?} is required and cannot be skipped",
                inject::SKIP_ANNOTATION,
                injection.name
            ));
        }
        match planned.state {
            State::Present => {}
            State::Missing { additions: added, .. } => additions.push(added),
            State::Collision(violation) => findings.violations.push(violation),
        }
    }
    findings.patch = inject::render(view.spec, &additions);
    findings
}

/// Workload CREATE/UPDATE: the pod checks on the template, so problems surface at apply time.
/// On UPDATE only a changed template is judged, and only for violations the old template did
/// not already have about the same thing: controllers scale and garbage-collect workloads by
/// UPDATE without touching the template, and refusing those would stall rollouts and
/// deletions. A token that changed in any way (source, audience, lifetime) is judged as new,
/// however its violation is worded. An object being deleted is not judged.
pub async fn validate_workload<C: Cluster>(
    object: &RawValue,
    old_object: Option<&RawValue>,
    kind: WorkloadKind,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
) -> Findings {
    let workload: Workload = match decode_object(object, kind.group_kind().1) {
        Ok(workload) => workload,
        Err(findings) => return findings,
    };
    if workload.is_being_deleted() {
        return Findings::default();
    }
    let Some(template) = workload.into_template(kind) else { return Findings::default() };
    let old_template = old_object
        .and_then(|old| decode_object::<Workload>(old, kind.group_kind().1).ok())
        .and_then(|old| old.into_template(kind));
    if old_template.as_ref() == Some(&template) {
        return Findings::default();
    }
    let mut judged = validate_template(&template, kind, namespace, policy, cluster).await;
    if let Some(old_template) = &old_template {
        let before = validate_template(old_template, kind, namespace, policy, cluster).await;
        judged.retain(|violation| !before.contains(violation));
    }
    Findings { violations: judged.into_iter().map(|(violation, _)| violation).collect(), ..Findings::default() }
}

/// A template's violation and what it is about: the token it judges (where it comes from, its
/// audience and lifetime), or nothing more than its own words for any other violation.
type Judged = (Violation, Option<String>);

/// The pod checks on one template. Missing injections are not violations here (the mutating
/// webhook adds them to each pod), but collisions are, since every pod of the workload would be
/// denied.
async fn validate_template<C: Cluster>(
    template: &Pod,
    kind: WorkloadKind,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
) -> Vec<Judged> {
    let field = format!("{}.spec", kind.template_path().join("."));
    let Some(view) = PodView::new(template, namespace, field) else { return Vec::new() };
    let mut judged: Vec<Judged> = Vec::new();
    for found in credentials::pod_credentials(&view, policy, cluster).await {
        match found {
            Found::Token(credential @ Credential { outcome: Outcome::Denied(_), .. }) => {
                let about =
                    format!("{:?} {:?} {:?}", credential.origin, credential.written_audience, credential.lifetime);
                if let Outcome::Denied(violation) = credential.outcome {
                    judged.push((violation, Some(about)));
                }
            }
            Found::LookupFailed { violation, .. } => judged.push((violation, None)),
            Found::Token(_) => {}
        }
    }
    let mut findings = Findings::default();
    let service_account = service_account_for(&view, policy, cluster, &mut findings).await;
    for planned in inject::plan(&view, policy, service_account.as_ref(), &mut Vec::new()) {
        if let State::Collision(violation) = planned.state {
            findings.violations.push(violation);
        }
    }
    judged.extend(findings.violations.into_iter().map(|violation| (violation, None)));
    judged
}

/// The Pod of the request: decoded already, or now.
fn decode_pod<'a>(object: &'a RequestObject<'_>) -> Result<Cow<'a, Pod>, Findings> {
    match object {
        RequestObject::Pod(pod) => Ok(Cow::Borrowed(pod)),
        RequestObject::Raw(raw) => decode_object(raw, "Pod").map(Cow::Owned),
    }
}

fn is_mirror(view: &PodView<'_>) -> bool {
    view.annotations.is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// The pod's service account, looked up only when an injection that could match needs it.
async fn service_account_for<C: Cluster>(
    view: &PodView<'_>,
    policy: &Policy,
    cluster: &C,
    findings: &mut Findings,
) -> Option<ServiceAccountInfo> {
    let needed = policy.injections().iter().any(|injection| {
        inject::needs_service_account(injection)
            && injection.namespaces.is_match(view.namespace)
            && injection.pod_selector.matches(view.labels)
    });
    if !needed {
        return None;
    }
    match cluster.service_account(view.namespace, view.service_account).await {
        Ok(found) => found.map(|sa| (*sa).clone()),
        Err(err) => {
            findings.violations.push(Violation::new(
                format!("{}.serviceAccountName", view.field),
                format!("could not look up service account {}/{}: {err}", view.namespace, view.service_account),
            ));
            None
        }
    }
}

/// Every projected token and every token an inline CSI volume's driver mints (in-tree types
/// that CSI migration serves count as their driver), against the allow-list and the lifetime
/// bounds, judged by the lifetime the API server will issue. The automount volume is always
/// admitted. The list and each verdict come from [`credentials::pod_credentials`].
async fn check_tokens<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C, findings: &mut Findings) {
    for found in credentials::pod_credentials(view, policy, cluster).await {
        match found {
            Found::Token(Credential { outcome: Outcome::Denied(violation), .. })
            | Found::LookupFailed { violation, .. } => findings.violations.push(violation),
            Found::Token(_) => {}
        }
    }
}
