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

#[test]
fn options_the_api_server_would_refuse_are_refused() {
    let url = |url: &str| Options::new(Endpoint::Url(url.to_string())).validate();
    assert_eq!(url("https://127.0.0.1:8443"), Ok(()));
    assert_eq!(url("https://tokengate.example.com/base"), Ok(()));
    for (bad, why) in [
        ("http://127.0.0.1:8443", "'https' is the only allowed URL scheme"),
        ("https://user@host", "user information is not permitted in the URL"),
        ("https:///path", "host must be specified"),
        ("https://host/path?q=1", "query parameters are not permitted in the URL"),
        ("https://host/#top", "fragments are not permitted in the URL"),
    ] {
        assert_eq!(url(bad), Err(OptionsError::Url { url: bad.to_string(), why }), "{bad}");
    }
    let service = |text: &str| Options::new(Endpoint::Service(text.parse().expect("parses"))).validate();
    assert_eq!(service("tokengate-system/tokengate"), Ok(()));
    assert!(matches!(service("Tokengate/x"), Err(OptionsError::Service(_))));
    assert!(matches!(service("ns/web_hook"), Err(OptionsError::Service(_))));
    let named =
        |name: &str| Options { name: name.to_string(), ..Options::new(Endpoint::Url("https://h".into())) }.validate();
    assert_eq!(named("tokengate.example.com"), Ok(()));
    assert_eq!(named("Bad_Name"), Err(OptionsError::Name("Bad_Name".to_string())));
    assert!("a/b:99999".parse::<ServiceRef>().is_err(), "a port above 65535");
}
