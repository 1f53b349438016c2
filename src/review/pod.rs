//! Pods and workload pod templates: token volumes, CSI drivers used inline, and injections.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::admission::RequestObject;
use super::automount::is_automount_volume;
use super::inject::{self, State};
use super::pod_view::{Pod, PodView, Workload};
use super::{decode_object, Findings, Violation, Webhook, WorkloadKind};
use crate::cluster::{Cluster, ServiceAccountInfo};
use crate::policy::{expiration_or_default, Policy};

/// Annotation the kubelet puts on mirror pods of static pods; those are never mutated.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

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
/// Missing injections are not violations here (the mutating webhook adds them to each pod),
/// but collisions are, since every pod of the workload would be denied.
pub async fn validate_template<C: Cluster>(
    object: &RawValue,
    kind: WorkloadKind,
    namespace: &str,
    policy: &Policy,
    cluster: &C,
) -> Findings {
    let workload: Workload = match decode_object(object, kind.group_kind().1) {
        Ok(workload) => workload,
        Err(findings) => return findings,
    };
    let mut findings = Findings::default();
    let Some(template) = workload.into_template(kind) else { return findings };
    let field = format!("{}.spec", kind.template_path().join("."));
    let Some(view) = PodView::new(&template, namespace, field) else { return findings };
    check_tokens(&view, policy, cluster, &mut findings).await;
    let service_account = service_account_for(&view, policy, cluster, &mut findings).await;
    for planned in inject::plan(&view, policy, service_account.as_ref(), &mut Vec::new()) {
        if let State::Collision(violation) = planned.state {
            findings.violations.push(violation);
        }
    }
    findings
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

/// Every projected token and every token an inline CSI volume's driver mints, against the
/// allow-list and lifetime bounds. The automount volume is always admitted.
async fn check_tokens<C: Cluster>(view: &PodView<'_>, policy: &Policy, cluster: &C, findings: &mut Findings) {
    let (namespace, service_account, field) = (view.namespace, view.service_account, &view.field);
    for (i, volume) in view.spec.volumes().iter().enumerate() {
        if is_automount_volume(volume) {
            continue;
        }
        for (j, token) in volume.token_sources() {
            let audience = policy.normalize(token.audience.as_deref());
            let seconds = expiration_or_default(token.expiration_seconds);
            if let Err(denial) = policy.check_token(audience, namespace, service_account, seconds) {
                let leaf = if denial.is_about_expiration() { "expirationSeconds" } else { "audience" };
                findings.violations.push(Violation::new(
                    format!("{field}.volumes[{i}].projected.sources[{j}].serviceAccountToken.{leaf}"),
                    denial.explain(audience, namespace, service_account, seconds),
                ));
            }
        }
        let Some(csi) = &volume.csi else { continue };
        let driver_field = format!("{field}.volumes[{i}].csi.driver");
        let driver = match cluster.csi_driver(&csi.driver).await {
            Ok(driver) => driver,
            Err(err) => {
                findings
                    .violations
                    .push(Violation::new(driver_field, format!("could not look up CSIDriver {:?}: {err}", csi.driver)));
                continue;
            }
        };
        for (audience, seconds) in driver.iter().flat_map(|d| d.token_requests.iter()) {
            let audience = policy.normalize(Some(audience));
            let seconds = expiration_or_default(*seconds);
            if let Err(denial) = policy.check_token(audience, namespace, service_account, seconds) {
                findings.violations.push(Violation::new(
                    driver_field.clone(),
                    format!(
                        "CSI driver {:?} mints a token for this pod: {}",
                        csi.driver,
                        denial.explain(audience, namespace, service_account, seconds)
                    ),
                ));
            }
        }
    }
}
