//! The cluster's API server audiences, learned from a service-account token it issued: the
//! `aud` claim of an automount token lists exactly the API server's `--api-audiences`.

use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

pub use crate::k8s::tokens::AUTOMOUNT_TOKEN_FILE;

/// Why the audiences could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum AudiencesError {
    /// The token file cannot be read (not running in a pod, or automount is off).
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not a JWT with an `aud` claim.
    #[error("{path} is not a service-account token with an aud claim: {reason}")]
    Malformed { path: String, reason: String },
}

/// The `aud` claim: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    aud: Audience,
}

/// The audiences in a JWT's `aud` claim. The signature is not checked: the token is the one
/// the kubelet mounted into this pod, read only to learn how the cluster names itself.
pub fn audiences_of_token(token: &str) -> Result<Vec<String>, String> {
    let payload = token.trim().split('.').nth(1).ok_or("it has no payload part")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|err| format!("the payload is not base64url: {err}"))?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|err| format!("the payload has no aud claim: {err}"))?;
    let audiences = match claims.aud {
        Audience::One(audience) => vec![audience],
        Audience::Many(audiences) => audiences,
    };
    let audiences: Vec<String> = audiences.into_iter().filter(|a| !a.is_empty()).collect();
    if audiences.is_empty() {
        return Err("its aud claim is empty".to_string());
    }
    Ok(audiences)
}

/// The audiences of the token in `path`.
pub fn audiences_of_token_file(path: &Path) -> Result<Vec<String>, AudiencesError> {
    let display = path.display().to_string();
    let token =
        std::fs::read_to_string(path).map_err(|source| AudiencesError::Read { path: display.clone(), source })?;
    audiences_of_token(&token).map_err(|reason| AudiencesError::Malformed { path: display, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", encode(r#"{"alg":"RS256"}"#), encode(claims))
    }

    #[test]
    fn reads_one_or_many_audiences_from_the_aud_claim() {
        let many =
            jwt(r#"{"aud":["https://kubernetes.default.svc.cluster.local","k3s"],"sub":"system:serviceaccount:x:y"}"#);
        assert_eq!(audiences_of_token(&many).expect("valid"), ["https://kubernetes.default.svc.cluster.local", "k3s"]);
        let one = jwt(r#"{"aud":"https://oidc.eks.example.com/id/ABC"}"#);
        assert_eq!(audiences_of_token(&format!("{one}\n")).expect("valid"), ["https://oidc.eks.example.com/id/ABC"]);
    }

    #[test]
    fn refuses_what_is_not_a_token() {
        assert!(audiences_of_token("not a token").is_err());
        assert!(audiences_of_token(&jwt(r#"{"sub":"x"}"#)).is_err());
        assert!(audiences_of_token(&jwt(r#"{"aud":[]}"#)).is_err());
        assert!(audiences_of_token("a.!!!.c").is_err());
    }
}
