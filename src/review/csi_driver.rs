//! CSIDriver CREATE/UPDATE: which drivers may have the kubelet mint tokens, for which audiences.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{decode_object, rules, Findings, Violation};
use crate::policy::{describe_audience, expiration_or_default, Policy, API_MAX_EXPIRATION_SECONDS};

/// The fields of a CSIDriver that decisions read, decoded leniently: fields of older or newer
/// API servers (`serviceAccountTokenInSecrets` is GA in 1.36) are read when present and
/// everything else is skipped.
#[derive(Debug, Default, Deserialize)]
struct CsiDriver {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    token_requests: Option<Vec<TokenRequest>>,
    #[serde(default)]
    requires_republish: Option<bool>,
    #[serde(default)]
    service_account_token_in_secrets: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    #[serde(default)]
    audience: String,
    #[serde(default)]
    expiration_seconds: Option<i64>,
}

/// Checks a CSIDriver's `tokenRequests`, `requiresRepublish` and `serviceAccountTokenInSecrets`
/// against `spec.csiDrivers`.
pub fn validate(object: &RawValue, policy: &Policy) -> Findings {
    let driver: CsiDriver = match decode_object(object, "CSIDriver") {
        Ok(driver) => driver,
        Err(findings) => return findings,
    };
    let mut findings = Findings::default();
    let name = driver.metadata.name.as_str();
    let token_requests = driver.spec.token_requests.as_deref().unwrap_or_default();
    if token_requests.is_empty() {
        return findings;
    }
    let Some(rule) = policy.csi_driver(name) else {
        findings.violations.push(Violation::new(
            rules::CSI_DRIVER_LISTED,
            "spec.tokenRequests",
            format!("CSI driver {name:?} is not listed in the policy's csiDrivers, so it may not declare tokenRequests; ask a cluster admin to add it or remove tokenRequests"),
        ));
        return findings;
    };
    let max = policy.max_seconds().min(API_MAX_EXPIRATION_SECONDS);
    for (i, token) in token_requests.iter().enumerate() {
        let audience = policy.normalize(Some(&token.audience));
        if !rule.audiences.contains(audience) {
            let mut allowed: Vec<String> = rule.audiences.iter().map(|a| describe_audience(a)).collect();
            allowed.sort();
            let allowed = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
            findings.violations.push(Violation::new(
                rules::CSI_DRIVER_AUDIENCES,
                format!("spec.tokenRequests[{i}].audience"),
                format!(
                    "audience {} is not allowed for CSI driver {name:?} (allowed: {allowed})",
                    describe_audience(audience)
                ),
            ));
        }
        // The kubelet binds every token it requests for a driver to the pod being mounted.
        let seconds = expiration_or_default(token.expiration_seconds);
        let lifetime = policy.lifetime(seconds, true, audience.is_empty());
        if let Err(denial) = policy.check_lifetime(lifetime, max) {
            findings.violations.push(Violation::new(
                rules::CSI_DRIVER_LIFETIMES,
                format!("spec.tokenRequests[{i}].expirationSeconds"),
                format!("{} (allowed: {}..{max} seconds)", denial.explain_lifetime(lifetime), policy.min_seconds()),
            ));
        }
    }
    if rule.require_republish && driver.spec.requires_republish != Some(true) {
        findings.violations.push(Violation::new(
            rules::CSI_DRIVER_REPUBLISH,
            "spec.requiresRepublish",
            format!("must be true: CSI driver {name:?} declares tokenRequests, and without republish its tokens expire under mounted volumes"),
        ));
    }
    if rule.require_token_in_secrets && driver.spec.service_account_token_in_secrets != Some(true) {
        findings.violations.push(Violation::new(
            rules::CSI_DRIVER_TOKEN_IN_SECRETS,
            "spec.serviceAccountTokenInSecrets",
            format!("must be true: CSI driver {name:?} declares tokenRequests, and the policy requires its tokens to travel in the NodePublishVolume secrets field rather than the volume context, which drivers have leaked into logs"),
        ));
    }
    findings
}
