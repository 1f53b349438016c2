//! The CEL of the native policies: the policy's lookup-free rules as variables and validations
//! over `object` and `request`, built from the same compiled policy, glob reading
//! (`Globs::re2`) and CEL helpers (`conditions`) as the webhooks' match conditions.
//!
//! Every expression is total over what the API server passes, as the match conditions are:
//! optional fields are tested with `has()` and nullable lists compared with `null` first.

use crate::k8s::api::NAMED_GROUP_API_VERSION_RE2;
use crate::k8s::tokens::AUTOMOUNT_EXPIRATION_SECONDS;
use crate::policy::globs::Globs;
use crate::policy::{Policy, DEFAULT_EXPIRATION_SECONDS};
use crate::webhooks::conditions::{automount_volume, cel_list, cel_string};

/// The API server audiences as a CEL list, `''` first: an audience in it counts as `''`.
pub fn api_server_audiences(policy: &Policy) -> String {
    let mut audiences: Vec<&str> = vec![""];
    audiences.extend(policy.api_server_audiences().into_iter().filter(|a| !a.is_empty()));
    cel_list(&audiences)
}

/// The audience of `token` (a projected `serviceAccountToken` or a CSIDriver `tokenRequests`
/// entry) as decisions compare it (`Policy::normalize`): absent or an API server audience is `''`.
pub fn normalized_audience(policy: &Policy, token: &str) -> String {
    format!("(!has({token}.audience) || {token}.audience in {} ? '' : {token}.audience)", api_server_audiences(policy))
}

/// The requested lifetime of `token`: its `expirationSeconds`, or 3600 when absent
/// (`expiration_or_default`).
pub fn requested_seconds(token: &str) -> String {
    format!(
        "(has({token}.expirationSeconds) && {token}.expirationSeconds != null ? {token}.expirationSeconds : {DEFAULT_EXPIRATION_SECONDS})"
    )
}

/// The effective lifetime of a pod-bound token (`k8s::tokens::effective_seconds`): a request of
/// 3607 s for the API server audience alone lives `expiration.extendedSeconds`.
pub fn effective_seconds(policy: &Policy, api_server_only: &str, requested: &str) -> String {
    format!(
        "({api_server_only} && {requested} == {AUTOMOUNT_EXPIRATION_SECONDS} ? {} : {requested})",
        policy.extended_seconds()
    )
}

/// `name.matches(...)` for `globs`; `None` when the globs match every name, `Some("false")`
/// when they match none.
pub fn glob_test(name: &str, globs: &Globs) -> Option<String> {
    if globs.matches_all() {
        return None;
    }
    Some(globs.re2().map_or("false".to_string(), |regex| format!("{name}.matches({})", cel_string(&regex))))
}

/// Both globs of an entry on `namespace` and `service_account`, as one condition (`true` when
/// both match every name).
fn entry_test(namespace: &str, service_account: &str, namespaces: &Globs, service_accounts: &Globs) -> String {
    let parts: Vec<String> = [glob_test(namespace, namespaces), glob_test(service_account, service_accounts)]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        "true".to_string()
    } else {
        parts.join(" && ")
    }
}

/// A map from every audience of the allow-list to the lifetimes its entries grant
/// `namespace`/`service_account`: one value per group of entries sharing a maximum and
/// service-account globs (their namespace globs read as one list), the maximum where the group
/// matches and `-1` where it does not. The audience is allowed when some value is `>= 0`, a
/// lifetime when some value is at least it: the largest maximum of the matching entries, as
/// `Policy::check_token` applies it. A request pays for the globs once, whatever number of tokens
/// it carries; the expression is flat (no nesting grows with the entries), as the CEL parser
/// limits nesting to 250 levels.
pub fn grants(policy: &Policy, namespace: &str, service_account: &str) -> String {
    let entries = policy.allow_list();
    let mut audiences: Vec<&str> = entries.iter().map(|e| e.audience).collect();
    audiences.dedup();
    let per_audience: Vec<String> = audiences
        .iter()
        .map(|audience| {
            let own: Vec<_> = entries.iter().filter(|e| e.audience == *audience).collect();
            let mut groups: Vec<(u64, &[String], Vec<String>)> = Vec::new();
            for entry in own {
                let accounts = entry.service_accounts.patterns();
                let namespaces = entry.namespaces.patterns().to_vec();
                match groups.iter_mut().find(|(max, sa, _)| *max == entry.max_seconds && *sa == accounts) {
                    Some(group) => group.2.extend(namespaces),
                    None => groups.push((entry.max_seconds, accounts, namespaces)),
                }
            }
            let values: Vec<String> = groups
                .into_iter()
                .map(|(max, accounts, namespaces)| {
                    let namespaces = Globs::compile(Some(&namespaces)).expect("the policy's own globs compile");
                    let accounts = Globs::compile(Some(accounts)).expect("the policy's own globs compile");
                    match entry_test(namespace, service_account, &namespaces, &accounts).as_str() {
                        "true" => max.to_string(),
                        test => format!("{test} ? {max} : -1"),
                    }
                })
                .collect();
            format!("{}: [{}]", cel_string(audience), values.join(", "))
        })
        .collect();
    format!("{{{}}}", per_audience.join(",\n  "))
}

/// Whether `grants` allows `audience` at all.
pub fn granted(audience: &str) -> String {
    format!("({audience} in variables.grants && variables.grants[{audience}].exists(m, m >= 0))")
}

/// Whether the audience rule passes a token of `audience` and `effective` lifetime: `grants`
/// allows the audience, or the token is below `minSeconds`, which is the lifetime rule's to
/// report (`Policy::check_token` checks the floor before the audience).
pub fn audience_passes(policy: &Policy, audience: &str, effective: &str) -> String {
    format!("({effective} < {} || {})", policy.min_seconds(), granted(audience))
}

/// Whether the lifetime rule passes: `effective` is at least `minSeconds` and, for an audience
/// `grants` allows, at most one of its maxima (an audience it does not allow is the audience
/// rule's to report), in `Policy::check_token`'s order.
pub fn within_grant(policy: &Policy, audience: &str, effective: &str) -> String {
    format!(
        "({effective} >= {} && (!{} || variables.grants[{audience}].exists(m, m >= {effective})))",
        policy.min_seconds(),
        granted(audience),
    )
}

/// The maxima `grants` gives `audience`, for messages: `7200/3600`.
pub fn maxima(audience: &str) -> String {
    format!("variables.grants[{audience}].filter(m, m >= 0).map(m, string(m)).join('/')")
}

/// The allowed audiences of `grants`, for messages: `"vault", "" (the API server audience)`.
pub fn allowed_there() -> String {
    "(variables.grants.exists(a, variables.grants[a].exists(m, m >= 0)) ? variables.grants.filter(a, variables.grants[a].exists(m, m >= 0)).map(a, a == '' ? '\"\" (the API server audience)' : '\"' + a + '\"').join(', ') : 'none')".to_string()
}

/// The names of the pod's volumes with a projected token source, other than the automount
/// volume, for which `token_fails` holds (`s.serviceAccountToken` is the token).
pub fn pod_volumes_failing(token_fails: &str) -> String {
    format!(
        "has(object.spec.volumes) ? object.spec.volumes.filter(v,\n  has(v.projected) && has(v.projected.sources) && v.projected.sources != null\n  && !({})\n  && v.projected.sources.exists(s, has(s.serviceAccountToken) && {token_fails})).map(v, v.name) : []",
        automount_volume("v")
    )
}

/// The pod's service account (`k8s::names::service_account_named`): `serviceAccountName`, then
/// the deprecated `serviceAccount`, then `default`.
pub fn pod_service_account() -> String {
    let field = |name: &str| format!("has(object.spec.{name}) && object.spec.{name} != ''");
    format!(
        "{} ? object.spec.serviceAccountName : {} ? object.spec.serviceAccount : 'default'",
        field("serviceAccountName"),
        field("serviceAccount")
    )
}

/// A TokenRequest's audiences as decisions read them: absent or empty means `['']`, and API
/// server audiences are `''`.
pub fn token_request_audiences(policy: &Policy) -> String {
    let spec = "object.spec";
    format!(
        "!has({spec}.audiences) || {spec}.audiences == null || size({spec}.audiences) == 0 ? [''] : {spec}.audiences.map(a, a in {} ? '' : a)",
        api_server_audiences(policy)
    )
}

/// Whether a TokenRequest is bound to a core Pod as `TokenREST.Create` reads it (kind `Pod` and
/// an `apiVersion` whose group `k8s::api_group` reads as the core group).
pub fn token_request_bound_to_pod() -> String {
    let bound = "object.spec.boundObjectRef";
    format!(
        "has({bound}) && {bound} != null && has({bound}.kind) && {bound}.kind == 'Pod'\n  && !(has({bound}.apiVersion) && {bound}.apiVersion.matches({}))",
        cel_string(NAMED_GROUP_API_VERSION_RE2)
    )
}

/// Whether the service account `service_account` of `namespace` may have a legacy token Secret
/// (`Policy::allows_legacy_token`): one disjunct per `legacyTokens` entry.
pub fn legacy_token_allowed(policy: &Policy, namespace: &str, service_account: &str) -> String {
    let rules: Vec<String> = policy
        .legacy_token_rules()
        .into_iter()
        .map(|(namespaces, accounts)| format!("({})", entry_test(namespace, service_account, namespaces, accounts)))
        .collect();
    if rules.is_empty() {
        "false".to_string()
    } else {
        rules.join("\n|| ")
    }
}
