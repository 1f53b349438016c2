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

use support::{
    client, client_for, client_from, eventually, write_secret_volume, KillOnDrop, Pki, TempDir, TestServer, SERVER_NAME,
};
use tokengate::cluster::ObjectStore;
use tokengate::manifest;
use tokengate::metrics::Metrics;
use tokengate::server::tls::CertificateFiles;
use tokengate::server::{self, ServerConfig, MAX_BODY_BYTES};
use tokengate::source::{self, PolicyPublisher};

/// Held for writing while the optimised binary is built (minutes, the first time, on every core)
/// and for reading by each test that times something, so that no clock runs beside the build.
static BUILDING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
    let mut config = support::server_defaults(CertificateFiles { cert: dir.path("tls.crt"), key: dir.path("tls.key") });
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
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tls_over(ca_pem, tcp).await
}

/// A raw TLS connection from the loopback address `source` (Linux routes all of 127.0.0.0/8 to
/// `lo`), so that the server sees it come from another client.
async fn connect_from(
    ca_pem: &str,
    addr: std::net::SocketAddr,
    source: std::net::IpAddr,
) -> TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(std::net::SocketAddr::new(source, 0)).expect("bind a loopback source address");
    let tcp = socket.connect(addr).await.expect("connect");
    tls_over(ca_pem, tcp).await
}

async fn tls_over(ca_pem: &str, tcp: tokio::net::TcpStream) -> TlsStream<tokio::net::TcpStream> {
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from(SERVER_NAME).expect("name"), tcp).await.expect("handshake")
}

fn request_head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 response: its status and body (a Content-Length body).
async fn read_response(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, Vec<u8>) {
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

/// The reviews are not starved: every one is answered while all 80 slow requests are still held
/// (none yet cut off by the read timeout), an order of events rather than a latency, so a busy
/// machine cannot fail it; starved reviews would be answered only after the timeout cut the slow
/// ones off. The latencies are printed.
#[tokio::test]
async fn slow_bodies_and_slow_headers_do_not_starve_reviews() {
    let _no_build = BUILDING.read().await;
    let pki = Pki::new("slow-ca");
    let read_timeout = Duration::from_secs(4);
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
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let sent = client.post(server.url("/validate")).header("Content-Type", "application/json").body(body.clone());
        let response = sent.send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "review {i}");
        let json: Value = response.json().await.expect("JSON");
        assert_eq!(json["response"]["allowed"], Value::Bool(true), "review {i}");
        slowest = slowest.max(started.elapsed());
    }
    let reviews_done = last_byte.elapsed();
    let metrics = server.metrics.encode();
    assert_eq!(
        rejections(&metrics, "read_timeout"),
        0,
        "every review was answered while all the slow requests were held (slowest review {slowest:?})"
    );
    // The slow requests are cut off once the read timeout has passed since their first byte:
    // never before it (the server's first byte comes after `first_byte`), and all of them.
    let closed = futures::future::join_all(slow.into_iter().map(closed_by_server));
    let closed = tokio::time::timeout(read_timeout * 3, closed).await.expect("all closed");
    let (earliest, latest) = (closed.iter().min().expect("some"), closed.iter().max().expect("some"));
    println!(
        "80 slow requests opened in {:?}; 20 reviews in {reviews_done:?} after that, the slowest {slowest:?}; \
         closed {:?} to {:?} after the first was opened (read timeout {read_timeout:?})",
        last_byte - first_byte,
        *earliest - first_byte,
        *latest - first_byte
    );
    assert!(*earliest >= first_byte + read_timeout - Duration::from_millis(100), "none before the timeout");
    let metrics = server.metrics.encode();
    assert_eq!(rejections(&metrics, "read_timeout"), 80, "{metrics}");
    assert_eq!(rejections(&metrics, "overloaded"), 0, "{metrics}");
}

#[tokio::test]
async fn keep_alive_connections_outlive_the_read_timeout_between_requests() {
    let _no_build = BUILDING.read().await;
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
    let _no_build = BUILDING.read().await;
    let pki = Pki::new("trickle-ca");
    let read_timeout = Duration::from_secs(5);
    let server = start(&pki, |config| config.read_timeout = read_timeout).await;
    let mut tls = connect(&pki.ca_pem(), server.running.addr).await;
    let body = review_body();
    let mut request = request_head("/validate", body.len()).into_bytes();
    request.extend_from_slice(&body);
    let started = Instant::now();
    for piece in request.chunks(request.len() / 8 + 1) {
        tls.write_all(piece).await.expect("write");
        tls.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let trickled = started.elapsed();
    // The premise: the request took many reads spread over time, yet less than the timeout.
    assert!(
        trickled < read_timeout,
        "sending took {trickled:?}, longer than the read timeout: the machine is too busy"
    );
    let (status, _) = read_response(&mut tls).await;
    println!("sent in 9 pieces over {trickled:?} (read timeout {read_timeout:?})");
    assert_eq!(status, 200);
}

/// Waits until the server has read everything sent on the connections whose client ends are
/// `ports`: nothing left unacknowledged by the client sockets, nothing unread in the server
/// sockets' receive queues (`/proc/net/tcp`). An event to wait for, not a guessed delay.
async fn server_read_everything(ports: &[u16]) -> bool {
    let queued = || {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
                let (local, remote) = (port(fields.get(1)?)?, port(fields.get(2)?)?);
                let (tx, rx) = fields.get(4)?.split_once(':')?;
                let (tx, rx) = (u64::from_str_radix(tx, 16).ok()?, u64::from_str_radix(rx, 16).ok()?);
                // Client end: what it has not had acknowledged; server end: what it has not read.
                (ports.contains(&local) || ports.contains(&remote)).then_some(if ports.contains(&local) {
                    tx
                } else {
                    rx
                })
            })
            .sum::<u64>()
    };
    eventually(Duration::from_secs(30), async || queued() == 0).await
}

#[tokio::test]
async fn bodies_beyond_the_byte_budget_are_refused_at_once_and_counted() {
    let _no_build = BUILDING.read().await;
    let pki = Pki::new("budget-ca");
    let budget = 16 * 1024 * 1024;
    let read_timeout = Duration::from_secs(4);
    let server = start(&pki, |config| {
        config.body_budget = budget;
        config.read_timeout = read_timeout;
    })
    .await;
    let (ca, addr) = (pki.ca_pem(), server.running.addr);
    // Two 6 MiB bodies sent all but their last byte hold 12 of the 16 MiB once the server has
    // read them: all that large bodies may take, the other 4 MiB being kept for small ones.
    let length = 6 * 1024 * 1024;
    let filler = vec![b' '; length - 1];
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let mut tls = connect(&ca, addr).await;
        ports.push(tls.get_ref().0.local_addr().expect("local address").port());
        tls.write_all(request_head("/validate", length).as_bytes()).await.expect("write");
        tls.write_all(&filler).await.expect("write");
        tls.flush().await.expect("flush");
        held.push(tls);
    }
    assert!(server_read_everything(&ports).await, "the server reads the held bodies");
    // A third one does not fit: refused with 503 as soon as it outgrows what is left, long before
    // the read timeout cuts anything off (an order of events, whatever the machine's speed).
    let mut third = connect(&ca, addr).await;
    let started = Instant::now();
    third.write_all(request_head("/validate", length).as_bytes()).await.expect("write");
    let _ = third.write_all(&filler).await;
    let (status, message) = read_response(&mut third).await;
    let refused_after = started.elapsed();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&message));
    assert_eq!(
        rejections(&server.metrics.encode(), "read_timeout"),
        0,
        "refused while the held bodies were still waiting, not after the read timeout ({refused_after:?})"
    );
    println!("the third body refused after {refused_after:?} (read timeout {:?})", read_timeout);
    // An ordinary review still fits in the share kept for small bodies.
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

/// The status of the response the server sends on `reader`, or `None` when it closes the
/// connection (or resets it) without one.
async fn response_status(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(2).any(|w| w == b"\r\n") {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buffer).split(' ').nth(1)?.parse().ok()
}

/// What became of a body sent whole but for its last byte.
enum Stalled {
    /// The server read all of it and waits for the rest: the connection (both halves) is held.
    Held(Vec<tokio::task::JoinHandle<()>>),
    /// The server answered at once with this status.
    Refused(u16),
}

/// Opens a connection from `source`, declares a body of `length` bytes and sends all of it but
/// the last byte; waits until the server has either answered or read everything sent.
async fn stall_a_body(ca: &str, addr: std::net::SocketAddr, source: std::net::IpAddr, length: usize) -> Stalled {
    let tls = connect_from(ca, addr, source).await;
    let port = tls.get_ref().0.local_addr().expect("local address").port();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let writing = tokio::spawn(async move {
        let mut request = request_head("/validate", length).into_bytes();
        request.resize(request.len() + length - 1, b' ');
        let sent = writer.write_all(&request).await.and(writer.flush().await);
        // Keep this half open for as long as the test holds the connection.
        let _ = held_rx.await;
        drop((sent, writer));
    });
    let mut answer = tokio::spawn(async move {
        let status = response_status(&mut reader).await;
        (status, reader)
    });
    let read_whole = async {
        assert!(server_read_everything(&[port]).await, "the server reads the body or answers");
    };
    tokio::select! {
        biased;
        answered = &mut answer => return Stalled::Refused(answered.expect("reader").0.expect("a response")),
        () = read_whole => {}
    }
    // An answer may arrive just as the connection's queues empty (the server closes it after
    // answering): give it a moment before calling the body held.
    if let Ok(answered) = tokio::time::timeout(Duration::from_millis(300), &mut answer).await {
        if let (Some(status), _) = answered.expect("reader") {
            return Stalled::Refused(status);
        }
        panic!("the server closed the connection of a held body without answering");
    }
    let keep = tokio::spawn(async move {
        let _ = answer.await;
        drop(held_tx);
    });
    Stalled::Held(vec![writing, keep])
}

/// One client (one IP address) cannot take the body budget, and large bodies, from any number of
/// clients, cannot take the share kept for small ones: while one client holds as many bodies
/// just under 7 MiB, sent all but their last byte, as it may (its further ones refused as
/// `peer_budget`) and another holds what is left of the budget for large bodies (its next one
/// refused as `body_budget`), every ordinary review from a third client is answered 200. An
/// order of events, not a latency: every review is answered while all the held bodies are still
/// held (none yet cut off by the read timeout). Before the budget kept a share for small bodies
/// and per client, the held bodies took all of it and each review was refused with 503.
#[tokio::test]
async fn stalled_large_bodies_from_one_client_do_not_starve_reviews_from_another() {
    let _no_build = BUILDING.read().await;
    let pki = Pki::new("stall-ca");
    // Long enough that a busy machine finishes the reviews before it cuts the held bodies off.
    let read_timeout = Duration::from_secs(30);
    let server = start(&pki, |config| config.read_timeout = read_timeout).await;
    let (ca, addr) = (pki.ca_pem(), server.running.addr);
    let (attacker, other_attacker, reviewer) =
        ([127, 0, 0, 1].into(), [127, 0, 0, 3].into(), std::net::IpAddr::from([127, 0, 0, 2]));
    let length = MAX_BODY_BYTES - 1;
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for (client, count) in [(attacker, 5), (other_attacker, 2)] {
        for _ in 0..count {
            match stall_a_body(&ca, addr, client, length).await {
                Stalled::Held(handles) => held.push((client, handles)),
                Stalled::Refused(status) => refused.push((client, status)),
            }
        }
    }
    let stalled_in = started.elapsed();
    let held_by = |client| held.iter().filter(|(c, _)| *c == client).count();
    println!(
        "bodies of {length} bytes held: {} from {attacker}, {} from {other_attacker}; refused: {refused:?} ({stalled_in:?})",
        held_by(attacker),
        held_by(other_attacker)
    );
    let mut latencies = Vec::new();
    for i in 0..20 {
        let body = review_body();
        let sent = Instant::now();
        let mut tls = connect_from(&ca, addr, reviewer).await;
        tls.write_all(request_head("/validate", body.len()).as_bytes()).await.expect("write");
        tls.write_all(&body).await.expect("write");
        let (status, answer) = read_response(&mut tls).await;
        latencies.push(sent.elapsed());
        assert_eq!(status, 200, "review {i} from {reviewer}: {}", String::from_utf8_lossy(&answer));
        let json: Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(json["response"]["allowed"], Value::Bool(true), "review {i}");
    }
    let metrics = server.metrics.encode();
    latencies.sort();
    println!(
        "20 reviews from {reviewer} while the bodies were held: median {:?}, slowest {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(
        rejections(&metrics, "read_timeout"),
        0,
        "every review was answered while the bodies were held, not after the read timeout"
    );
    assert_eq!(held_by(attacker), 2, "one client holds two bodies of the largest size, no more");
    assert_eq!(held_by(other_attacker), 1, "another holds what is left for large bodies");
    let refused_by = |client| refused.iter().filter(|(c, _)| *c == client).map(|(_, s)| *s).collect::<Vec<_>>();
    assert_eq!(refused_by(attacker), [429, 429, 429], "beyond its share: 429");
    assert_eq!(refused_by(other_attacker), [503], "beyond what is left for large bodies: 503");
    assert_eq!(rejections(&metrics, "peer_budget"), 3, "{metrics}");
    assert_eq!(rejections(&metrics, "body_budget"), 1, "{metrics}");
    drop(held);
}

#[tokio::test]
async fn the_webhook_port_answers_liveness_over_tls() {
    let pki = Pki::new("livez-ca");
    let server = start(&pki, |_| {}).await;
    let response = client(&pki.ca_pem(), &server, None).get(server.url("/livez")).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("text"), "ok\n");
}

/// The ways of filling a review to just under the largest size: the four that
/// `benches/attack/run.sh` also sends, one long annotation (how real objects get large), many
/// labels, many empty projected sources (once the costliest to decode), and many token sources
/// with an audience the policy forbids (one violation each: the largest denial); and many
/// containers and many empty groups of the requesting user, the costliest per byte now.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Annotation,
    Labels,
    Sources,
    Violations,
    Containers,
    Groups,
}

/// A review of the largest size filled with `shape`.
fn large_body(shape: Shape) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&review_body()).expect("JSON");
    let room = MAX_BODY_BYTES - serde_json::to_vec(&review).expect("JSON").len() - 4096;
    let object = &mut review["request"]["object"];
    let volumes =
        |object: &mut Value, volume: Value| object["spec"]["volumes"].as_array_mut().expect("volumes").push(volume);
    match shape {
        Shape::Annotation => object["metadata"]["annotations"]["padding"] = Value::String("x".repeat(room)),
        Shape::Labels => {
            let labels = (0..room / 14).map(|i| (format!("k{i:07}"), Value::String(String::new()))).collect();
            object["metadata"]["labels"] = Value::Object(labels);
        }
        Shape::Sources => {
            let sources = vec![Value::Object(serde_json::Map::new()); room / 3];
            volumes(object, serde_json::json!({"name": "many", "projected": {"sources": sources}}));
        }
        Shape::Violations => {
            let source = serde_json::json!({"serviceAccountToken": {"audience": "x", "path": "t"}});
            let sources = vec![source; room / 52];
            volumes(object, serde_json::json!({"name": "many", "projected": {"sources": sources}}));
        }
        Shape::Groups => {
            review["request"]["userInfo"]["groups"] = Value::Array(vec![Value::String(String::new()); room / 3]);
        }
        Shape::Containers => {
            let containers = object["spec"]["containers"].as_array_mut().expect("containers");
            containers.extend((0..room / 20).map(|i| serde_json::json!({"name": format!("c{i:07}")})));
        }
    }
    let body = serde_json::to_vec(&review).expect("JSON");
    assert!(body.len() <= MAX_BODY_BYTES && body.len() > MAX_BODY_BYTES - 8192, "{shape:?}: {}", body.len());
    body
}

fn mebibytes(quantity: &str) -> u64 {
    quantity.strip_suffix("Mi").and_then(|n| n.parse().ok()).expect("a memory quantity in Mi")
}

fn deployment_container() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/deployment.yaml");
    let deployment: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read")).expect("YAML");
    deployment["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The Deployment's memory limit, in MiB.
fn deployment_memory_limit_mib() -> u64 {
    mebibytes(deployment_container()["resources"]["limits"]["memory"].as_str().expect("a memory limit"))
}

#[test]
fn the_deployment_reserves_what_it_may_use_and_probes_the_webhook_listener() {
    let container = deployment_container();
    let resources = &container["resources"];
    let (request, limit) = (&resources["requests"]["memory"], &resources["limits"]["memory"]);
    assert_eq!(request, limit, "memory request = limit: the scheduler reserves what the process may use");
    assert!(
        deployment_memory_limit_mib() <= 128,
        "a replica watching 10 000 pods fits in 128 MiB whatever bodies it is sent (docs/performance.md, Memory ceiling)"
    );
    // The limit itself is held against a measured peak: the hostile-bodies test below.
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(
        !args.iter().any(|a| a.starts_with("--body-budget") || a.starts_with("--max-in-flight")),
        "the memory test runs the defaults the Deployment runs"
    );
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"], "/livez");
    assert_eq!(liveness["port"], "https", "the webhook listener itself");
    assert_eq!(liveness["scheme"], "HTTPS");
}

/// The Deployment's memory limit holds what a replica was measured to use, in one run: the
/// optimised binary, run with the Deployment's defaults, watching a fake API server of 10 000
/// pods and 10 000 service accounts, receives a round of 48 concurrent maximum-size bodies (from
/// four client addresses, so that the shares per client do not hide the whole budget) of each
/// shape; its peak resident memory (`VmHWM`) must stay under the limit read from
/// `manifests/base/deployment.yaml`.
#[tokio::test]
async fn hostile_bodies_with_the_caches_of_a_large_cluster_stay_under_the_deployments_memory_limit() {
    // The build (minutes, the first time) happens before anything is measured, and while no
    // other test of this file runs a clock.
    let server = {
        let _building = BUILDING.write().await;
        tokio::task::spawn_blocking(support::optimised_server).await.expect("build task")
    };
    let limit_mib = deployment_memory_limit_mib();
    let api = support::fake_apiserver::FakeApiServer::start().await;
    support::cluster_of(&api, 10_000);
    api.apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tokengate-policy", "namespace": "tokengate-system"},
        "data": {"policy.yaml": include_str!("fixtures/policy.yaml")}}));
    let pki = Pki::new("rss-ca");
    let dir = TempDir::new("rss");
    let issued = pki.server(&[SERVER_NAME]);
    let (port, admin_port) = (free_port(), free_port());
    let child = std::process::Command::new(&server)
        .args(["serve", "--policy-configmap", "tokengate-system/tokengate-policy", "--log", "warn"])
        .arg("--tls-cert")
        .arg(dir.write("tls.crt", &issued.cert_pem))
        .arg("--tls-key")
        .arg(dir.write("tls.key", &issued.key_pem))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .env("KUBECONFIG", dir.write("kubeconfig", api.kubeconfig()))
        // Two runtime threads, as on a two-CPU node, whatever machine runs the test (unless set).
        .env("TOKIO_WORKER_THREADS", std::env::var("TOKIO_WORKER_THREADS").unwrap_or_else(|_| "2".into()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tokengate starts");
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = eventually(Duration::from_secs(120), async || {
        reqwest::get(&readyz).await.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(ready, "ready once the policy loaded and the caches synced");
    let client = client_for(&pki.ca_pem(), port);
    let url = format!("https://{SERVER_NAME}:{port}/validate");
    let warm = client.post(&url).header("Content-Type", "application/json").body(review_body()).send().await;
    assert_eq!(warm.expect("sent").status(), StatusCode::OK);
    let clients: Vec<_> = (1..=4).map(|last| client_from(&pki.ca_pem(), port, [127, 0, 0, last].into())).collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let cached_kib = support::memory_kib(pid, "VmRSS");
    println!("with the caches synced: RSS {:.1} MiB", mib(cached_kib));

    let shapes =
        [Shape::Annotation, Shape::Labels, Shape::Sources, Shape::Violations, Shape::Containers, Shape::Groups];
    for shape in shapes {
        let body = large_body(shape);
        // From four clients: one client may hold only its share of the budget, four hold all of it.
        let sent = (0..48).map(|i| {
            let client = &clients[i % clients.len()];
            client.post(&url).header("Content-Type", "application/json").body(body.clone()).send()
        });
        let (mut answered, mut refused) = (0, 0);
        for result in futures::future::join_all(sent).await {
            match result.map(|r| r.status()) {
                Ok(StatusCode::OK) => answered += 1,
                Ok(StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) => refused += 1,
                // A refused body's connection is closed while the client may still be sending.
                Err(err) if !err.is_timeout() => refused += 1,
                other => panic!("{shape:?}: unexpected {other:?}"),
            }
        }
        println!(
            "{shape:?}: 48 bodies of {:.2} MiB, {answered} reviewed, {refused} refused; peak so far {:.1} MiB",
            body.len() as f64 / (1024.0 * 1024.0),
            mib(support::memory_kib(pid, "VmHWM"))
        );
        assert!(refused > 0, "{shape:?}: the byte budget refuses most of 48 bodies at once");
        if !matches!(shape, Shape::Violations) {
            // Violations bodies make answers of several MiB, which the budget may refuse too.
            assert!(answered > 0, "{shape:?}: some maximum-size bodies are reviewed");
        }
    }
    let peak_kib = support::memory_kib(pid, "VmHWM");
    println!(
        "peak (VmHWM) {:.1} MiB, now {:.1} MiB, of which mapped files (RssFile) {:.1} MiB; the Deployment's limit {limit_mib} MiB",
        mib(peak_kib),
        mib(support::memory_kib(pid, "VmRSS")),
        mib(support::memory_kib(pid, "RssFile")),
    );
    assert!(
        peak_kib < limit_mib * 1024,
        "peak {:.1} MiB over the Deployment's limit of {limit_mib} MiB",
        mib(peak_kib)
    );
    // Ordinary reviews are still answered.
    let after = client.post(&url).header("Content-Type", "application/json").body(review_body()).send().await;
    assert_eq!(after.expect("sent").status(), StatusCode::OK);
}

/// A free loopback port (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
