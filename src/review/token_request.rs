//! TokenRequest CREATE (`serviceaccounts/token`): audiences, lifetimes, and what nodes may ask for.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::admission::AdmissionRequest;
use super::automount::AUTOMOUNT_EXPIRATION_SECONDS;
use super::{decode_object, Findings, Violation};
use crate::cluster::{Cluster, PodInfo};
use crate::policy::{describe_audience, expiration_or_default, Policy};

/// The fields of a TokenRequest that decisions read; everything else (new bound kinds,
/// attestations) is ignored, so newer API servers still decode.
#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    #[serde(default)]
    spec: TokenRequestSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequestSpec {
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    expiration_seconds: Option<i64>,
    #[serde(default)]
    bound_object_ref: Option<BoundObjectRef>,
}

#[derive(Debug, Default, Deserialize)]
struct BoundObjectRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

/// Checks a TokenRequest for the service account `request.namespace/request.name`.
pub async fn validate<C: Cluster>(
    object: &RawValue,
    request: &AdmissionRequest<'_>,
    policy: &Policy,
    cluster: &C,
) -> Findings {
    let token: TokenRequest = match decode_object(object, "TokenRequest") {
        Ok(token) => token,
        Err(findings) => return findings,
    };
    let mut findings = Findings::default();
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let service_account = request.name.as_deref().unwrap_or_default();
    let seconds = expiration_or_default(token.spec.expiration_seconds);
    let requested = token.spec.audiences.as_deref().unwrap_or_default();
    // Absent or empty audiences mean the API server audience; keep the field path of each.
    let audiences: Vec<(String, &str)> = if requested.is_empty() {
        vec![("spec.audiences".to_string(), "")]
    } else {
        requested.iter().enumerate().map(|(i, a)| (format!("spec.audiences[{i}]"), policy.normalize(Some(a)))).collect()
    };
    let node = request.user_info.node_name();
    let automount = node.is_some()
        && seconds == AUTOMOUNT_EXPIRATION_SECONDS
        && audiences.iter().all(|(_, audience)| audience.is_empty());

    if !automount {
        for (field, audience) in &audiences {
            if let Err(denial) = policy.check_token(audience, namespace, service_account, seconds) {
                let field = if denial.is_about_expiration() { "spec.expirationSeconds" } else { field.as_str() };
                findings
                    .violations
                    .push(Violation::new(field, denial.explain(audience, namespace, service_account, seconds)));
            }
        }
    }
    if let Some(node) = node.filter(|_| policy.node_restriction().enabled) {
        let check = NodeCheck { node, namespace, service_account, policy, cluster };
        check.run(&token.spec, &audiences, &mut findings.violations).await;
    }
    findings
}

/// The node-audience restriction: a kubelet may only mint tokens its bound pod references.
struct NodeCheck<'a, C> {
    node: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    policy: &'a Policy,
    cluster: &'a C,
}

impl<C: Cluster> NodeCheck<'_, C> {
    async fn run(&self, spec: &TokenRequestSpec, audiences: &[(String, &str)], violations: &mut Vec<Violation>) {
        let node = self.node;
        if audiences.len() > 1 {
            violations.push(Violation::new(
                "spec.audiences",
                format!("node {node} may request one audience per token, not {}", audiences.len()),
            ));
        }
        let bound = spec.bound_object_ref.as_ref();
        let kind = bound.and_then(|b| b.kind.as_deref()).unwrap_or_default();
        let Some(pod_name) = bound.filter(|_| kind == "Pod").and_then(|b| b.name.as_deref()) else {
            let bound_to = if kind.is_empty() { "nothing".to_string() } else { format!("a {kind}") };
            violations.push(Violation::new(
                "spec.boundObjectRef",
                format!("node {node} may only request tokens bound to a pod it runs, not to {bound_to}"),
            ));
            return;
        };
        let pod_ref = format!("{}/{pod_name}", self.namespace);
        let pod = match self.cluster.pod(self.namespace, pod_name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                violations.push(Violation::new(
                    "spec.boundObjectRef.name",
                    format!("pod {pod_ref} does not exist; node {node} may only request tokens for pods bound to it"),
                ));
                return;
            }
            Err(err) => {
                violations.push(Violation::new(
                    "spec.boundObjectRef.name",
                    format!("could not look up pod {pod_ref}: {err}"),
                ));
                return;
            }
        };
        let bound_uid = bound.and_then(|b| b.uid.as_deref()).unwrap_or_default();
        if !bound_uid.is_empty() && bound_uid != pod.uid {
            violations.push(Violation::new(
                "spec.boundObjectRef.uid",
                format!("pod {pod_ref} has uid {}, not {bound_uid}", pod.uid),
            ));
        }
        if pod.node_name.as_deref() != Some(node) {
            let runs_on = pod
                .node_name
                .as_deref()
                .map_or("is not scheduled to a node".to_string(), |n| format!("runs on node {n}"));
            violations.push(Violation::new(
                "spec.boundObjectRef.name",
                format!("pod {pod_ref} {runs_on}, not on node {node}"),
            ));
        }
        if pod.service_account != self.service_account {
            violations.push(Violation::new(
                "spec.boundObjectRef.name",
                format!("pod {pod_ref} runs as service account {}, not {}", pod.service_account, self.service_account),
            ));
        }
        let mut reached: Option<Result<BTreeSet<String>, String>> = None;
        for (field, audience) in audiences {
            if self.references_directly(&pod, audience) {
                continue;
            }
            let via_csi = reached.get_or_insert(self.csi_audiences(&pod).await);
            match via_csi {
                Ok(set) if set.contains(*audience) => {}
                Ok(_) => violations.push(Violation::new(
                    field.as_str(),
                    format!(
                        "audience {} is not referenced by pod {pod_ref} (no projected token volume or CSI driver of the pod asks for it), so node {node} may not request it",
                        describe_audience(audience)
                    ),
                )),
                Err(err) => violations.push(Violation::new(
                    field.as_str(),
                    format!("could not tell whether pod {pod_ref} references audience {}: {err}", describe_audience(audience)),
                )),
            }
        }
    }

    /// Referenced by a projected token volume, or granted by `nodeRestriction.extraAudiences`.
    fn references_directly(&self, pod: &PodInfo, audience: &str) -> bool {
        pod.token_audiences.iter().any(|a| self.policy.normalize(Some(a)) == audience)
            || self.policy.node_restriction().is_extra_audience(audience, self.namespace)
    }

    /// The audiences of every CSI driver the pod reaches: inline, through a PVC's PV, or
    /// through the PVC of a generic ephemeral volume.
    async fn csi_audiences(&self, pod: &PodInfo) -> Result<BTreeSet<String>, String> {
        let mut drivers: BTreeSet<String> = pod.csi_drivers.iter().cloned().collect();
        for claim_name in &pod.claim_names {
            let claim = self.cluster.persistent_volume_claim(self.namespace, claim_name).await;
            let claim_ref = format!("PVC {}/{claim_name}", self.namespace);
            let Some(volume_name) = claim.map_err(|e| format!("{claim_ref}: {e}"))?.and_then(|c| c.volume_name.clone())
            else {
                continue;
            };
            let volume = self.cluster.persistent_volume(&volume_name).await;
            if let Some(driver) =
                volume.map_err(|e| format!("PV {volume_name}: {e}"))?.and_then(|v| v.csi_driver.clone())
            {
                drivers.insert(driver);
            }
        }
        let mut audiences = BTreeSet::new();
        for driver in drivers {
            let info = self.cluster.csi_driver(&driver).await.map_err(|e| format!("CSIDriver {driver}: {e}"))?;
            for (audience, _) in info.iter().flat_map(|d| d.token_requests.iter()) {
                audiences.insert(self.policy.normalize(Some(audience)).to_string());
            }
        }
        Ok(audiences)
    }
}
