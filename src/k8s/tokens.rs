//! Service-account tokens as the API server issues them: the automount volume, the lifetime
//! bounds, and the 3607 s extension.

/// Name prefix of the volume the ServiceAccount admission plugin adds (`kube-api-access-<5>`).
pub const AUTOMOUNT_VOLUME_PREFIX: &str = "kube-api-access-";
/// The lifetime the automount volume asks for. Upstream: `WarnOnlyBoundTokenExpirationSeconds`
/// in `pkg/serviceaccount/claims.go`, used by `TokenREST.Create` in
/// `pkg/registry/core/serviceaccount/storage/token.go` to extend the token.
pub const AUTOMOUNT_EXPIRATION_SECONDS: u64 = 3607;
/// The file the automount volume's token is written to.
pub const AUTOMOUNT_TOKEN_PATH: &str = "token";
/// Where the ServiceAccount admission plugin mounts the automount volume
/// (`DefaultAPITokenMountPath` in plugin/pkg/admission/serviceaccount/admission.go).
pub const AUTOMOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token file of the automount volume, in every pod that has one.
pub const AUTOMOUNT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The API server's lower bound on token lifetimes (`ValidateTokenRequest` and the projected
/// volume and CSIDriver validations in pkg/apis/*/validation).
pub const MIN_EXPIRATION_SECONDS: u64 = 600;
/// The API server's upper bound on token lifetimes (2^32 seconds is still accepted).
pub const API_MAX_EXPIRATION_SECONDS: u64 = 1 << 32;
/// The lifetime the API server gives a token that asks for none (`SetDefaults_TokenRequestSpec`,
/// and the defaults of projected tokens and CSIDriver tokenRequests).
pub const DEFAULT_EXPIRATION_SECONDS: u64 = 3600;
/// What the API server makes of a pod-bound 3607 s API-server-audience token by default:
/// `--service-account-max-extended-token-expiration`, one year.
pub const DEFAULT_EXTENDED_SECONDS: u64 = 31_536_000;

/// Whether a volume named `name` whose token sources are `(audience, path, expirationSeconds)`
/// is the ServiceAccount admission plugin's: `kube-api-access-*` with exactly one token source
/// (no audience, path `token`, 3607 s); its other sources vary by distribution. Upstream:
/// `TokenVolumeSource` in `plugin/pkg/admission/serviceaccount/admission.go`.
pub fn has_automount_shape<'a>(
    name: &str,
    mut tokens: impl Iterator<Item = (Option<&'a str>, &'a str, Option<i64>)>,
) -> bool {
    if !name.starts_with(AUTOMOUNT_VOLUME_PREFIX) {
        return false;
    }
    match (tokens.next(), tokens.next()) {
        (Some((audience, path, seconds)), None) => {
            audience.unwrap_or_default().is_empty()
                && path == AUTOMOUNT_TOKEN_PATH
                && seconds == Some(AUTOMOUNT_EXPIRATION_SECONDS as i64)
        }
        _ => false,
    }
}

/// The lifetime the API server issues for a token request of `requested` seconds. Upstream,
/// `TokenREST.Create` (pkg/registry/core/serviceaccount/storage/token.go) runs validating
/// admission first and only then, when `--service-account-extend-token-expiration` is on (the
/// default), turns a request bound to a pod, of exactly 3607 s, whose audiences are all API
/// server audiences (`isKubeAudiences`) into a token of
/// `--service-account-max-extended-token-expiration` (`extended_seconds`; the requested 3607
/// when the extension is off).
pub fn effective_seconds(
    requested: u64,
    bound_to_pod: bool,
    api_server_audiences_only: bool,
    extended_seconds: u64,
) -> u64 {
    if bound_to_pod && api_server_audiences_only && requested == AUTOMOUNT_EXPIRATION_SECONDS {
        extended_seconds
    } else {
        requested
    }
}

/// The user name prefix and group of kubelets (`system:node:<name>` in `system:nodes`), as
/// NodeRestriction and the Node authorizer recognise them (`NodeIdentifier` in
/// pkg/auth/nodeidentifier/default.go).
pub const NODE_USER_PREFIX: &str = "system:node:";
/// See [`NODE_USER_PREFIX`].
pub const NODES_GROUP: &str = "system:nodes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pod_bound_3607_second_api_server_token_is_extended() {
        assert_eq!(effective_seconds(3607, true, true, DEFAULT_EXTENDED_SECONDS), DEFAULT_EXTENDED_SECONDS);
        assert_eq!(effective_seconds(3607, false, true, DEFAULT_EXTENDED_SECONDS), 3607);
        assert_eq!(effective_seconds(3607, true, false, DEFAULT_EXTENDED_SECONDS), 3607);
        assert_eq!(effective_seconds(3600, true, true, DEFAULT_EXTENDED_SECONDS), 3600);
    }

    #[test]
    fn the_automount_volume_is_known_by_its_one_token_source() {
        let token = |audience, path, seconds| (audience, path, seconds);
        assert!(has_automount_shape("kube-api-access-x", [token(None, "token", Some(3607))].into_iter()));
        assert!(has_automount_shape("kube-api-access-x", [token(Some(""), "token", Some(3607))].into_iter()));
        assert!(!has_automount_shape("other", [token(None, "token", Some(3607))].into_iter()));
        assert!(!has_automount_shape("kube-api-access-x", [token(Some("vault"), "token", Some(3607))].into_iter()));
        let two = [token(None, "token", Some(3607)), token(None, "other", Some(3607))];
        assert!(!has_automount_shape("kube-api-access-x", two.into_iter()));
    }
}
