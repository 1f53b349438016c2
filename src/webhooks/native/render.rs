//! The native policies as one YAML stream for `kubectl apply -f -` (the ValidatingAdmissionPolicies,
//! then the MutatingAdmissionPolicy, each followed by its binding), behind a comment header saying
//! which rule and which injection is decided where, and why.

use super::split::{Placement, Side};
use super::{cost, Native};
use crate::review::Subject;
use crate::webhooks::RenderError;

/// The policies and bindings, each policy followed by its binding, after the header.
pub fn render_yaml(native: &Native) -> Result<String, RenderError> {
    let mut out = String::new();
    for line in header(native) {
        out.push_str(if line.is_empty() { "#" } else { "# " });
        out.push_str(&line);
        out.push('\n');
    }
    let mut documents = Vec::new();
    for policy in &native.policies {
        documents.push(serde_yaml_ng::to_string(&policy.policy)?);
        documents.push(serde_yaml_ng::to_string(&policy.binding)?);
    }
    for mutating in &native.mutating {
        documents.push(serde_yaml_ng::to_string(&mutating.policy)?);
        documents.push(serde_yaml_ng::to_string(&mutating.binding)?);
    }
    out.push_str(&documents.join("---\n"));
    Ok(out)
}

/// The subject as the header names it.
fn label(subject: Subject) -> &'static str {
    match subject {
        Subject::Workload(_) => "workloads",
        other => other.as_str(),
    }
}

/// The comment block: what the objects are, every rule with where it is decided, and the cost
/// bound of each policy.
pub fn header(native: &Native) -> Vec<String> {
    let mut lines: Vec<String> = [
        "tokengate's native policies, computed from the policy by `tokengate webhooks --native`: do not edit.",
        "ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1, Kubernetes 1.30+) that the API server",
        "evaluates in-process, for the rules that need no lookup; the webhook keeps deciding the others.",
        "A MutatingAdmissionPolicy (admissionregistration.k8s.io/v1, Kubernetes 1.36+) adds the injections",
        "that need no lookup, with JSON patches equal to the webhook's; it leaves to the webhook a pod that",
        "another injection may match or on which an injection collides.",
        "They skip what the webhooks skip (break-glass group, exemptions, exemptions.podNamespaces for pods).",
        "",
        "Where each rule is decided:",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lines.extend(native.split.iter().map(placement_line));
    if !native.injections.is_empty() {
        lines.push(String::new());
        lines.push("Where each injection is added:".to_string());
        let native_side = native.mutating.first().map(|m| m.policy.metadata.name.as_str());
        let not_built =
            native.split.iter().find(|p| p.rule == super::split::rules::POD_NATIVE_INJECTIONS).map(|p| p.why.as_str());
        for injection in &native.injections {
            lines.push(match (&injection.webhook_because, native_side) {
                (None, Some(policy)) => format!("- {}: native ({policy})", injection.name),
                (None, None) => format!("- {}: webhook: {}", injection.name, not_built.unwrap_or_default()),
                (Some(why), _) => format!("- {}: webhook: {why}", injection.name),
            });
        }
    }
    lines.push(String::new());
    lines.push(format!(
        "CEL cost bound (the API server's limits: {} per expression, {} per policy and request):",
        cost::PER_CALL_LIMIT,
        cost::RUNTIME_CEL_COST_BUDGET
    ));
    for policy in &native.policies {
        let estimate = cost::estimate(&policy.policy.spec);
        lines.push(format!(
            "- {}: at most {} per request plus {} per token source, audience or tokenRequests entry ({} fit)",
            policy.policy.metadata.name,
            estimate.fixed,
            estimate.per_item,
            estimate.items_within_limit()
        ));
    }
    for mutating in &native.mutating {
        let bound = cost::estimate_mutating(&mutating.policy.spec);
        lines.push(format!(
            "- {}: at most {} per request plus {} per container, init container, volume, volume mount, env entry or requester group ({} fit; pods with more than {} containers in one array go to the webhook)",
            mutating.policy.metadata.name,
            bound.total.fixed,
            bound.total.per_item,
            bound.items_within_limits,
            super::injections::INDEXED_CONTAINERS
        ));
    }
    lines
}

fn placement_line(placement: &Placement) -> String {
    match placement.side {
        Side::Native => format!("- {} ({}): native", placement.rule, label(placement.subject)),
        Side::Webhook => format!("- {} ({}): webhook: {}", placement.rule, label(placement.subject), placement.why),
    }
}
