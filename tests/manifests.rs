//! The deployment manifests: webhook rules, selectors, timeouts and failure policies as the
//! reliability guidelines ask, the Pod's security posture, the shipped policy in step with the
//! example, and (rendered through `kubectl kustomize`) an install in another namespace, the
//! policy kept out of what an upgrade re-applies, and the optional components.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
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
            // Only tokengate's own namespace: every other namespace left out is one the policy
            // exempts, in matchConditions, so the cluster and `review` agree.
            assert_eq!(strings(&expression["values"]), ["tokengate-system"], "{name}");
            let pods = name.starts_with("pods.") || name.starts_with("workloads.");
            let pod_namespaces = conditions.iter().any(|c| c["name"] == "skip-exempt-pod-namespaces");
            assert_eq!(pod_namespaces, pods, "{name}: exemptions.podNamespaces apply to pods and workloads only");
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
    let readiness_failures = container["readinessProbe"]["failureThreshold"].as_u64().expect("failureThreshold");
    assert!(readiness_failures >= 3, "one missed readiness probe must not take a replica out");
    assert!(container.get("livenessProbe").is_some(), "a liveness probe");
    let startup = &container["startupProbe"];
    let startup_seconds =
        startup["periodSeconds"].as_u64().expect("period") * startup["failureThreshold"].as_u64().expect("threshold");
    assert!(startup_seconds >= 60, "a startup probe gives a slow start {startup_seconds} s");
    assert!(strings(&container["args"]).contains(&"--manage-webhooks".to_string()), "replicas apply the webhooks");
    let pdb = objects("manifests/base/poddisruptionbudget.yaml").remove(0);
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
}

#[test]
fn the_deployment_runs_the_crate_version_as_system_cluster_critical_with_its_quota() {
    let deployment = objects("manifests/base/deployment.yaml").remove(0);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], format!("tokengate:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    let quota = objects("manifests/base/priority.yaml").remove(0);
    assert_eq!(quota["kind"], "ResourceQuota");
    let scope = &quota["spec"]["scopeSelector"]["matchExpressions"][0];
    assert_eq!(scope["scopeName"], "PriorityClass");
    assert_eq!(scope["operator"], "In");
    assert!(strings(&scope["values"]).contains(&"system-cluster-critical".to_string()));
    let room: u64 = quota["spec"]["hard"]["pods"].as_str().expect("pods").parse().expect("a number");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    let surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"].as_u64().expect("maxSurge");
    assert!(room >= replicas + surge, "the quota leaves room for a rolling update");
}

#[test]
fn rbac_is_read_only_except_events() {
    for object in objects("manifests/base/rbac.yaml") {
        for rule in object["rules"].as_array().into_iter().flatten() {
            let verbs = strings(&rule["verbs"]);
            let resources = strings(&rule["resources"]);
            if resources == ["events"] {
                assert_eq!(verbs, ["create", "patch"], "events record why a policy was refused");
            } else if resources.iter().any(|r| r.ends_with("webhookconfigurations")) {
                // serve --manage-webhooks: server-side apply of its own two objects only.
                assert_eq!(verbs, ["get", "create", "patch"], "{resources:?}");
                assert_eq!(strings(&rule["resourceNames"]), ["tokengate"], "only its own configurations");
            } else if rule["apiGroups"][0] == "admissionregistration.k8s.io" {
                // serve --native-policies: its own native policies by name; list to find leftovers.
                if verbs == ["list"] {
                    assert!(rule.get("resourceNames").is_none(), "list cannot be restricted by name");
                } else {
                    assert_eq!(verbs, ["get", "create", "patch", "delete"], "{resources:?}");
                    assert!(!strings(&rule["resourceNames"]).is_empty(), "only its own native policies");
                }
            } else {
                assert_eq!(verbs, ["get", "list", "watch"], "{resources:?} are only read");
            }
            assert!(!resources.iter().any(|r| r.contains("token") || r == "secrets" || r == "*"), "{resources:?}");
        }
    }
}

/// Every native object `serve --native-policies` applies for the shipped policy (every subject
/// native, and the Azure injection as a MutatingAdmissionPolicy) may be applied and deleted by name, and every admission-policy kind it may have
/// applied may be listed: the RBAC grants exactly what the manage task needs.
#[test]
fn rbac_grants_the_native_policies_by_name() {
    let text = std::fs::read_to_string(root().join(SHIPPED_POLICY)).expect("policy");
    // With the IRSA injection narrowed to some namespaces, Azure's is added by a
    // MutatingAdmissionPolicy too: every kind tokengate writes.
    let annotation_match = "        serviceAccountAnnotation: eks.amazonaws.com/role-arn\n";
    assert!(text.contains(annotation_match), "the shipped IRSA injection matches by annotation");
    let text = text.replace(annotation_match, &format!("{annotation_match}        namespaces: [\"aws-*\"]\n"));
    let policy = tokengate::policy::Policy::parse(&text).expect("valid");
    let native = tokengate::webhooks::native::native(&policy, tokengate::webhooks::DEFAULT_CONFIGURATION_NAME);
    let rules: Vec<Value> = objects("manifests/base/rbac.yaml")
        .into_iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let grants = |verb: &str, plural: &str, name: Option<&str>| {
        rules.iter().any(|rule| {
            strings(&rule["verbs"]).iter().any(|v| v == verb)
                && strings(&rule["resources"]).iter().any(|r| r == plural)
                && match (name, rule.get("resourceNames")) {
                    (_, None) => true,
                    (Some(name), Some(names)) => strings(names).iter().any(|n| n == name),
                    (None, Some(_)) => false,
                }
        })
    };
    let plural = |kind: &str| {
        let lower = kind.to_ascii_lowercase();
        match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        }
    };
    let objects = native.objects();
    assert_eq!(objects.len(), 10, "every subject native, and a mutating policy");
    for object in objects {
        let (kind, name) = (object["kind"].as_str().expect("kind"), object["metadata"]["name"].as_str().expect("name"));
        for verb in ["get", "create", "patch", "delete"] {
            assert!(grants(verb, &plural(kind), Some(name)), "{verb} {kind} {name}");
        }
    }
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
    ] {
        assert!(grants("list", &plural(kind), None), "list {kind}");
    }
}

/// The policy created once at install time (never part of what an upgrade applies).
const SHIPPED_POLICY: &str = "manifests/policy/policy.yaml";

#[test]
fn the_shipped_policy_is_the_example_policy_in_warn_mode() {
    let shipped_text = std::fs::read_to_string(root().join(SHIPPED_POLICY)).expect("policy");
    let example_text = std::fs::read_to_string(root().join("examples/policy.yaml")).expect("policy");
    let shipped: Value = serde_yaml_ng::from_str(&shipped_text).expect("YAML");
    let mut example: Value = serde_yaml_ng::from_str(&example_text).expect("YAML");
    assert_eq!(shipped["spec"]["mode"], "Warn", "a first install denies nothing");
    example["spec"]["mode"] = Value::from("Warn");
    assert_eq!(shipped, example, "{SHIPPED_POLICY} is examples/policy.yaml except for its mode");
    tokengate::policy::Policy::parse(&shipped_text).expect("valid");
}

// ---------------------------------------------------------------------------------------------
// Rendered installs. kubectl (with its built-in kustomize) renders them as an admin's
// `kubectl apply -k` would; .ci/run installs it into target/ci-venv.

/// kubectl: $KUBECTL, else target/ci-venv/bin/kubectl, else the one on PATH; None when absent.
fn kubectl() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KUBECTL").map(PathBuf::from),
        Some(root().join("target/ci-venv/bin/kubectl")),
        Some(PathBuf::from("kubectl")),
    ];
    candidates.into_iter().flatten().find(|path| {
        Command::new(path).args(["version", "--client"]).output().map(|out| out.status.success()).unwrap_or(false)
    })
}

/// `kubectl kustomize DIR`, as objects; None (with a message) when kubectl is not installed,
/// except under CI (`CI=true`), where .ci/run has installed it and its absence is a failure.
fn render(dir: &str) -> Option<Vec<Value>> {
    let Some(kubectl) = kubectl() else {
        support::skip_or_fail(&format!("rendering {dir} needs kubectl (on PATH, in target/ci-venv/bin, or $KUBECTL)"));
        return None;
    };
    let output = Command::new(kubectl).arg("kustomize").arg(root().join(dir)).output().expect("run kubectl");
    assert!(output.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("rendered YAML"))
        .filter(|object| !object.is_null())
        .collect();
    assert!(!objects.is_empty(), "{dir} renders objects");
    Some(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

/// The container's env values and args: every place a namespace can hide in the Deployment.
fn container_settings(deployment: &Value) -> Vec<String> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut settings = strings(&container["args"]);
    for env in container["env"].as_array().into_iter().flatten() {
        if let Some(value) = env["value"].as_str() {
            settings.push(format!("{}={value}", env["name"].as_str().expect("env name")));
        }
    }
    settings
}

const OTHER_NAMESPACE_OVERLAY: &str = "tests/fixtures/overlays/other-namespace";

#[test]
fn an_install_in_another_namespace_is_consistent() {
    let Some(objects) = render(OTHER_NAMESPACE_OVERLAY) else { return };
    let namespace = "security";
    let left: Vec<String> = objects
        .iter()
        .filter(|o| serde_json::to_string(o).expect("JSON").contains("tokengate-system"))
        .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
        .collect();
    assert!(left.is_empty(), "the default namespace is left in {left:?}");

    find(&objects, "Namespace", namespace);
    for object in &objects {
        let kind = object["kind"].as_str().expect("kind");
        let cluster_scoped = [
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ];
        if !cluster_scoped.contains(&kind) {
            assert_eq!(object["metadata"]["namespace"], namespace, "{kind} {}", object["metadata"]["name"]);
        }
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], namespace, "{kind} binds the ServiceAccount in {namespace}");
        }
    }

    // The Service the API server calls, and the name the certificate must carry for it.
    let service = find(&objects, "Service", "tokengate");
    let host = format!("{}.{namespace}.svc", service["metadata"]["name"].as_str().expect("name"));
    let certificate = find(&objects, "Certificate", "tokengate-serving");
    assert!(strings(&certificate["spec"]["dnsNames"]).contains(&host), "the certificate names {host}");

    // The Deployment learns its namespace from the pod (downward API), so every NAMESPACE/NAME
    // it is given (policy ConfigMap, webhook Service, cainjector source) is $(POD_NAMESPACE)/...
    let deployment = find(&objects, "Deployment", "tokengate");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    let pod_namespace = env.iter().position(|e| e["name"] == "POD_NAMESPACE").expect("POD_NAMESPACE");
    assert_eq!(env[pod_namespace]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    // The kubelet expands $(VAR) in an env value only from variables defined before it.
    for (index, variable) in env.iter().enumerate() {
        if variable["value"].as_str().is_some_and(|v| v.contains("$(POD_NAMESPACE)")) {
            assert!(index > pod_namespace, "{} uses POD_NAMESPACE before it is defined", variable["name"]);
        }
    }
    let settings = container_settings(deployment);
    let policy = settings.iter().find_map(|s| s.strip_prefix("--policy-configmap=")).expect("--policy-configmap");
    let (policy_namespace, policy_name) = policy.split_once('/').expect("NAMESPACE/NAME");
    assert_eq!(policy_namespace, "$(POD_NAMESPACE)");
    assert_eq!(policy_name, "tokengate-policy", "the ConfigMap manifests/policy creates");
    let service_setting = settings.iter().find_map(|s| s.strip_prefix("TOKENGATE_WEBHOOK_SERVICE="));
    assert_eq!(service_setting, Some("$(POD_NAMESPACE)/tokengate"), "the webhooks call this install's Service");
    let injection = settings.iter().find_map(|s| s.strip_prefix("TOKENGATE_WEBHOOK_ANNOTATION="));
    assert_eq!(
        injection,
        Some("cert-manager.io/inject-ca-from=$(POD_NAMESPACE)/tokengate-serving"),
        "cainjector reads the CA of this install's Certificate"
    );

    // The policy ConfigMap is read with the Role in the same namespace.
    let role = find(&objects, "Role", "tokengate");
    assert!(role["rules"].as_array().expect("rules").iter().any(|r| strings(&r["resources"]) == ["configmaps"]));
    find(&objects, "RoleBinding", "tokengate");

    // Webhook configurations registered from manifests (when an overlay has them) call this
    // namespace's Service and skip this namespace.
    for config in objects.iter().filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("WebhookConfiguration"))) {
        for webhook in config["webhooks"].as_array().expect("webhooks") {
            let name = webhook["name"].as_str().expect("name");
            assert_eq!(webhook["clientConfig"]["service"]["namespace"], namespace, "{name}");
            if let Some(expressions) = webhook["namespaceSelector"]["matchExpressions"].as_array() {
                let excluded = strings(&expressions[0]["values"]);
                assert!(excluded.contains(&namespace.to_string()), "{name} skips {namespace}");
            }
        }
    }
}

#[test]
fn no_install_applies_the_policy_so_an_upgrade_never_rewrites_it() {
    for dir in ["manifests/base", "manifests/overlays/cert-manager", OTHER_NAMESPACE_OVERLAY] {
        let Some(objects) = render(dir) else { return };
        assert!(
            !objects.iter().any(|o| o["kind"] == "ConfigMap"),
            "{dir} holds a ConfigMap: every `kubectl apply -k` of a new version would overwrite it"
        );
    }
    let Some(policy) = render("manifests/policy") else { return };
    let kinds: Vec<&str> = policy.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap"]);
    let configmap = find(&policy, "ConfigMap", "tokengate-policy");
    assert_eq!(configmap["metadata"]["namespace"], "tokengate-system");
    let shipped = std::fs::read_to_string(root().join(SHIPPED_POLICY)).expect("policy");
    assert_eq!(configmap["data"]["policy.yaml"], shipped.as_str(), "the ConfigMap holds {SHIPPED_POLICY}");
}

#[test]
fn the_alerts_name_metrics_that_exist() {
    let Some(objects) = render(OTHER_NAMESPACE_OVERLAY) else { return };
    let metrics = tokengate::metrics::Metrics::new();
    metrics.rejected(tokengate::metrics::Rejection::Overloaded);
    metrics.policy_failed();
    metrics.certificate_failed();
    let exported = metrics.encode();
    let rule = find(&objects, "PrometheusRule", "tokengate");
    let mut alerts = Vec::new();
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for alert in group["rules"].as_array().expect("rules") {
            let name = alert["alert"].as_str().expect("alert").to_string();
            let expr = alert["expr"].as_str().expect("expr");
            for metric in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if metric.starts_with("tokengate_") {
                    assert!(exported.contains(&format!("\n{metric}")), "{name}: {metric} is not exported");
                }
            }
            for label in ["reason=\"overloaded\"", "result=\"error\""] {
                if expr.contains(label) {
                    assert!(exported.contains(label), "{name}: {label} is not a value tokengate exports");
                }
            }
            assert!(alert["annotations"]["summary"].is_string() && alert["annotations"]["description"].is_string());
            alerts.push(name);
        }
    }
    for wanted in [
        "TokengateDown",
        "TokengateWebhookCallsFailing",
        "TokengateWebhookSlow",
        "TokengatePolicyReloadFailing",
        "TokengateCertificateExpiresSoon",
        "TokengateOverloaded",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "alert {wanted}");
    }
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).expect("docs/operations.md");
    for alert in &alerts {
        assert!(operations.contains(&format!("`{alert}`")), "docs/operations.md explains {alert}");
    }
    let monitor = find(&objects, "PodMonitor", "tokengate");
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name", "alerts select job=\"tokengate\"");
}

#[test]
fn the_network_policy_admits_the_webhook_port_only_from_the_configured_source() {
    let shipped = objects("manifests/components/network-policy/networkpolicy.yaml").remove(0);
    let cidr = shipped["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"].as_str().expect("cidr");
    assert!(!cidr.contains('/'), "the placeholder {cidr} must be refused by the API server until it is set");
    let Some(objects) = render(OTHER_NAMESPACE_OVERLAY) else { return };
    let policy = find(&objects, "NetworkPolicy", "tokengate");
    let deployment = find(&objects, "Deployment", "tokengate");
    let ports: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["name"].as_str().expect("port name").to_string())
        .collect();
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let ingress = policy["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "the webhook port and the admin port, nothing else");
    for rule in ingress {
        let port = rule["ports"][0]["port"].as_str().expect("a named port");
        assert!(ports.contains(&port.to_string()), "{port} is a port of the container");
    }
    assert_eq!(ingress[0]["ports"][0]["port"], "https");
    assert_eq!(ingress[0]["from"][0]["ipBlock"]["cidr"], "10.0.0.10/32");
    assert_eq!(ingress[1]["ports"][0]["port"], "admin");
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "observability"
    );
}

#[test]
fn the_image_is_stripped_labelled_and_versioned_like_the_crate() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains(&format!("ARG VERSION={}\n", env!("CARGO_PKG_VERSION"))), "image version");
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"), "a stripped binary");
    for label in ["title", "description", "version", "revision", "licenses"] {
        assert!(dockerfile.contains(&format!("org.opencontainers.image.{label}=")), "OCI label {label}");
    }
}
