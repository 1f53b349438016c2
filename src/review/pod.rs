//! Pods and workload pod templates: token volumes, CSI drivers used inline, and injections.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use serde_json::value::RawValue;

use super::admission::RequestObject;
use super::credentials::{self, Credential, Found, Outcome};
use super::inject::{self, State};
use super::lookup::{Cluster, ServiceAccountInfo};
use super::pod_view::{Pod, PodView, Workload};
use super::{decode_object, rules, Findings, Violation, Webhook, WorkloadKind};
use crate::k8s::names::MIRROR_ANNOTATION;
use crate::policy::Policy;

/// Pod CREATE on either webhook, keeping at most `keep` violations (the others are counted).
pub async fn review_pod<C: Cluster>(
    object: &RequestObject<'_>,
    webhook: Webhook,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
    keep: usize,
) -> Findings {
    let pod = match decode_pod(object) {
        Ok(pod) => pod,
        Err(findings) => return findings,
    };
    let labels = pod.metadata.labels_read_by(policy);
    let Some(view) = PodView::with_labels(&pod, namespace, "spec".to_string(), labels.as_ref()) else {
        return Findings::default();
    };
    match webhook {
        Webhook::Validate => validate_pod(&view, policy, cluster, keep).await,
        Webhook::Mutate => mutate_pod(&view, policy, cluster, keep).await,
    }
}

/// Pod CREATE on `/validate`: every token the pod would get, and every required injection.
async fn validate_pod<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C, keep: usize) -> Findings {
    let mut findings = Findings::default();
    check_tokens(view, policy, cluster, &mut findings, keep).await;
    if !is_mirror(view) {
        let service_account = service_account_for(view, policy, cluster, &mut findings, keep).await;
        for planned in inject::plan(view, policy, service_account.as_ref(), &mut Vec::new()) {
            match planned.state {
                State::Collision(violation) => findings.add_violation(violation, keep),
                State::Missing { field, .. } if planned.injection.required => findings.add_violation(Violation::new(
                    rules::POD_INJECTIONS,
                    field,
                    format!(
                        "injection {:?} is required for this pod but missing (volume {:?}, its mounts or env); the tokengate mutating webhook adds it: check that it is installed and reached this pod",
                        planned.injection.name, planned.injection.volume.name
                    ),
                ), keep),
                _ => {}
            }
        }
    }
    findings
}

/// Pod CREATE on `/mutate`: a patch adding what matching injections require.
async fn mutate_pod<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C, keep: usize) -> Findings {
    let mut findings = Findings::default();
    if is_mirror(view) {
        return findings;
    }
    let service_account = service_account_for(view, policy, cluster, &mut findings, keep).await;
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
            State::Collision(violation) => findings.add_violation(violation, keep),
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
/// however its violation is worded. An object being deleted is not judged. At most `keep`
/// violations are kept, the others counted.
pub async fn validate_workload<C: Cluster>(
    object: &RawValue,
    old_object: Option<&RawValue>,
    kind: WorkloadKind,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
    keep: usize,
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
    // What the old template is refused for, as hashes (8 bytes each, however many): a violation
    // whose hash is among them is one it had (two different ones share a hash once in 2^64).
    let hasher = RandomState::new();
    let mut before = HashSet::new();
    if let Some(old_template) = &old_template {
        validate_template(old_template, kind, namespace, policy, cluster, |judged| {
            before.insert(hasher.hash_one(&judged));
        })
        .await;
    }
    let mut findings = Findings::default();
    validate_template(&template, kind, namespace, policy, cluster, |judged| {
        if !before.contains(&hasher.hash_one(&judged)) {
            findings.add_violation(judged.0, keep);
        }
    })
    .await;
    findings
}

/// A template's violation and what it is about: the token it judges (where it comes from, its
/// audience and lifetime), or nothing more than its own words for any other violation.
type Judged = (Violation, Option<String>);

/// The pod checks on one template, each violation handed to `sink`. Missing injections are not
/// violations here (the mutating webhook adds them to each pod), but collisions are, since
/// every pod of the workload would be denied.
async fn validate_template<C: Cluster>(
    template: &Pod,
    kind: WorkloadKind,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
    mut sink: impl FnMut(Judged),
) {
    let field = format!("{}.spec", kind.template_path().join("."));
    let labels = template.metadata.labels_read_by(policy);
    let Some(view) = PodView::with_labels(template, namespace, field, labels.as_ref()) else { return };
    credentials::each_pod_credential(&view, policy, cluster, |found| match found {
        Found::Token(credential @ Credential { outcome: Outcome::Denied(_), .. }) => {
            let about = format!("{:?} {:?} {:?}", credential.origin, credential.written_audience, credential.lifetime);
            if let Outcome::Denied(violation) = credential.outcome {
                sink((violation, Some(about)));
            }
        }
        Found::LookupFailed { violation, .. } => sink((violation, None)),
        Found::Token(_) => {}
    })
    .await;
    let mut findings = Findings::default();
    let service_account = service_account_for(&view, policy, cluster, &mut findings, usize::MAX).await;
    for planned in inject::plan(&view, policy, service_account.as_ref(), &mut Vec::new()) {
        if let State::Collision(violation) = planned.state {
            findings.violations.push(violation);
        }
    }
    findings.violations.into_iter().for_each(|violation| sink((violation, None)));
}

/// The Pod of the request: decoded already, or now.
#[allow(clippy::result_large_err)] // as `decode_object`: the findings are the answer
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
    keep: usize,
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
            findings.add_violation(
                Violation::new(
                    rules::POD_INJECTIONS,
                    format!("{}.serviceAccountName", view.field),
                    format!("could not look up service account {}/{}: {err}", view.namespace, view.service_account),
                ),
                keep,
            );
            None
        }
    }
}

/// Every projected token and every token an inline CSI volume's driver mints (in-tree types
/// that CSI migration serves count as their driver), against the allow-list and the lifetime
/// bounds, judged by the lifetime the API server will issue. The automount volume is always
/// admitted. The list and each verdict come from [`credentials::pod_credentials`]; at most
/// `keep` violations are kept, the others counted.
async fn check_tokens<C: Cluster>(
    view: &PodView<'_>,
    policy: &Policy,
    cluster: &C,
    findings: &mut Findings,
    keep: usize,
) {
    credentials::each_pod_credential(view, policy, cluster, |found| match found {
        Found::Token(Credential { outcome: Outcome::Denied(violation), .. })
        | Found::LookupFailed { violation, .. } => findings.add_violation(violation, keep),
        Found::Token(_) => {}
    })
    .await;
}
