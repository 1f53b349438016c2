//! The injections that need no lookup, as a MutatingAdmissionPolicy whose JSON patches add what
//! the mutating webhook would add (`review::inject`): which injection is native and why the
//! others are not, the CEL of each one's match, collisions and additions, and the conditions the
//! narrowed webhooks keep for what the policy leaves to tokengate. Pure.
//!
//! An injection is native when it is matched by namespaces and pod labels alone, sets fixed
//! values, writes its mount path in clean form and shares no volume name, mount path or variable
//! with another such injection: the webhook then plans it independently of every other, so one
//! mutation per injection (and one per variable), each applied to the object the ones before it
//! patched, adds exactly what the webhook's single patch adds, in the same order. The policy
//! skips a pod some other injection may match, and a pod on which a native injection collides
//! (or whose mount paths it would have to clean, or with more containers than it indexes): those
//! go to the webhook, which plans, patches, warns or refuses as before.
//!
//! Upstream: `k8s.io/api/admissionregistration/v1` (`MutatingAdmissionPolicy`, `Mutation`,
//! `patchType: JSONPatch`, `reinvocationPolicy`); the CEL construction
//! `JSONPatch{op: ..., path: ..., value: Object.spec.volumes{...}}` is the one its
//! `JSONPatch.expression` documents, and `k8s.io/apiserver/pkg/admission/plugin/policy/mutating`
//! applies each mutation in turn to the object the previous ones patched.

use super::expressions::{glob_test, normalized_audience, requested_seconds};
use super::objects::{MatchResources, MutatingAdmissionPolicy, MutatingPolicySpec, Mutation, Variable};
use crate::k8s;
use crate::policy::{EnvSource, Injection, Policy};
use crate::review::{self, Subject, SKIP_ANNOTATION};
use crate::webhooks::conditions::{self, cel_string, MatchCondition};
use crate::webhooks::{FailurePolicy, Rule};

/// The containers per array (`containers`, `initContainers`) the policy patches by index; a pod
/// with more goes to the webhook. Its CEL iterates containers only up to this count (the check
/// comes first and short-circuits), so a pod at it is what `cost::mutating_over_budget` requires
/// to fit. Chosen from the cost bound (`cargo test --test native_mutating figures`): at 64, five
/// injections already cost more per container than the limits allow for a pod that full; 16
/// containers per array is more than pods have, and a pod with more is planned by the webhook.
pub const INDEXED_CONTAINERS: usize = 16;

/// The longest skip annotation the policy reads: `matches()` costs the length of the string it
/// reads (the API server allows 256 KiB of annotations, which one test would spend half the
/// per-expression limit on), so a pod with a longer one goes to the webhook.
pub const READ_SKIP_ANNOTATION: usize = 1024;

/// The conditions' names.
pub mod names {
    pub const NO_NATIVE_INJECTION_APPLIES: &str = "skip-pods-no-native-injection-applies";
    pub const WEBHOOK_INJECTION_MAY_MATCH: &str = "skip-pods-a-webhook-injection-may-match";
    pub const LEFT_TO_THE_WEBHOOK: &str = "skip-pods-the-webhook-must-plan";
}

/// Where one injection is added, and why not natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionPlacement {
    pub name: String,
    /// Why the webhook adds it; `None` when the MutatingAdmissionPolicy does.
    pub webhook_because: Option<String>,
}

/// Every injection of `policy`, in document order, placed.
pub fn placements(policy: &Policy) -> Vec<InjectionPlacement> {
    let injections = policy.injections();
    injections
        .iter()
        .map(|injection| InjectionPlacement {
            name: injection.name.clone(),
            webhook_because: needs_lookup(injection)
                .or_else(|| unclean_mount_path(injection))
                .or_else(|| shares_with(injection, injections)),
        })
        .collect()
}

/// Why planning `injection` needs the ServiceAccount, if it does.
fn needs_lookup(injection: &Injection) -> Option<String> {
    if let Some(key) = &injection.service_account_annotation {
        return Some(format!("matched by the service-account annotation {key:?}: the ServiceAccount is a lookup"));
    }
    injection.env.iter().find_map(|var| match &var.source {
        EnvSource::ServiceAccountAnnotation(key) => Some(format!(
            "sets {} from the service-account annotation {key:?}: the ServiceAccount is a lookup",
            var.name
        )),
        EnvSource::Value(_) => None,
    })
}

/// Why the CEL cannot compare `injection`'s mount path as written, if it cannot.
fn unclean_mount_path(injection: &Injection) -> Option<String> {
    let path = &injection.mount_path;
    (k8s::clean_path(path) != *path || !path.starts_with('/')).then(|| {
        format!("its mountPath {path:?} is not an absolute path in clean form, which the CEL compares as written")
    })
}

/// Which other lookup-free injection shares a volume name, a variable or a mount path (one at or
/// beneath the other) with `injection`: the webhook plans those two together.
fn shares_with(injection: &Injection, injections: &[Injection]) -> Option<String> {
    let overlaps = |other: &Injection| {
        other.volume.name == injection.volume.name
            || k8s::is_within(&other.mount_path, &injection.mount_path)
            || k8s::is_within(&injection.mount_path, &other.mount_path)
            || other.env.iter().any(|a| injection.env.iter().any(|b| a.name == b.name))
    };
    injections
        .iter()
        .filter(|other| !std::ptr::eq(*other, injection) && needs_lookup(other).is_none())
        .find(|other| overlaps(other))
        .map(|other| {
            format!(
                "shares its volume name, mount path or a variable with injection {:?}: the webhook plans them together",
                other.name
            )
        })
}

/// The native injections of `policy` and the others, as `placements` splits them.
pub fn partition(policy: &Policy) -> (Vec<&Injection>, Vec<&Injection>) {
    let placed = placements(policy);
    policy.injections().iter().zip(&placed).fold((Vec::new(), Vec::new()), |(mut native, mut webhook), (i, p)| {
        match p.webhook_because {
            None => native.push(i),
            Some(_) => webhook.push(i),
        }
        (native, webhook)
    })
}

/// The MutatingAdmissionPolicy adding `native`: the webhook's exemption conditions, then the
/// pods it leaves to the webhook, then one mutation for each injection's volume and mounts and one
/// for each of its variables. `Err` says why there is none: no native injection, or one that
/// needs the webhook may match every pod (the policy would never apply).
pub fn policy(
    policy: &Policy,
    name: &str,
    native: &[&Injection],
    webhook: &[&Injection],
) -> Result<MutatingAdmissionPolicy, String> {
    if native.is_empty() {
        return Err(super::NO_NATIVE_INJECTION.to_string());
    }
    if let Some(everywhere) = webhook.iter().find(|i| conditions::injection_matches(i) == "true") {
        return Err(format!(
            "injection {:?}, which the webhook adds, may match every pod, and the webhook plans every pod it may match",
            everywhere.name
        ));
    }
    let mut match_conditions = conditions::common(policy, true);
    match_conditions.extend(conditions::not_exempt_pod_namespace(policy));
    match_conditions.push(conditions::not_mirror_pod());
    match_conditions.push(MatchCondition {
        name: names::NO_NATIVE_INJECTION_APPLIES.to_string(),
        expression: any(native.iter().map(|i| applies(i))),
    });
    if !webhook.is_empty() {
        match_conditions.push(MatchCondition {
            name: names::WEBHOOK_INJECTION_MAY_MATCH.to_string(),
            expression: format!("!({})", conditions::any_of_may_match(webhook.iter().copied())),
        });
    }
    match_conditions.push(MatchCondition {
        name: names::LEFT_TO_THE_WEBHOOK.to_string(),
        expression: format!("!({})", left_to_the_webhook(policy, native)),
    });
    let indexes: Vec<String> = (0..INDEXED_CONTAINERS).map(|i| i.to_string()).collect();
    let mut mutations = Vec::new();
    for injection in native {
        mutations.push(Mutation::json_patch(volume_and_mounts(injection)));
        for var in &injection.env {
            if let EnvSource::Value(value) = &var.source {
                mutations.push(Mutation::json_patch(variable(injection, &var.name, value)));
            }
        }
    }
    let spec = MutatingPolicySpec {
        failure_policy: FailurePolicy::Fail,
        reinvocation_policy: "IfNeeded".to_string(),
        match_constraints: MatchResources {
            resource_rules: Rule::for_subjects(review::Webhook::Mutate, &[Subject::Pod]),
            match_policy: "Equivalent".to_string(),
        },
        match_conditions,
        variables: vec![Variable::new(INDEXES, format!("[{}]", indexes.join(", ")))],
        mutations,
    };
    Ok(MutatingAdmissionPolicy::new(name, spec))
}

/// The variable listing the container indexes the mutations patch.
pub const INDEXES: &str = "containerIndexes";

/// Whether some of `terms` holds (`false` for none).
fn any(terms: impl IntoIterator<Item = String>) -> String {
    let terms: Vec<String> = terms.into_iter().map(|t| format!("({t})")).collect();
    if terms.is_empty() {
        "false".to_string()
    } else {
        terms.join("\n|| ")
    }
}

/// Whether `injection` applies to the pod as `inject::plan` decides: its namespaces and pod
/// selector match, and it is required or the pod did not opt out with the skip annotation.
pub fn applies(injection: &Injection) -> String {
    let matches = conditions::injection_matches(injection);
    if injection.required {
        return matches;
    }
    // `skipped_names`: the annotation split at commas, each name trimmed of what `str::trim`
    // trims (Unicode White_Space: \t \n \v \f \r, U+0085 and the separators \p{Z}).
    let space = r"[\t\n\x0B\f\r\x{85}\p{Z}]*";
    let regex = format!("(^|,){space}{}{space}(,|$)", re2_literal(&injection.name));
    let key = cel_string(SKIP_ANNOTATION);
    format!(
        "({matches}) && !(has(object.metadata.annotations) && {key} in object.metadata.annotations && size(object.metadata.annotations[{key}]) <= {READ_SKIP_ANNOTATION} && object.metadata.annotations[{key}].matches({}))",
        cel_string(&regex)
    )
}

/// Whether the pod's skip annotation is longer than [`applies`] reads.
fn long_skip_annotation() -> String {
    let key = cel_string(SKIP_ANNOTATION);
    format!("(has(object.metadata.annotations) && {key} in object.metadata.annotations && size(object.metadata.annotations[{key}]) > {READ_SKIP_ANNOTATION})")
}

/// `text` as an RE2 literal: ASCII punctuation escaped.
fn re2_literal(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// An RE2 test that a path is absolute and in clean form (`k8s::clean_path` leaves it as it is):
/// `/`, or segments that are neither empty, `.` nor `..`.
const CLEAN_PATH_RE2: &str = r"^/$|^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$";

/// The pod's arrays of containers an injection mounts into: init containers when it asks for them.
fn arrays(injection: &Injection) -> Vec<&'static str> {
    if injection.init_containers {
        vec!["initContainers", "containers"]
    } else {
        vec!["containers"]
    }
}

/// Whether container `c` is one `injection` mounts into (`target_slots`).
fn targets(injection: &Injection, c: &str) -> String {
    glob_test(&format!("{c}.name"), &injection.containers).unwrap_or_else(|| "true".to_string())
}

/// The containers of `array` that `injection` mounts into.
fn targeted(injection: &Injection, array: &str) -> String {
    format!("(has(object.spec.{array}) ? object.spec.{array} : []).filter(c, {})", targets(injection, "c"))
}

/// Whether mount path `m` (clean) is `injection`'s path or beneath it (`k8s::is_within`).
fn within(injection: &Injection, m: &str) -> String {
    let path = &injection.mount_path;
    if path == "/" {
        return "true".to_string();
    }
    format!("({m} == {} || {m}.startsWith({}))", cel_string(path), cel_string(&format!("{path}/")))
}

/// Whether the last entry named `name` of container `c`'s env is `value` and not `valueFrom`
/// (the kubelet keeps the last entry of a name; `plan_env` judges it).
fn last_env_is(c: &str, name: &str, value: &str) -> String {
    let entries = format!("{c}.env.filter(e, e.name == {})", cel_string(name));
    format!(
        "(has({entries}[size({entries}) - 1].value) && {entries}[size({entries}) - 1].value == {}\n    && (!has({entries}[size({entries}) - 1].valueFrom) || {entries}[size({entries}) - 1].valueFrom == null))",
        cel_string(value)
    )
}

/// Whether container `c` has an env entry named `name`.
fn has_env(c: &str, name: &str) -> String {
    format!("(has({c}.env) && {c}.env.exists(e, e.name == {}))", cel_string(name))
}

/// Whether container `c` has a mount at `injection`'s path.
fn mounted(injection: &Injection, c: &str) -> String {
    format!(
        "(has({c}.volumeMounts) && {c}.volumeMounts.exists(m, m.mountPath == {}))",
        cel_string(&injection.mount_path)
    )
}

/// Whether container `c` keeps `injection` from being planned in CEL: a mount path not in clean
/// form, another volume mounted at or beneath its path, or one of its variables set otherwise.
fn container_collides(injection: &Injection, c: &str) -> String {
    let mounts = format!(
        "(has({c}.volumeMounts) && {c}.volumeMounts.exists(m, !m.mountPath.matches({}) || (m.name != {} && {})))",
        cel_string(CLEAN_PATH_RE2),
        cel_string(&injection.volume.name),
        within(injection, "m.mountPath")
    );
    let variables = injection.env.iter().filter_map(|var| match &var.source {
        EnvSource::Value(value) => {
            Some(format!("({} && !{})", has_env(c, &var.name), last_env_is(c, &var.name, value)))
        }
        EnvSource::ServiceAccountAnnotation(_) => None,
    });
    std::iter::once(mounts).chain(variables).collect::<Vec<_>>().join("\n  || ")
}

/// The pod's first volume named as `injection`'s (`plan_volume` judges the first).
fn first_volume(injection: &Injection) -> String {
    format!("object.spec.volumes.filter(v, v.name == {})[0]", cel_string(&injection.volume.name))
}

/// Whether the pod has a volume named as `injection`'s.
fn has_volume(injection: &Injection) -> String {
    format!(
        "(has(object.spec.volumes) && object.spec.volumes.exists(v, v.name == {}))",
        cel_string(&injection.volume.name)
    )
}

/// Whether volume `v` is exactly `injection`'s token volume (`is_injected_volume`): one source,
/// a `serviceAccountToken` with its audience (as decisions normalise it), lifetime and path.
fn is_injected_volume(policy: &Policy, injection: &Injection, v: &str) -> String {
    let sources = format!("{v}.projected.sources");
    let token = format!("{sources}[0].serviceAccountToken");
    let wanted = &injection.volume;
    format!(
        "(has({v}.projected) && has({sources}) && {sources} != null && size({sources}) == 1\n    && has({token}) && {token} != null\n    && {} == {} && {} == {}\n    && (has({token}.path) ? {token}.path : '') == {})",
        normalized_audience(policy, &token),
        cel_string(&wanted.audience),
        requested_seconds(&token),
        wanted.expiration_seconds,
        cel_string(&wanted.path)
    )
}

/// Whether `injection` collides with the pod, or the CEL cannot plan it: its volume name taken
/// by another volume, or a container it mounts into that [`container_collides`].
fn collides(policy: &Policy, injection: &Injection) -> String {
    let volume =
        format!("({} && !{})", has_volume(injection), is_injected_volume(policy, injection, &first_volume(injection)));
    let containers = arrays(injection)
        .into_iter()
        .map(|array| format!("{}.exists(c,\n  {})", targeted(injection, array), container_collides(injection, "c")));
    std::iter::once(volume).chain(containers).collect::<Vec<_>>().join("\n|| ")
}

/// More containers in an array than the mutations index.
fn too_many_containers() -> String {
    ["containers", "initContainers"]
        .map(|array| format!("(has(object.spec.{array}) && size(object.spec.{array}) > {INDEXED_CONTAINERS})"))
        .join(" || ")
}

/// Whether the MutatingAdmissionPolicy leaves the pod to the webhook although a native injection
/// applies: the pod has more containers than the mutations index or a skip annotation longer than
/// they read, or one collides (or cannot be planned in CEL). Nothing a native injection adds makes
/// it true (they share no name or path). The counts come first: `||` stops there, so the
/// collision tests never iterate more containers than the cost bound counts.
pub fn left_to_the_webhook(policy: &Policy, native: &[&Injection]) -> String {
    let applying = any(native.iter().map(|i| applies(i)));
    let too_big = format!("({applying}) && ({} || {})", too_many_containers(), long_skip_annotation());
    let colliding = native.iter().map(|i| format!("({}) && ({})", applies(i), collides(policy, i)));
    any(std::iter::once(too_big).chain(colliding))
}

/// Whether some native injection that applies is not all there (or collides): what the
/// validating webhook's presence check is still called for once the mutations have run.
pub fn not_all_there(policy: &Policy, native: &[&Injection]) -> String {
    let missing = native.iter().map(|injection| {
        let containers = arrays(injection).into_iter().map(|array| {
            let variables: Vec<String> =
                injection.env.iter().map(|var| format!("!{}", has_env("c", &var.name))).collect();
            let missing = std::iter::once(format!("!{}", mounted(injection, "c"))).chain(variables).collect::<Vec<_>>();
            format!("{}.exists(c, {})", targeted(injection, array), missing.join(" || "))
        });
        let absent = std::iter::once(format!("!{}", has_volume(injection))).chain(containers).collect::<Vec<_>>();
        format!("({}) && ({})", applies(injection), absent.join("\n  || "))
    });
    any(missing.chain([left_to_the_webhook(policy, native)]))
}

/// The patch adding `injection`'s volume, when the pod has none of its name, and its mount to
/// every container it mounts into that has none at its path: `inject::render`'s operations for it.
fn volume_and_mounts(injection: &Injection) -> String {
    let wanted = &injection.volume;
    let audience = if wanted.audience.is_empty() {
        String::new()
    } else {
        format!("audience: {}, ", cel_string(&wanted.audience))
    };
    let volume = format!(
        "Object.spec.volumes{{name: {}, projected: Object.spec.volumes.projected{{sources: [Object.spec.volumes.projected.sources{{serviceAccountToken: Object.spec.volumes.projected.sources.serviceAccountToken{{{audience}expirationSeconds: {}, path: {}}}}}]}}}}",
        cel_string(&wanted.name),
        wanted.expiration_seconds,
        cel_string(&wanted.path)
    );
    let volume_ops = format!(
        "({} ? [] : has(object.spec.volumes)\n  ? [JSONPatch{{op: 'add', path: '/spec/volumes/-', value: {volume}}}]\n  : [JSONPatch{{op: 'add', path: '/spec/volumes', value: [{volume}]}}])",
        has_volume(injection)
    );
    let mount_ops = arrays(injection).into_iter().map(|array| {
        let mount = format!(
            "Object.spec.{array}.volumeMounts{{name: {}, mountPath: {}, readOnly: true}}",
            cel_string(&wanted.name),
            cel_string(&injection.mount_path)
        );
        append_per_container(
            injection,
            array,
            "volumeMounts",
            &mounted(injection, &format!("object.spec.{array}[j]")),
            &mount,
        )
    });
    let ops = std::iter::once(volume_ops).chain(mount_ops).collect::<Vec<_>>().join("\n+ ");
    format!("!({}) ? [] :\n{ops}", applies(injection))
}

/// The patch setting variable `name` to `value` in every container `injection` mounts into that
/// has no entry of that name.
fn variable(injection: &Injection, name: &str, value: &str) -> String {
    let ops = arrays(injection).into_iter().map(|array| {
        let entry = format!("Object.spec.{array}.env{{name: {}, value: {}}}", cel_string(name), cel_string(value));
        append_per_container(injection, array, "env", &has_env(&format!("object.spec.{array}[j]"), name), &entry)
    });
    format!("!({}) ? [] :\n{}", applies(injection), ops.collect::<Vec<_>>().join("\n+ "))
}

/// The operations adding `item` to the list `field` of every container `j` of `array` that
/// `injection` mounts into and for which `present` does not hold: appended when the container has
/// the list, the list created otherwise (as `inject::add_to_array`).
fn append_per_container(injection: &Injection, array: &str, field: &str, present: &str, item: &str) -> String {
    let container = format!("object.spec.{array}[j]");
    let path = format!("'/spec/{array}/' + string(j) + '/{field}'");
    format!(
        "(has(object.spec.{array}) ? variables.{INDEXES}.filter(j, j < size(object.spec.{array})) : [])\n  .filter(j, {} && !{present})\n  .map(j, has({container}.{field})\n    ? JSONPatch{{op: 'add', path: {path} + '/-', value: {item}}}\n    : JSONPatch{{op: 'add', path: {path}, value: [{item}]}})",
        targets(injection, &container)
    )
}
