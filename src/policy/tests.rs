//! Tests of policy parsing, validation and the allow-list.

use super::*;

const BASE: &str = r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
spec:
  apiServerAudiences: [https://kubernetes.default.svc.cluster.local]
  expiration: {maxSeconds: 86400}
  audiences:
    - audience: vault
      namespaces: ["team-*"]
      maxExpirationSeconds: 7200
    - audience: vault
      namespaces: ["ops"]
      serviceAccounts: ["deployer"]
    - audience: sts.amazonaws.com
    - audience: ""
      namespaces: [cert-manager]
"#;

fn policy(text: &str) -> Policy {
    Policy::parse(text).unwrap_or_else(|e| panic!("policy should be valid: {e}"))
}

fn problems(text: &str) -> Vec<Problem> {
    match Policy::parse(text) {
        Ok(_) => panic!("policy should be invalid"),
        Err(err) => err.problems(),
    }
}

fn token<'a>(audience: &'a str, namespace: &'a str, service_account: &'a str, seconds: u64) -> Token<'a> {
    Token { audience, namespace, service_account, lifetime: Lifetime::as_requested(seconds) }
}

fn with_spec(extra: &str) -> String {
    format!("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n{extra}")
}

#[test]
fn minimal_policy_has_defaults() {
    let p = policy("apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {}\n");
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(p.min_seconds(), 600);
    assert_eq!(p.max_seconds(), 1 << 32);
    assert!(p.node_restriction().enabled);
    assert!(p.injections().is_empty());
}

#[test]
fn json_policies_parse_too() {
    let p = policy(r#"{"apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy", "spec": {"mode": "Warn"}}"#);
    assert_eq!(p.mode(), Mode::Warn);
}

#[test]
fn allow_list_decides_by_audience_namespace_and_service_account() {
    let p = policy(BASE);
    let cases = [
        ("vault", "team-a", "web", 3600, Ok(())),
        ("vault", "team-a", "web", 7201, Err("TooLong 7200")),
        ("vault", "ops", "deployer", 86400, Ok(())),
        ("vault", "ops", "web", 3600, Err("NotAllowed")),
        ("vault", "prod", "web", 3600, Err("NotAllowed")),
        ("sts.amazonaws.com", "anything", "any", 86400, Ok(())),
        ("sts.amazonaws.com", "anything", "any", 86401, Err("TooLong 86400")),
        ("sts.amazonaws.com", "anything", "any", 599, Err("TooShort")),
        ("", "cert-manager", "x", 3600, Ok(())),
        ("", "team-a", "x", 3600, Err("NotAllowed")),
    ];
    for (audience, ns, sa, seconds, expected) in cases {
        let got = p.check_token(&token(audience, ns, sa, seconds)).map_err(|e| match e {
            TokenDenial::NotAllowed { .. } => "NotAllowed".to_string(),
            TokenDenial::TooShort { .. } => "TooShort".to_string(),
            TokenDenial::TooLong { max } => format!("TooLong {max}"),
        });
        assert_eq!(got, expected.map_err(str::to_string), "{audience} {ns}/{sa} {seconds}");
    }
}

#[test]
fn api_server_audiences_mean_the_empty_audience() {
    let p = policy(BASE);
    assert_eq!(p.normalize(Some("https://kubernetes.default.svc.cluster.local")), "");
    assert_eq!(p.normalize(None), "");
    assert_eq!(p.normalize(Some("vault")), "vault");
}

#[test]
fn denial_message_says_what_would_be_allowed() {
    let p = policy(BASE);
    let denial = p.check_token(&token("gcp", "team-a", "web", 3600)).expect_err("denied");
    let message = denial.explain(&token("gcp", "team-a", "web", 3600));
    assert_eq!(
        message,
        r#"audience "gcp" is not allowed for service account team-a/web (allowed there: "vault", "sts.amazonaws.com")"#
    );
    let denial = p.check_token(&token("", "team-a", "web", 3600)).expect_err("denied");
    assert!(denial
        .explain(&token("", "team-a", "web", 3600))
        .starts_with(r#"audience "" (the API server audience) is not allowed"#));
}

#[test]
fn unknown_fields_are_reported_with_their_path() {
    let cases = [
        (with_spec("  audiences:\n    - audience: vault\n      namespace: [a]\n"), "spec.audiences[0]", "namespace"),
        (with_spec("  injections:\n    - name: x\n      volume: {name: v, audience: a, extra: 1}\n      mount: {mountPath: /x}\n"), "spec.injections[0].volume", "extra"),
        (with_spec("  moed: Warn\n"), "spec", "moed"),
        (with_spec("  mode: Block\n"), "spec.mode", "Block"),
        (with_spec("  expiration: {minSeconds: -1}\n"), "spec.expiration.minSeconds", "-1"),
    ];
    for (text, path, word) in cases {
        let found = problems(&text);
        assert!(!found.is_empty(), "{found:?}");
        assert!(found[0].path.starts_with(path), "path {:?} should start with {path}", found[0].path);
        assert!(found[0].message.contains(word), "{:?} should mention {word}", found[0].message);
    }
}

#[test]
fn typos_type_errors_and_value_problems_are_reported_together_with_their_lines() {
    let text = "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec:\n  moed: Warn\n  expiration: {minSeconds: ten, maxSeconds: 100}\n  audiences:\n    - audience: vault\n      namespace: [a]\n      maxExpirationSeconds: 7200\n    - audience: x\n      serviceAcounts: [b]\n  csiDrivers: [{name: a}, {name: a, audiences: [v], requireRepublsh: true}]\n";
    let found = problems(text);
    let at = |path: &str| {
        let problem = found.iter().find(|p| p.path == path).unwrap_or_else(|| panic!("{path} in {found:#?}"));
        problem.position.map(|p| (p.line, p.column))
    };
    assert_eq!(at("spec.moed"), Some((4, 3)));
    assert_eq!(at("spec.expiration.minSeconds"), Some((5, 16)), "a type error, at its line in the YAML");
    assert_eq!(at("spec.audiences[0].namespace"), Some((8, 7)));
    assert_eq!(at("spec.audiences[1].serviceAcounts"), Some((11, 7)));
    assert_eq!(at("spec.csiDrivers[1].requireRepublsh"), Some((12, 53)));
    assert!(found.iter().any(|p| p.path == "spec.csiDrivers[1].name"), "value problems too: {found:#?}");
    assert!(found.iter().any(|p| p.path == "spec.expiration.maxSeconds"), "{found:#?}");
}

#[test]
fn a_field_written_without_a_value_counts_as_absent() {
    let p = policy(&with_spec("  mode:\n  audiences:\n    - audience: vault\n      namespaces:\n"));
    assert_eq!(p.mode(), Mode::Enforce);
    assert!(p.check_token(&token("vault", "any", "sa", 3600)).is_ok());
}

#[test]
fn a_document_of_another_kind_is_named() {
    let kyverno = "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nspec:\n  rules: []\n";
    let found = problems(kyverno);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("this is a ClusterPolicy (kyverno.io/v1), not a TokenPolicy"), "{found:?}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let text = with_spec(
        r#"  expiration: {minSeconds: 300, maxSeconds: 5000000000}
  apiServerAudiences: [""]
  audiences:
    - audience: vault
      namespaces: ["[unclosed"]
      maxExpirationSeconds: 100
    - audience: sts.amazonaws.com
      namespaces: ["team-*"]
  csiDrivers:
    - name: secrets-store.csi.k8s.io
    - name: secrets-store.csi.k8s.io
  injections:
    - name: aws
      match: {podSelector: {matchExpressions: [{key: a, operator: Equals}]}}
      volume: {name: aws-token, audience: sts.amazonaws.com, expirationSeconds: 86400}
      mount: {mountPath: relative/path}
      env:
        - {name: A, value: x, valueFromServiceAccountAnnotation: y}
        - {name: B}
    - name: aws
      volume: {name: aws-token, audience: sts.amazonaws.com}
      mount: {mountPath: relative/path}
"#,
    );
    let found: Vec<String> = problems(&text).iter().map(|p| p.path.clone()).collect();
    let expected = [
        "spec.apiServerAudiences[0]",
        "spec.expiration.minSeconds",
        "spec.expiration.maxSeconds",
        "spec.audiences[0].maxExpirationSeconds",
        "spec.audiences[0].namespaces[0]",
        "spec.csiDrivers[1].name",
        "spec.injections[0].mount.mountPath",
        "spec.injections[0].match.podSelector.matchExpressions[0]",
        "spec.injections[0].volume.audience",
        "spec.injections[0].env[0]",
        "spec.injections[0].env[1]",
        "spec.injections[1].name",
        "spec.injections[1].volume.name",
        "spec.injections[1].mount.mountPath",
    ];
    for path in expected {
        assert!(found.iter().any(|p| p == path), "missing a problem at {path}; found {found:#?}");
    }
}

#[test]
fn injection_audience_must_be_allowed_where_it_applies() {
    let injection = |namespaces: &str, seconds: u64| {
        with_spec(&format!(
            r#"  audiences:
    - audience: sts.amazonaws.com
      namespaces: ["team-*"]
      maxExpirationSeconds: 3600
  injections:
    - name: aws
      match: {{namespaces: {namespaces}}}
      volume: {{name: aws-token, audience: sts.amazonaws.com, expirationSeconds: {seconds}}}
      mount: {{mountPath: /var/run/aws}}
"#
        ))
    };
    assert!(Policy::parse(&injection(r#"["team-*"]"#, 3600)).is_ok());
    assert!(Policy::parse(&injection(r#"["team-a", "team-b"]"#, 3600)).is_ok());
    let wider = problems(&injection(r#"["*"]"#, 3600));
    assert_eq!(wider[0].path, "spec.injections[0].volume.audience");
    assert!(wider[0].message.contains("add an audiences entry"), "{}", wider[0].message);
    assert!(Policy::parse(&injection(r#"["team-*"]"#, 7200)).is_err(), "longer than the entry allows");
}

#[test]
fn exemptions_match_namespaces_users_and_groups() {
    let p = policy(&with_spec("  exemptions: {namespaces: [kube-system], users: [admin], groups: [breakglass]}\n"));
    assert!(p.is_exempt(Some("kube-system"), "u", &[]));
    assert!(p.is_exempt(None, "admin", &[]));
    assert!(p.is_exempt(Some("team-a"), "u", &["breakglass".to_string()]));
    assert!(!p.is_exempt(Some("team-a"), "u", &["system:authenticated".to_string()]));
    assert!(!p.is_exempt(None, "u", &[]));
}

#[test]
fn node_extra_audiences_are_per_namespace() {
    let p = policy(&with_spec(
        "  nodeRestriction:\n    extraAudiences:\n      - {audience: registry.example.com, namespaces: [\"team-*\"]}\n",
    ));
    assert!(p.node_restriction().is_extra_audience("registry.example.com", "team-a"));
    assert!(!p.node_restriction().is_extra_audience("registry.example.com", "prod"));
    assert!(!p.node_restriction().is_extra_audience("vault", "team-a"));
}

#[test]
fn denial_messages_name_a_few_allowed_audiences_however_long_the_list() {
    let mut text = with_spec("  audiences:\n");
    for i in 0..10_000 {
        text.push_str(&format!("    - {{audience: aud-{i}, namespaces: [\"team-*\"]}}\n"));
    }
    let p = policy(&text);
    let started = std::time::Instant::now();
    let TokenDenial::NotAllowed { allowed_here, more } =
        p.check_token(&token("vault", "team-a", "web", 3600)).expect_err("denied")
    else {
        panic!("not allowed");
    };
    assert!(started.elapsed() < std::time::Duration::from_millis(50), "bounded work");
    assert_eq!(allowed_here.len(), SHOWN_AUDIENCES);
    assert_eq!(allowed_here[0], "aud-0");
    assert!(more);
}

#[test]
fn many_entries_for_one_audience_still_decide_correctly() {
    let mut text = with_spec("  audiences:\n");
    for i in 0..2000 {
        text.push_str(&format!("    - {{audience: vault, namespaces: [\"ns-{i}\"], serviceAccounts: [\"sa-{i}\"]}}\n"));
    }
    let p = policy(&text);
    assert!(p.check_token(&token("vault", "ns-1234", "sa-1234", 3600)).is_ok());
    assert!(p.check_token(&token("vault", "ns-1234", "sa-1235", 3600)).is_err());
}
