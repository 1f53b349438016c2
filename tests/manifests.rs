//! The deployment manifests: webhook rules, selectors, timeouts and failure policies as the
//! reliability guidelines ask, the Pod's security posture, and the policy copy in sync.

use std::path::Path;

use serde_json::Value;
use tokengate::manifest;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn objects(file: &str) -> Vec<Value> {
    manifest::load_file(&root().join(file)).expect("manifest").into_iter().map(|d| d.object).collect()
}

fn webhooks() -> Vec<(String, Value)> {
    objects("manifests/webhooks/webhooks.yaml")
        .into_iter()
        .flat_map(|config| {
            let kind = config["kind"].as_str().expect("kind").to_string();
            config["webhooks"].as_array().expect("webhooks").clone().into_iter().map(move |w| (kind.clone(), w))
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn webhooks_ask_only_for_what_tokengate_decides() {
    let mut seen = Vec::new();
    for (kind, webhook) in webhooks() {
        let name = webhook["name"].as_str().expect("name").to_string();
        for rule in webhook["rules"].as_array().expect("rules") {
            for resource in strings(&rule["resources"]) {
                for group in strings(&rule["apiGroups"]) {
                    seen.push((kind.clone(), name.clone(), group, resource.clone(), strings(&rule["operations"])));
                }
            }
        }
    }
    let allowed: &[(&str, &str, &[&str])] = &[
        ("", "pods", &["CREATE"]),
        ("", "serviceaccounts/token", &["CREATE"]),
        ("storage.k8s.io", "csidrivers", &["CREATE", "UPDATE"]),
        ("apps", "deployments", &["CREATE", "UPDATE"]),
        ("apps", "statefulsets", &["CREATE", "UPDATE"]),
        ("apps", "daemonsets", &["CREATE", "UPDATE"]),
        ("apps", "replicasets", &["CREATE", "UPDATE"]),
        ("batch", "jobs", &["CREATE", "UPDATE"]),
        ("batch", "cronjobs", &["CREATE", "UPDATE"]),
        ("", "replicationcontrollers", &["CREATE", "UPDATE"]),
        ("", "podtemplates", &["CREATE", "UPDATE"]),
        ("", "secrets", &["CREATE", "UPDATE"]),
    ];
    for (kind, name, group, resource, operations) in &seen {
        let entry = allowed.iter().find(|(g, r, _)| g == group && r == resource);
        let (_, _, expected) =
            entry.unwrap_or_else(|| panic!("{name} asks for {group}/{resource}, which tokengate does not decide"));
        assert_eq!(operations, expected, "{name}: {resource} operations");
        assert!(![
            "nodes",
            "leases",
            "certificatesigningrequests",
            "validatingwebhookconfigurations",
            "mutatingwebhookconfigurations",
            "*"
        ]
        .contains(&resource.as_str()));
        if kind == "MutatingWebhookConfiguration" {
            assert_eq!(resource, "pods", "only pods are mutated");
        }
    }
    for (group, resource, _) in allowed {
        assert!(seen.iter().any(|(_, _, g, r, _)| g == group && r == resource), "{group}/{resource} is covered");
    }
}

#[test]
fn webhooks_are_narrow_fast_and_side_effect_free() {
    for (kind, webhook) in webhooks() {
        let name = webhook["name"].as_str().expect("name");
        assert_eq!(webhook["sideEffects"], "None", "{name}");
        assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"], "{name}");
        let timeout = webhook["timeoutSeconds"].as_u64().expect("timeoutSeconds");
        let limit = if kind == "MutatingWebhookConfiguration" { 1..=2 } else { 2..=3 };
        assert!(limit.contains(&timeout), "{name}: timeout {timeout}");
        if kind == "MutatingWebhookConfiguration" {
            assert_eq!(webhook["reinvocationPolicy"], "IfNeeded", "{name}");
        }
        let policy = webhook["failurePolicy"].as_str().expect("failurePolicy");
        let expected = if name.starts_with("workloads.") { "Ignore" } else { "Fail" };
        assert_eq!(policy, expected, "{name}: documented failure policy");
        let conditions = webhook["matchConditions"].as_array().expect("matchConditions");
        assert!(conditions.iter().any(|c| c["name"] == "skip-breakglass"), "{name}");
        let is_cluster_scoped = webhook["rules"][0]["scope"] == "Cluster";
        if is_cluster_scoped {
            assert!(
                webhook.get("namespaceSelector").is_none(),
                "{name}: a namespaceSelector never excludes cluster-scoped objects"
            );
        } else {
            let expression = &webhook["namespaceSelector"]["matchExpressions"][0];
            assert_eq!(expression["key"], "kubernetes.io/metadata.name", "{name}");
            assert_eq!(expression["operator"], "NotIn", "{name}");
            let excluded = strings(&expression["values"]);
            for namespace in ["kube-system", "kube-node-lease", "tokengate-system"] {
                assert!(excluded.contains(&namespace.to_string()), "{name} excludes {namespace}");
            }
        }
    }
}

#[test]
fn the_deployment_is_highly_available_and_restricted() {
    let deployment = objects("manifests/base/deployment.yaml").remove(0);
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().expect("replicas") >= 2);
    let pod = &spec["template"]["spec"];
    assert!(pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(container["resources"]["limits"].get("cpu").is_none(), "no CPU limit");
    assert!(container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().expect("preStop sleep") > 0);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert!(strings(&container["args"]).contains(&"--manage-webhooks".to_string()), "replicas apply the webhooks");
    let pdb = objects("manifests/base/poddisruptionbudget.yaml").remove(0);
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
}

#[test]
fn rbac_is_read_only_except_events() {
    for object in objects("manifests/base/rbac.yaml") {
        for rule in object["rules"].as_array().into_iter().flatten() {
            let verbs = strings(&rule["verbs"]);
            let resources = strings(&rule["resources"]);
            if resources == ["events"] {
                assert_eq!(verbs, ["create", "patch"], "events record why a policy was refused");
            } else if rule["apiGroups"][0] == "admissionregistration.k8s.io" {
                // serve --manage-webhooks: server-side apply of its own two objects only.
                assert_eq!(verbs, ["get", "create", "patch"], "{resources:?}");
                assert_eq!(strings(&rule["resourceNames"]), ["tokengate"], "only its own configurations");
            } else {
                assert_eq!(verbs, ["get", "list", "watch"], "{resources:?} are only read");
            }
            assert!(!resources.iter().any(|r| r.contains("token") || r == "secrets" || r == "*"), "{resources:?}");
        }
    }
}

#[test]
fn the_installed_policy_is_the_example_policy_and_valid() {
    let installed = std::fs::read_to_string(root().join("manifests/base/policy.yaml")).expect("policy");
    let example = std::fs::read_to_string(root().join("examples/policy.yaml")).expect("policy");
    assert_eq!(installed, example, "manifests/base/policy.yaml is a copy of examples/policy.yaml");
    tokengate::policy::Policy::parse(&installed).expect("valid");
}
