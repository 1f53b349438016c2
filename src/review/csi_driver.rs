//! CSIDriver CREATE/UPDATE: which drivers may have the kubelet mint tokens, for which audiences.

use k8s_openapi::api::storage::v1::CSIDriver;
use serde_json::value::RawValue;

use super::{decode_object, Findings, Violation};
use crate::policy::{describe_audience, expiration_or_default, Policy, API_MAX_EXPIRATION_SECONDS};

/// Checks a CSIDriver's `tokenRequests` and `requiresRepublish` against `spec.csiDrivers`.
pub fn validate(object: &RawValue, policy: &Policy) -> Findings {
    let driver: CSIDriver = match decode_object(object, "CSIDriver") {
        Ok(driver) => driver,
        Err(findings) => return findings,
    };
    let mut findings = Findings::default();
    let name = driver.metadata.name.as_deref().unwrap_or_default();
    let token_requests = driver.spec.token_requests.as_deref().unwrap_or_default();
    if token_requests.is_empty() {
        return findings;
    }
    let Some(rule) = policy.csi_driver(name) else {
        findings.violations.push(Violation::new(
            "spec.tokenRequests",
            format!("CSI driver {name:?} is not listed in the policy's csiDrivers, so it may not declare tokenRequests; ask a cluster admin to add it or remove tokenRequests"),
        ));
        return findings;
    };
    for (i, token) in token_requests.iter().enumerate() {
        let audience = policy.normalize(Some(&token.audience));
        if !rule.audiences.contains(audience) {
            let mut allowed: Vec<String> = rule.audiences.iter().map(|a| describe_audience(a)).collect();
            allowed.sort();
            let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            findings.violations.push(Violation::new(
                format!("spec.tokenRequests[{i}].audience"),
                format!(
                    "audience {} is not allowed for CSI driver {name:?} (allowed: {allowed})",
                    describe_audience(audience)
                ),
            ));
        }
        let seconds = expiration_or_default(token.expiration_seconds);
        let max = policy.max_seconds().min(API_MAX_EXPIRATION_SECONDS);
        if seconds < policy.min_seconds() || seconds > max {
            findings.violations.push(Violation::new(
                format!("spec.tokenRequests[{i}].expirationSeconds"),
                format!("{seconds} is outside the allowed range {}..{max} seconds", policy.min_seconds()),
            ));
        }
    }
    if rule.require_republish && driver.spec.requires_republish != Some(true) {
        findings.violations.push(Violation::new(
            "spec.requiresRepublish",
            format!("must be true: CSI driver {name:?} declares tokenRequests, and without republish its tokens expire under mounted volumes"),
        ));
    }
    findings
}
