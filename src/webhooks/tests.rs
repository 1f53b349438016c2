//! Unit tests of the configurations' shape; the conditions are evaluated in tests/webhooks.rs.

use super::*;

const POLICY: &str = r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  audiences:
    - audience: sts.amazonaws.com
  injections:
    - name: aws
      match: {serviceAccountAnnotation: eks.amazonaws.com/role-arn}
      volume: {name: aws-iam-token, audience: sts.amazonaws.com, expirationSeconds: 86400}
      mount: {mountPath: /var/run/secrets/eks.amazonaws.com/serviceaccount}
"#;

fn service() -> Endpoint {
    Endpoint::Service("tokengate-system/tokengate".parse().expect("service"))
}

#[test]
fn service_references_parse_with_an_optional_port() {
    let parsed: ServiceRef = "ns/svc:8443".parse().expect("valid");
    assert_eq!(parsed, ServiceRef { namespace: "ns".into(), name: "svc".into(), port: 8443 });
    assert_eq!("ns/svc".parse::<ServiceRef>().expect("valid").port, 443);
    for bad in ["svc", "/svc", "ns/", "ns/svc:0", "ns/svc:x", "a/b/c"] {
        assert!(bad.parse::<ServiceRef>().is_err(), "{bad}");
    }
}

#[test]
fn every_webhook_keeps_the_properties_of_the_shipped_configuration() {
    let policy = Policy::parse(POLICY).expect("policy");
    let configurations = configurations(&policy, &Options::new(service()));
    let all: Vec<&Webhook> =
        configurations.mutating.webhooks.iter().chain(configurations.validating.webhooks.iter()).collect();
    let names: Vec<&str> = all.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            names::PODS_MUTATE,
            names::PODS_VALIDATE,
            names::TOKEN_REQUESTS,
            names::CSI_DRIVERS,
            names::WORKLOADS,
            names::SECRETS
        ]
    );
    for webhook in &all {
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.admission_review_versions, ["v1"]);
        assert!(webhook.timeout_seconds <= 3);
        assert_eq!(webhook.match_conditions[0].name, conditions::names::BREAKGLASS);
        let service = webhook.client_config.service.as_ref().expect("a service");
        assert_eq!(
            (service.namespace.as_str(), service.name.as_str(), service.port),
            ("tokengate-system", "tokengate", 443)
        );
        assert!(webhook.client_config.ca_bundle.is_none(), "caBundle is left to cert-manager");
        let excluded = webhook.namespace_selector.as_ref().map(|s| s["matchExpressions"][0]["values"].clone());
        match webhook.name.as_str() {
            names::CSI_DRIVERS => assert!(excluded.is_none(), "cluster-scoped"),
            _ => assert_eq!(excluded, Some(serde_json::json!(["tokengate-system"])), "only its own namespace"),
        }
        let expected = if webhook.name == names::WORKLOADS { FailurePolicy::Ignore } else { FailurePolicy::Fail };
        assert_eq!(webhook.failure_policy, expected, "{}", webhook.name);
    }
    assert_eq!(configurations.mutating.webhooks[0].reinvocation_policy.as_deref(), Some("IfNeeded"));
}

#[test]
fn urls_get_the_endpoint_paths_and_a_ca_bundle_when_given() {
    let policy = Policy::parse(POLICY).expect("policy");
    let options = Options {
        ca_bundle: Some("Q0E=".into()),
        annotations: [("cert-manager.io/inject-ca-from".to_string(), "ns/cert".to_string())].into(),
        ..Options::new(Endpoint::Url("https://127.0.0.1:8443/".into()))
    };
    let configurations = configurations(&policy, &options);
    let mutate = &configurations.mutating.webhooks[0].client_config;
    assert_eq!(mutate.url.as_deref(), Some("https://127.0.0.1:8443/mutate"));
    assert_eq!(mutate.ca_bundle.as_deref(), Some("Q0E="));
    let validate = &configurations.validating.webhooks[0].client_config;
    assert_eq!(validate.url.as_deref(), Some("https://127.0.0.1:8443/validate"));
    assert_eq!(configurations.validating.metadata.annotations["cert-manager.io/inject-ca-from"], "ns/cert");
}

#[test]
fn the_output_names_injections_matched_by_service_account_annotation() {
    let policy = Policy::parse(POLICY).expect("policy");
    let yaml = render_yaml(&policy, &configurations(&policy, &Options::new(service()))).expect("yaml");
    assert!(yaml.contains("NOTE: injection(s) \"aws\" match by a service-account annotation"), "{yaml}");
    let documents: Vec<WebhookConfiguration> =
        yaml.split("\n---\n").map(|doc| serde_yaml_ng::from_str(doc).expect("each document reads back")).collect();
    assert_eq!(documents.len(), 2);
}
