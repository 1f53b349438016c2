//! Hostile clients over real TLS: requests that arrive slowly or never finish, bodies beyond the
//! byte budget, and many maximum-size bodies against the real binary's memory ceiling.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use support::{client, client_for, eventually, write_secret_volume, KillOnDrop, Pki, TempDir, TestServer, SERVER_NAME};
use tokengate::cluster::ObjectStore;
use tokengate::manifest;
use tokengate::metrics::Metrics;
use tokengate::server::tls::CertificateFiles;
use tokengate::server::{self, ServerConfig, MAX_BODY_BYTES};
use tokengate::source::{self, PolicyPublisher};

fn objects() -> ObjectStore {
    let mut store = ObjectStore::default();
    for document in manifest::load_file(&fixture_path("objects.yaml")).expect("objects") {
        store.insert(&document.object).expect("decodes");
    }
    store
}

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn review_body() -> Vec<u8> {
    std::fs::read(fixture_path("reviews/pod-captured-1.21.json")).expect("fixture")
}

/// Starts an in-process server with the test policy, configured by `configure`.
async fn start(pki: &Pki, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = TempDir::new("attack");
    write_secret_volume(&dir.0, 1, &pki.server(&[SERVER_NAME]));
    let policy_path = dir.write("policy.yaml", include_str!("fixtures/policy.yaml"));
    let metrics = Arc::new(Metrics::new());
    let (publisher, policy) = PolicyPublisher::new(metrics.clone());
    tokio::spawn(source::watch_file(policy_path, Duration::from_millis(100), publisher));
    let mut config = ServerConfig::new(CertificateFiles { cert: dir.path("tls.crt"), key: dir.path("tls.key") });
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    config.log_reviews = false;
    configure(&mut config);
    let running =
        server::start(config, policy.clone(), Arc::new(objects()), metrics.clone()).await.expect("server starts");
    let mut loaded = policy.clone();
    let ready = tokio::time::timeout(Duration::from_secs(5), loaded.wait_for(Option::is_some)).await;
    assert!(matches!(ready, Ok(Ok(_))), "the policy loads");
    TestServer { running, metrics, policy, dir }
}

/// A raw TLS connection to the webhook port, offering HTTP/1.1.
async fn connect(ca_pem: &str, addr: std::net::SocketAddr) -> TlsStream<tokio::net::TcpStream> {
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from(SERVER_NAME).expect("name"), tcp).await.expect("handshake")
}

fn request_head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 response: its status and body (a Content-Length body).
async fn read_response(tls: &mut TlsStream<tokio::net::TcpStream>) -> (u16, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tls.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed before a response");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    while buffer.len() < head_end + length {
        let n = tls.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed inside a response");
        buffer.extend_from_slice(&chunk[..n]);
    }
    (status, buffer[head_end..head_end + length].to_vec())
}

/// Completes when the server closes `tls` (end of stream or reset), returning when.
async fn closed_by_server(mut tls: TlsStream<tokio::net::TcpStream>) -> Instant {
    let mut chunk = [0u8; 1024];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

fn rejections(metrics: &str, reason: &str) -> u64 {
    let prefix = format!(r#"tokengate_http_rejections_total{{reason="{reason}"}} "#);
    metrics.lines().find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn slow_bodies_and_slow_headers_do_not_starve_reviews() {
    let pki = Pki::new("slow-ca");
    let read_timeout = Duration::from_secs(2);
    let server = start(&pki, |config| {
        config.max_in_flight = 4;
        config.read_timeout = read_timeout;
    })
    .await;
    let (ca, addr) = (pki.ca_pem(), server.running.addr);
    // 64 requests that declare a large body and send one byte of it, and 16 whose headers never
    // end: twenty times more than the decision permits.
    let mut slow = Vec::new();
    let first_byte = Instant::now();
    for i in 0..80 {
        let mut tls = connect(&ca, addr).await;
        let partial = if i < 64 {
            format!("{}{{", request_head("/validate", 1_000_000))
        } else {
            format!("POST /validate HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: appl")
        };
        tls.write_all(partial.as_bytes()).await.expect("write");
        tls.flush().await.expect("flush");
        slow.push(tls);
    }
    let last_byte = Instant::now();
    let client = client(&ca, &server, None);
    let body = review_body();
    for i in 0..20 {
        let started = Instant::now();
        let sent = client.post(server.url("/validate")).header("Content-Type", "application/json").body(body.clone());
        let response = tokio::time::timeout(Duration::from_secs(1), sent.send())
            .await
            .expect("answered within 1 s")
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "review {i}");
        let json: Value = response.json().await.expect("JSON");
        assert_eq!(json["response"]["allowed"], Value::Bool(true), "review {i}");
        assert!(started.elapsed() < Duration::from_secs(1), "review {i} took {:?}", started.elapsed());
    }
    assert!(last_byte.elapsed() < read_timeout, "the reviews ran while the slow requests were open");
    // The slow requests are cut off once the read timeout has passed since their first byte.
    let closed = futures::future::join_all(slow.into_iter().map(closed_by_server));
    let closed = tokio::time::timeout(read_timeout + Duration::from_secs(3), closed).await.expect("all closed");
    let (earliest, latest) = (closed.iter().min().expect("some"), closed.iter().max().expect("some"));
    assert!(*earliest >= first_byte + read_timeout - Duration::from_millis(100), "none before the timeout");
    assert!(*latest <= last_byte + read_timeout + Duration::from_millis(1500), "all soon after it");
    let metrics = server.metrics.encode();
    assert_eq!(rejections(&metrics, "read_timeout"), 80, "{metrics}");
    assert_eq!(rejections(&metrics, "overloaded"), 0, "{metrics}");
}

#[tokio::test]
async fn keep_alive_connections_outlive_the_read_timeout_between_requests() {
    let pki = Pki::new("idle-ca");
    let server = start(&pki, |config| config.read_timeout = Duration::from_millis(500)).await;
    let mut tls = connect(&pki.ca_pem(), server.running.addr).await;
    let body = review_body();
    for round in 0..2 {
        tls.write_all(request_head("/validate", body.len()).as_bytes()).await.expect("write");
        tls.write_all(&body).await.expect("write");
        let (status, answer) = read_response(&mut tls).await;
        assert_eq!(status, 200, "round {round}: {}", String::from_utf8_lossy(&answer));
        // Idle between requests for three read timeouts: the connection stays open.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(rejections(&server.metrics.encode(), "read_timeout"), 0);
}

#[tokio::test]
async fn a_request_sent_slowly_but_whole_within_the_timeout_is_answered() {
    let pki = Pki::new("trickle-ca");
    let server = start(&pki, |config| config.read_timeout = Duration::from_secs(2)).await;
    let mut tls = connect(&pki.ca_pem(), server.running.addr).await;
    let body = review_body();
    let mut request = request_head("/validate", body.len()).into_bytes();
    request.extend_from_slice(&body);
    for piece in request.chunks(request.len() / 8 + 1) {
        tls.write_all(piece).await.expect("write");
        tls.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = read_response(&mut tls).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bodies_beyond_the_byte_budget_are_refused_at_once_and_counted() {
    let pki = Pki::new("budget-ca");
    let budget = 16 * 1024 * 1024;
    let server = start(&pki, |config| {
        config.body_budget = budget;
        config.read_timeout = Duration::from_secs(2);
    })
    .await;
    let (ca, addr) = (pki.ca_pem(), server.running.addr);
    // Two 6 MiB bodies sent all but their last byte hold 12 of the 16 MiB.
    let length = 6 * 1024 * 1024;
    let filler = vec![b' '; length - 1];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = connect(&ca, addr).await;
        tls.write_all(request_head("/validate", length).as_bytes()).await.expect("write");
        tls.write_all(&filler).await.expect("write");
        tls.flush().await.expect("flush");
        held.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third one does not fit: refused with 503 as soon as it outgrows what is left.
    let mut third = connect(&ca, addr).await;
    let started = Instant::now();
    third.write_all(request_head("/validate", length).as_bytes()).await.expect("write");
    let _ = third.write_all(&filler).await;
    let (status, message) =
        tokio::time::timeout(Duration::from_secs(1), read_response(&mut third)).await.expect("fast");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&message));
    assert!(started.elapsed() < Duration::from_secs(1));
    // An ordinary review still fits in what is left.
    let client = client(&ca, &server, None);
    let response = client
        .post(server.url("/validate"))
        .header("Content-Type", "application/json")
        .body(review_body())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    // Once the held bodies are cut off by the read timeout, the budget is whole again: a body
    // just under the largest size is read and answered.
    for tls in held {
        closed_by_server(tls).await;
    }
    let mut review: Value = serde_json::from_slice(&review_body()).expect("JSON");
    review["request"]["object"]["metadata"]["annotations"]["padding"] =
        Value::String("x".repeat(MAX_BODY_BYTES - 8192));
    let response = client
        .post(server.url("/validate"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&review).expect("JSON"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = server.metrics.encode();
    assert_eq!(rejections(&metrics, "body_budget"), 1, "{metrics}");
    assert_eq!(rejections(&metrics, "read_timeout"), 2, "{metrics}");
}

#[tokio::test]
async fn the_webhook_port_answers_liveness_over_tls() {
    let pki = Pki::new("livez-ca");
    let server = start(&pki, |_| {}).await;
    let response = client(&pki.ca_pem(), &server, None).get(server.url("/livez")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("text"), "ok\n");
}

/// A review of the largest size whose Pod has one projected volume with as many empty sources
/// as fit: the body that costs the most memory to decode, per byte, of those measured.
fn many_sources_body() -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&review_body()).expect("JSON");
    let base = serde_json::to_vec(&review).expect("JSON").len();
    let room = MAX_BODY_BYTES - base - 1024;
    let sources = vec![Value::Object(serde_json::Map::new()); room / 3];
    let volume = serde_json::json!({"name": "many", "projected": {"sources": sources}});
    review["request"]["object"]["spec"]["volumes"].as_array_mut().expect("volumes").push(volume);
    let body = serde_json::to_vec(&review).expect("JSON");
    assert!(body.len() <= MAX_BODY_BYTES && body.len() > MAX_BODY_BYTES - 8192, "{}", body.len());
    body
}

/// A review of the largest size padded with one long annotation.
fn long_annotation_body() -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&review_body()).expect("JSON");
    let base = serde_json::to_vec(&review).expect("JSON").len();
    review["request"]["object"]["metadata"]["annotations"]["padding"] =
        Value::String("x".repeat(MAX_BODY_BYTES - base - 1024));
    serde_json::to_vec(&review).expect("JSON")
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .expect(name)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// What one body costs to review, in multiples of its size, for the worst body of each kind
/// measured (README.md, "Memory ceiling"): many empty projected sources (decoding), and token
/// sources that each add a violation to the denial message (encoding the answer).
const DECODE_FACTOR_SOURCES: u64 = 22;
const DECODE_FACTOR_WORST: u64 = 34;
/// Bytes of bodies decoded at once: one of the largest size plus the small-body pool (MiB).
const DECODING_MIB: u64 = 8;
/// What the allocator holds beyond what is in use (freed memory kept in per-thread arenas) and
/// what connections hold: a share of the variable part, plus a fixed amount (MiB).
const ALLOCATOR_SLACK: f64 = 1.2;
const FIXED_SLACK_MIB: u64 = 32;
/// The default `--body-budget`, in MiB.
const BUDGET_MIB: u64 = 28;
/// Idle RSS of the release binary, and what watch caches add in a cluster of 10 000 pods and
/// service accounts (README.md, "Performance").
const BASE_MIB: u64 = 15;
const CACHES_MIB: u64 = 42;

/// The memory ceiling above an idle process, in MiB, for bodies costing `factor` times their size.
fn ceiling_above_base_mib(budget_mib: u64, factor: u64) -> u64 {
    ((budget_mib + (factor - 1) * DECODING_MIB) as f64 * ALLOCATOR_SLACK).ceil() as u64 + FIXED_SLACK_MIB
}

fn mebibytes(quantity: &str) -> u64 {
    quantity.strip_suffix("Mi").and_then(|n| n.parse().ok()).expect("a memory quantity in Mi")
}

#[test]
fn the_deployment_reserves_the_memory_ceiling_and_probes_the_webhook_listener() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/deployment.yaml");
    let deployment: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read")).expect("YAML");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let resources = &container["resources"];
    let (request, limit) = (&resources["requests"]["memory"], &resources["limits"]["memory"]);
    assert_eq!(request, limit, "memory request = limit: the scheduler reserves what the process may use");
    let ceiling = BASE_MIB + CACHES_MIB + ceiling_above_base_mib(BUDGET_MIB, DECODE_FACTOR_WORST);
    let limit = mebibytes(limit.as_str().expect("a quantity"));
    assert!(limit >= ceiling, "the limit ({limit} Mi) holds the ceiling ({ceiling} Mi)");
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(!args.iter().any(|a| a.starts_with("--body-budget")), "the ceiling assumes the default budget");
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/livez");
    assert_eq!(liveness["port"], "https", "the webhook listener itself");
    assert_eq!(liveness["scheme"], "HTTPS");
}

#[tokio::test]
async fn many_maximum_size_bodies_keep_the_binary_under_its_memory_ceiling() {
    let pki = Pki::new("rss-ca");
    let dir = TempDir::new("rss");
    let issued = pki.server(&[SERVER_NAME]);
    let (port, admin_port) = (free_port(), free_port());
    let budget_mib = BUDGET_MIB;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("serve")
        .arg("--policy")
        .arg(dir.write("policy.yaml", include_str!("fixtures/policy.yaml")))
        .arg("--tls-cert")
        .arg(dir.write("tls.crt", &issued.cert_pem))
        .arg("--tls-key")
        .arg(dir.write("tls.key", &issued.key_pem))
        .arg("--objects")
        .arg(fixture_path("objects.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args(["--body-budget", &format!("{budget_mib}Mi"), "--log", "warn"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tokengate starts");
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = eventually(Duration::from_secs(10), async || {
        reqwest::get(&readyz).await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(ready, "ready");
    let client = client_for(&pki.ca_pem(), port);
    let url = format!("https://{SERVER_NAME}:{port}/validate");
    // Warm up (one ordinary review), then take the base.
    let warm = client.post(&url).header("Content-Type", "application/json").body(review_body()).send().await;
    assert_eq!(warm.expect("sent").status(), StatusCode::OK);
    let (_, base_kib) = memory_kib(pid);

    let bodies = [many_sources_body(), long_annotation_body()];
    let (mut answered, mut refused) = (0, 0);
    for round in 0..3 {
        let body = &bodies[round % 2];
        let sent = (0..48).map(|_| {
            let request = client.post(&url).header("Content-Type", "application/json").body(body.clone());
            async move {
                let started = Instant::now();
                let status = request.send().await.map(|r| r.status());
                (status, started.elapsed())
            }
        });
        for (status, elapsed) in futures::future::join_all(sent).await {
            match status {
                Ok(StatusCode::OK) => answered += 1,
                Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                    refused += 1;
                    // Uploading 48 bodies of 7 MiB at once takes seconds on a small machine; the
                    // refusal itself never queues (see the byte budget test for its speed).
                    assert!(elapsed < Duration::from_secs(10), "refused without queueing: {elapsed:?}");
                }
                // A refused body's connection is closed while the client may still be sending.
                Err(err) if !err.is_timeout() => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let (peak_kib, rss_kib) = memory_kib(pid);
    let mib = |kib: u64| kib as f64 / 1024.0;
    // These bodies cost at most 22 times their size (the worst, 34, takes seconds per body to
    // review in a debug build: benches/attack/run.sh sends it to the release binary).
    let ceiling_kib = base_kib + ceiling_above_base_mib(budget_mib, DECODE_FACTOR_SOURCES) * 1024;
    println!(
        "base {:.1} MiB, peak (VmHWM) {:.1} MiB, after {:.1} MiB, ceiling {:.1} MiB; {answered} answered, {refused} refused",
        mib(base_kib),
        mib(peak_kib),
        mib(rss_kib),
        mib(ceiling_kib)
    );
    assert!(answered >= 3, "some maximum-size bodies are reviewed: {answered}");
    assert!(refused > 0, "the rest are refused");
    assert!(peak_kib < ceiling_kib, "peak {peak_kib} KiB over the ceiling {ceiling_kib} KiB");
    // Ordinary reviews are still answered.
    let after = client.post(&url).header("Content-Type", "application/json").body(review_body()).send().await;
    assert_eq!(after.expect("sent").status(), StatusCode::OK);
}

/// A free loopback port (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
