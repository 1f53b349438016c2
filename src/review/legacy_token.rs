//! Secrets of type `kubernetes.io/service-account-token`: the token controller fills them with a
//! token that never expires, so only the service accounts `legacyTokens` lists may have one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{decode_object, rules, Findings, Violation};
use crate::policy::Policy;

/// The annotation naming the service account whose token the Secret receives.
pub use crate::k8s::names::SERVICE_ACCOUNT_NAME_ANNOTATION;
/// The Secret type the token controller fills with a legacy token.
pub use crate::k8s::names::SERVICE_ACCOUNT_TOKEN_TYPE;

/// What decisions read of a Secret: its type and annotations. `data` is never decoded.
#[derive(Debug, Default, Deserialize)]
struct Secret {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default, rename = "type")]
    type_: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl Secret {
    /// The service account whose legacy token the Secret would receive, if it is of that type.
    fn token_for(&self) -> Option<&str> {
        if self.type_.as_deref() != Some(SERVICE_ACCOUNT_TOKEN_TYPE) {
            return None;
        }
        self.metadata.annotations.as_ref()?.get(SERVICE_ACCOUNT_NAME_ANNOTATION).map(String::as_str)
    }
}

/// Checks a Secret at CREATE, and at UPDATE when the service account it names changed.
pub fn validate(object: &RawValue, old_object: Option<&RawValue>, namespace: &str, policy: &Policy) -> Findings {
    let secret: Secret = match decode_object(object, "Secret") {
        Ok(secret) => secret,
        Err(findings) => return findings,
    };
    // Without the annotation the API server refuses the Secret itself (`ValidateSecret`).
    let Some(service_account) = secret.token_for() else { return Findings::default() };
    if let Some(old) = old_object {
        let unchanged =
            decode_object::<Secret>(old, "Secret").is_ok_and(|old| old.token_for() == Some(service_account));
        if unchanged {
            return Findings::default();
        }
    }
    let mut findings = Findings::default();
    if !policy.allows_legacy_token(namespace, service_account) {
        findings.violations.push(Violation::new(
            rules::LEGACY_TOKENS,
            format!("metadata.annotations[{SERVICE_ACCOUNT_NAME_ANNOTATION:?}]"),
            format!(
                "a Secret of type {SERVICE_ACCOUNT_TOKEN_TYPE} receives a token for service account {namespace}/{service_account} that never expires, and spec.legacyTokens does not list it; use `kubectl create token` or a projected token volume instead, or ask a cluster admin to list it in spec.legacyTokens"
            ),
        ));
    }
    findings
}
