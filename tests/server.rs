//! The HTTPS server in-process over real TLS, with a real HTTPS client that verifies the
//! server name `tokengate.tokengate-system.svc`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{client, eventually, start, write_secret_volume, Options, Pki, SERVER_NAME};
use tokengate::cluster::{
    ClaimInfo, Cluster, CsiDriverInfo, Lookup, ObjectStore, PodInfo, ServiceAccountInfo, VolumeInfo,
};
use tokengate::manifest;
use tokengate::policy::Policy;
use tokengate::review::{review, Reply, Webhook};

fn objects() -> ObjectStore {
    let mut store = ObjectStore::default();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects.yaml");
    for document in manifest::load_file(&path).expect("objects") {
        store.insert(&document.object).expect("decodes");
    }
    store
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/reviews/{name}.json"));
    std::fs::read(path).expect("fixture")
}

async fn post(client: &reqwest::Client, url: String, body: Vec<u8>) -> reqwest::Response {
    client.post(url).header("Content-Type", "application/json").body(body).send().await.expect("request succeeds")
}

#[tokio::test]
async fn answers_exactly_what_review_answers_for_every_request_kind() {
    let pki = Pki::new("round-trip-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let client = client(&pki.ca_pem(), &server, None);
    let policy = Policy::parse(include_str!("fixtures/policy.yaml")).expect("valid");
    let cluster = objects();
    let cases = [
        ("pod-captured-1.21", Webhook::Validate, true),
        ("pod-forbidden-audience", Webhook::Validate, false),
        ("pod-irsa-mutate", Webhook::Mutate, true),
        ("pod-irsa-collision", Webhook::Mutate, false),
        ("deployment-denied", Webhook::Validate, false),
        ("csidriver-captured-1.21", Webhook::Validate, true),
        ("csidriver-unlisted", Webhook::Validate, false),
        ("tokenrequest-node-pvc", Webhook::Validate, true),
        ("tokenrequest-user-forbidden", Webhook::Validate, false),
        ("configmap-create", Webhook::Validate, true),
    ];
    for (name, webhook, allowed) in cases {
        let body = fixture(name);
        let Reply::Review { body: expected, .. } = review(&body, webhook, &policy, &cluster).await else {
            panic!("{name} decodes");
        };
        let path = match webhook {
            Webhook::Validate => "/validate?timeout=10s",
            Webhook::Mutate => "/mutate?timeout=10s",
        };
        let response = post(&client, server.url(path), body).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.version(), reqwest::Version::HTTP_11, "{name}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let bytes = response.bytes().await.expect("body");
        assert_eq!(bytes.as_ref(), expected.as_slice(), "{name}: same answer as `tokengate review`");
        let json: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(json["response"]["allowed"], Value::Bool(allowed), "{name}");
    }
    let metrics = reqwest::get(server.admin_url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains(r#"tokengate_admission_reviews_total{webhook="validate",kind="Pod",decision="denied"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tokengate_admission_reviews_total{webhook="mutate",kind="Pod",decision="patched"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("tokengate_admission_review_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("tokengate_certificate_expiry_timestamp_seconds "), "{metrics}");
    assert!(metrics.contains("tokengate_build_info"), "{metrics}");
}

/// A raw TLS handshake offering `alpn`; returns the negotiated protocol and the server's leaf.
async fn handshake(
    server: &support::TestServer,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (Option<Vec<u8>>, CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.running.addr).await.expect("connect");
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let session = tls.get_ref().1;
    let leaf = session.peer_certificates().expect("server certificate")[0].clone().into_owned();
    (session.alpn_protocol().map(<[u8]>::to_vec), leaf)
}

#[tokio::test]
async fn offers_http1_only_by_default() {
    let pki = Pki::new("alpn-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let (alpn, _) = handshake(&server, &pki.ca_pem(), &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn refuses_oversized_bodies_and_wrong_content_types() {
    let pki = Pki::new("limits-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let client = client(&pki.ca_pem(), &server, None);
    let big = vec![b' '; 8 * 1024 * 1024];
    let response = post(&client, server.url("/validate"), big).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let wrong = client
        .post(server.url("/validate"))
        .header("Content-Type", "text/plain")
        .body(fixture("pod-captured-1.21"))
        .send()
        .await;
    assert_eq!(wrong.expect("response").status(), StatusCode::BAD_REQUEST);
    let missing = client.post(server.url("/validate")).body(fixture("pod-captured-1.21")).send().await;
    assert_eq!(missing.expect("response").status(), StatusCode::BAD_REQUEST);
    // A body just under the limit is read and answered.
    let mut review: Value = serde_json::from_slice(&fixture("pod-captured-1.21")).expect("JSON");
    review["request"]["object"]["metadata"]["annotations"]["padding"] = Value::String("x".repeat(6 * 1024 * 1024));
    let response = post(&client, server.url("/validate"), serde_json::to_vec(&review).expect("JSON")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = reqwest::get(server.admin_url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains(r#"tokengate_http_rejections_total{reason="body_too_large"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"tokengate_http_rejections_total{reason="content_type"} 2"#), "{metrics}");
}

#[tokio::test]
async fn malformed_bodies_get_clear_answers_and_the_server_keeps_serving() {
    let pki = Pki::new("malformed-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let client = client(&pki.ca_pem(), &server, None);
    let good = fixture("pod-captured-1.21");
    let truncated = good[..good.len() / 2].to_vec();
    let deep = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"deep","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","namespace":"team-a","object":{{"spec":{}{}}}}}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let bodies: Vec<(Vec<u8>, StatusCode)> = vec![
        (Vec::new(), StatusCode::BAD_REQUEST),
        (b"{\"apiVersion\":".to_vec(), StatusCode::BAD_REQUEST),
        (truncated, StatusCode::BAD_REQUEST),
        (vec![0xff, 0xfe, 0xfd], StatusCode::BAD_REQUEST),
        (
            b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{}}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (deep.into_bytes(), StatusCode::OK),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"old"}}"#.to_vec(),
            StatusCode::OK,
        ),
    ];
    for (body, status) in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let response = post(&client, server.url("/validate"), body).await;
        assert_eq!(response.status(), status, "{shown}");
        let text = response.text().await.expect("body");
        assert!(!text.trim().is_empty(), "{shown}: a message explains the refusal");
        if status == StatusCode::OK {
            let json: Value = serde_json::from_str(&text).expect("an AdmissionReview");
            assert_eq!(json["response"]["allowed"], Value::Bool(false), "{shown}");
            assert_eq!(json["response"]["status"]["code"], 400, "{shown}");
        }
        let next = post(&client, server.url("/validate"), good.clone()).await;
        assert_eq!(next.status(), StatusCode::OK, "the next request after {shown} is served");
    }
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let pki = Pki::new("server-ca");
    let api_servers = Pki::new("apiserver-client-ca");
    let strangers = Pki::new("other-ca");
    let options = Options { client_ca: Some(api_servers.ca_pem()), ..Options::default() };
    let server = start(&pki, objects(), options).await;
    let body = fixture("pod-captured-1.21");
    let without = client(&pki.ca_pem(), &server, None);
    let sent = without
        .post(server.url("/validate"))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await;
    assert!(sent.is_err(), "no client certificate: refused");
    let stranger = client(&pki.ca_pem(), &server, Some(&strangers.client("kube-apiserver")));
    let sent = stranger
        .post(server.url("/validate"))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await;
    assert!(sent.is_err(), "a certificate from another CA: refused");
    let apiserver = client(&pki.ca_pem(), &server, Some(&api_servers.client("kube-apiserver")));
    assert_eq!(post(&apiserver, server.url("/validate"), body).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn rotates_certificates_by_symlink_swap_without_failing_requests() {
    let pki = Pki::new("rotation-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let (_, first_leaf) = handshake(&server, &pki.ca_pem(), &[b"http/1.1"]).await;
    let client = client(&pki.ca_pem(), &server, None);
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, failures, sent, stop) =
            (client.clone(), server.url("/validate"), failures.clone(), sent.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let body = fixture("pod-captured-1.21");
            while !stop.is_cancelled() {
                let ok = client
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = pki.server(&[SERVER_NAME]);
    write_secret_volume(&server.dir.0, 2, &renewed);
    let renewed_der = rustls::pki_types::pem::PemObject::from_pem_slice(renewed.cert_pem.as_bytes())
        .map(|c: CertificateDer| c.into_owned())
        .expect("pem");
    let served = eventually(Duration::from_secs(5), async || {
        handshake(&server, &pki.ca_pem(), &[b"http/1.1"]).await.1 == renewed_der
    })
    .await;
    assert!(served, "new handshakes use the new certificate within a few seconds");
    // A corrupt (half-written) update is ignored: the renewed certificate keeps serving.
    write_secret_volume(
        &server.dir.0,
        3,
        &support::Issued { cert_pem: renewed.cert_pem[..100].to_string(), key_pem: renewed.key_pem.clone() },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handshake(&server, &pki.ca_pem(), &[b"http/1.1"]).await.1, renewed_der);
    assert_ne!(first_leaf, renewed_der);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    for task in load {
        task.await.expect("load task");
    }
    assert!(sent.load(Ordering::SeqCst) > 20, "requests kept flowing");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no request failed during rotation");
    let metrics = server.metrics.encode();
    assert!(metrics.contains(r#"tokengate_certificate_reloads_total{result="error"}"#), "{metrics}");
}

#[tokio::test]
async fn bad_certificates_stop_start_up_with_a_clear_error() {
    let pki = Pki::new("startup-ca");
    let dir = support::TempDir::new("bad-cert");
    let issued = pki.server(&[SERVER_NAME]);
    let other = pki.server(&[SERVER_NAME]);
    let cases = [
        ("missing", None, None, "cannot read"),
        ("garbage", Some("not a certificate".to_string()), Some(issued.key_pem.clone()), "holds no certificate"),
        ("mismatched key", Some(issued.cert_pem.clone()), Some(other.key_pem.clone()), "does not match"),
        ("no key", Some(issued.cert_pem.clone()), Some("nothing".to_string()), "private key"),
    ];
    for (label, cert, key, expected) in cases {
        let cert_path = dir.path(&format!("{label}.crt"));
        let key_path = dir.path(&format!("{label}.key"));
        if let (Some(cert), Some(key)) = (cert, key) {
            std::fs::write(&cert_path, cert).expect("write");
            std::fs::write(&key_path, key).expect("write");
        }
        let mut config =
            support::server_defaults(tokengate::server::tls::CertificateFiles { cert: cert_path, key: key_path });
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.admin_listen = "127.0.0.1:0".parse().expect("addr");
        let (_publisher, policy) =
            tokengate::source::PolicyPublisher::new(Arc::new(tokengate::metrics::Metrics::new()));
        let err = tokengate::server::start(
            config,
            policy,
            Arc::new(ObjectStore::default()),
            Arc::new(tokengate::metrics::Metrics::new()),
        )
        .await
        .expect_err(label);
        assert!(err.to_string().contains(expected), "{label}: {err}");
    }
}

#[tokio::test]
async fn readiness_follows_the_policy_and_shutdown() {
    let pki = Pki::new("ready-ca");
    let server = start(&pki, objects(), Options { policy: None, ..Options::default() }).await;
    let ready = async || reqwest::get(server.admin_url("/readyz")).await.expect("admin").status();
    assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE, "no policy yet");
    assert_eq!(reqwest::get(server.admin_url("/livez")).await.expect("admin").status(), StatusCode::OK);
    let client = client(&pki.ca_pem(), &server, None);
    let early = post(&client, server.url("/validate"), fixture("pod-captured-1.21")).await;
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE, "no policy: the failurePolicy decides");
    server.dir.write("policy.yaml", include_str!("fixtures/policy.yaml"));
    assert!(eventually(Duration::from_secs(3), async || ready().await == StatusCode::OK).await, "ready once loaded");
    server.running.shutdown();
    assert!(eventually(Duration::from_secs(1), async || ready().await == StatusCode::SERVICE_UNAVAILABLE).await);
    assert_eq!(reqwest::get(server.admin_url("/livez")).await.expect("admin").status(), StatusCode::OK, "still live");
}

#[tokio::test]
async fn policy_file_updates_keep_the_last_good_policy() {
    let pki = Pki::new("policy-ca");
    let server = start(&pki, objects(), Options::default()).await;
    let client = client(&pki.ca_pem(), &server, None);
    let decide = async || -> Value {
        let response = post(&client, server.url("/validate"), fixture("pod-forbidden-audience")).await;
        response.json().await.expect("JSON")
    };
    assert_eq!(decide().await["response"]["allowed"], Value::Bool(false));
    server.dir.write("policy.yaml", "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nspec: {mode: Sometimes}\n");
    let counted = eventually(Duration::from_secs(3), async || {
        server.metrics.encode().contains(r#"tokengate_policy_reloads_total{result="error"} 1"#)
    })
    .await;
    assert!(counted, "the bad update is counted");
    assert_eq!(decide().await["response"]["allowed"], Value::Bool(false), "the last good policy is kept");
    assert!(server.policy.borrow().is_some());
    let warn = include_str!("fixtures/policy.yaml").replace("mode: Enforce", "mode: Warn");
    server.dir.write("policy.yaml", warn);
    let applied =
        eventually(Duration::from_secs(3), async || decide().await["response"]["allowed"] == Value::Bool(true)).await;
    assert!(applied, "a valid update is applied");
    assert!(server.metrics.encode().contains("tokengate_policy_generation 2"));
}

/// A cluster whose service-account lookups are slow, to keep a request in flight.
struct SlowCluster {
    inner: ObjectStore,
    delay: Duration,
}

impl Cluster for SlowCluster {
    async fn service_account(&self, namespace: &str, name: &str) -> Lookup<ServiceAccountInfo> {
        tokio::time::sleep(self.delay).await;
        self.inner.service_account(namespace, name).await
    }
    async fn csi_driver(&self, name: &str) -> Lookup<CsiDriverInfo> {
        self.inner.csi_driver(name).await
    }
    async fn pod(&self, namespace: &str, name: &str) -> Lookup<PodInfo> {
        self.inner.pod(namespace, name).await
    }
    async fn persistent_volume_claim(&self, namespace: &str, name: &str) -> Lookup<ClaimInfo> {
        self.inner.persistent_volume_claim(namespace, name).await
    }
    async fn persistent_volume(&self, name: &str) -> Lookup<VolumeInfo> {
        self.inner.persistent_volume(name).await
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_then_stops() {
    let pki = Pki::new("shutdown-ca");
    let slow = SlowCluster { inner: objects(), delay: Duration::from_millis(1500) };
    let server = start(&pki, slow, Options { drain_delay: Duration::from_millis(300), ..Options::default() }).await;
    let client = client(&pki.ca_pem(), &server, None);
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/mutate"));
        async move { post(&client, url, fixture("pod-irsa-mutate")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.running.shutdown();
    let response = in_flight.await.expect("task");
    assert_eq!(response.status(), StatusCode::OK, "the slow request completes");
    let json: Value = response.json().await.expect("JSON");
    assert!(json["response"]["patch"].is_string(), "and carries its patch");
    let addr = server.running.addr;
    tokio::time::timeout(Duration::from_secs(5), server.running.wait()).await.expect("stops within the grace period");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer listening");
}

#[tokio::test]
async fn overload_fails_fast_instead_of_queueing() {
    let pki = Pki::new("overload-ca");
    let slow = SlowCluster { inner: objects(), delay: Duration::from_millis(800) };
    let server = start(&pki, slow, Options { max_in_flight: 2, ..Options::default() }).await;
    let client = client(&pki.ca_pem(), &server, None);
    // 8 slow requests against 2 permits: the excess is refused at once with 503.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), server.url("/mutate"));
        tasks.push(tokio::spawn(async move { post(&client, url, fixture("pod-irsa-mutate")).await.status() }));
    }
    let started = std::time::Instant::now();
    let (mut refused, mut served) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            StatusCode::OK => served += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0 && served >= 2, "{served} served, {refused} refused as overloaded");
    assert!(started.elapsed() < Duration::from_secs(3), "nothing queued behind the slow requests");
    assert!(server.metrics.encode().contains(r#"reason="overloaded""#));
}

/// A free loopback port (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test]
async fn the_binary_drains_and_exits_0_on_sigterm_and_1_on_bad_certificates() {
    let pki = Pki::new("binary-ca");
    let dir = support::TempDir::new("binary");
    let issued = pki.server(&[SERVER_NAME]);
    let cert = dir.write("tls.crt", &issued.cert_pem);
    let key = dir.write("tls.key", &issued.key_pem);
    let policy = dir.write("policy.yaml", include_str!("fixtures/policy.yaml"));
    let (port, admin_port) = (free_port(), free_port());
    let serve = |cert: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("serve")
            .arg("--policy")
            .arg(&policy)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(&key)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--drain-delay", "300ms", "--log-format", "json"])
            .arg("--objects")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objects.yaml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tokengate starts")
    };

    let bad = dir.write("bad.crt", "not a certificate");
    let output = serve(&bad).wait_with_output().expect("exits");
    assert_eq!(output.status.code(), Some(1), "a bad certificate stops start-up");
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds no certificate"));

    let mut child = serve(&cert);
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let status = async || reqwest::get(&readyz).await.map(|r| r.status()).ok();
    assert!(eventually(Duration::from_secs(10), async || status().await == Some(StatusCode::OK)).await, "ready");
    let sent = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    assert!(
        eventually(Duration::from_secs(2), async || status().await == Some(StatusCode::SERVICE_UNAVAILABLE)).await,
        "not ready from the moment SIGTERM arrives"
    );
    let exited = eventually(Duration::from_secs(10), async || child.try_wait().expect("wait").is_some()).await;
    assert!(exited, "exits within the grace period");
    assert_eq!(child.wait().expect("status").code(), Some(0));
}
