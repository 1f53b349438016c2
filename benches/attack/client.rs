//! The hostile client of `benches/attack/run.sh`: slow requests that never finish while a
//! well-behaved client sends reviews, or many maximum-size bodies while the server's memory is
//! read from `/proc/<pid>/status`. Prints what it saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The name the serving certificate carries.
const SERVER_NAME: &str = "tokengate.tokengate-system.svc";
/// The largest body the server reads.
const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

#[derive(Parser)]
struct Args {
    /// The webhook port.
    #[arg(long, default_value = "127.0.0.1:18443")]
    addr: std::net::SocketAddr,
    /// The CA that signed the server's certificate.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// An ordinary AdmissionReview, sent by the well-behaved client and padded into large bodies.
    #[arg(long)]
    review: std::path::PathBuf,
    #[command(subcommand)]
    attack: Attack,
}

#[derive(Subcommand)]
enum Attack {
    /// Connections that declare a body of 1 000 000 bytes and send one byte of it, then nothing;
    /// meanwhile one client sends reviews one after another, each with a 1 s timeout.
    Slow {
        #[arg(long, default_value_t = 520)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        reviews: usize,
        /// The server's process id, to read its memory with the slow requests open.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Rounds of concurrent maximum-size bodies.
    Large {
        #[arg(long, default_value_t = 48)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_enum)]
        shape: Shape,
        /// The server's process id, to read its memory.
        #[arg(long)]
        pid: u32,
    },
}

/// How a body is filled up to the largest size.
#[derive(Clone, Copy, ValueEnum)]
enum Shape {
    /// One long annotation value.
    Annotation,
    /// Labels with short keys and empty values.
    Labels,
    /// One projected volume with as many empty sources as fit.
    Sources,
    /// Token sources with a forbidden audience: one violation each in the denial message.
    Violations,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let ca = std::fs::read(&args.ca)?;
        let review = std::fs::read(&args.review)?;
        match args.attack {
            Attack::Slow { connections, reviews, pid } => {
                slow(args.addr, &ca, &review, connections, reviews, pid).await
            }
            Attack::Large { concurrency, rounds, shape, pid } => {
                large(args.addr, &ca, &review, concurrency, rounds, shape, pid).await
            }
        }
    })
}

fn tls_config(ca: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn client(addr: std::net::SocketAddr, ca: &[u8]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca)?)
        .resolve(SERVER_NAME, addr)
        .http1_only()
        .build()?)
}

async fn slow(
    addr: std::net::SocketAddr,
    ca: &[u8],
    review: &[u8],
    connections: usize,
    reviews: usize,
    pid: Option<u32>,
) -> anyhow::Result<()> {
    let before = pid.map(memory_mib).transpose()?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca)?);
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
    );
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(ServerName::try_from(SERVER_NAME)?, tcp).await?;
        tls.write_all(head.as_bytes()).await?;
        tls.flush().await?;
        slow.push(tls);
    }
    println!("{connections} slow requests open (took {:.2} s)", opened.elapsed().as_secs_f64());
    if let (Some(pid), Some((_, before))) = (pid, before) {
        let (_, open) = memory_mib(pid)?;
        println!("server RSS {before:.1} MiB before, {open:.1} MiB with them open");
    }
    let client = client(addr, ca)?;
    let url = format!("https://{SERVER_NAME}:{}/validate", addr.port());
    let (mut ok, mut failed, mut latencies) = (0, Vec::new(), Vec::new());
    let reviews_started = Instant::now();
    for _ in 0..reviews {
        let started = Instant::now();
        let sent = client.post(&url).header("Content-Type", "application/json").body(review.to_vec());
        match tokio::time::timeout(Duration::from_secs(1), sent.send()).await {
            Ok(Ok(response)) if response.status() == reqwest::StatusCode::OK => ok += 1,
            Ok(Ok(response)) => failed.push(response.status().to_string()),
            Ok(Err(err)) => failed.push(err.to_string()),
            Err(_) => failed.push("no answer within 1 s".to_string()),
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "well-behaved reviews: {ok}/{reviews} answered 200 within 1 s (p50 {:.1} ms, max {:.1} ms) in {:.2} s, while the slow requests were open; failures: {failed:?}",
        ms(latencies[latencies.len() / 2]),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        reviews_started.elapsed().as_secs_f64(),
    );
    let closed = futures::future::join_all(slow.into_iter().map(|mut tls| async move {
        let mut chunk = [0u8; 1024];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    }))
    .await;
    let (first, last) =
        (closed.iter().min().copied().unwrap_or_default(), closed.iter().max().copied().unwrap_or_default());
    println!(
        "the server closed all {} slow requests between {:.2} s and {:.2} s after the first was opened",
        closed.len(),
        first.as_secs_f64(),
        last.as_secs_f64()
    );
    Ok(())
}

/// A review padded to just under the largest body with `shape`.
fn large_body(review: &[u8], shape: Shape) -> anyhow::Result<Vec<u8>> {
    let mut review: Value = serde_json::from_slice(review)?;
    let room = MAX_BODY_BYTES - serde_json::to_vec(&review)?.len() - 4096;
    let object = &mut review["request"]["object"];
    match shape {
        Shape::Annotation => object["metadata"]["annotations"]["padding"] = Value::String("x".repeat(room)),
        Shape::Labels => {
            let labels = (0..room / 14).map(|i| (format!("k{i:07}"), Value::String(String::new()))).collect();
            object["metadata"]["labels"] = Value::Object(labels);
        }
        Shape::Sources => {
            let sources = vec![Value::Object(serde_json::Map::new()); room / 3];
            let volume = serde_json::json!({"name": "many", "projected": {"sources": sources}});
            push_volume(object, volume)?;
        }
        Shape::Violations => {
            let source = serde_json::json!({"serviceAccountToken": {"audience": "x", "path": "t"}});
            let sources = vec![source; room / 52];
            push_volume(object, serde_json::json!({"name": "many", "projected": {"sources": sources}}))?;
        }
    }
    Ok(serde_json::to_vec(&review)?)
}

fn push_volume(pod: &mut Value, volume: Value) -> anyhow::Result<()> {
    let volumes =
        pod["spec"]["volumes"].as_array_mut().ok_or_else(|| anyhow::anyhow!("the review's pod has no volumes"))?;
    volumes.push(volume);
    Ok(())
}

/// `VmHWM` and `VmRSS` of a process, in MiB.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

async fn large(
    addr: std::net::SocketAddr,
    ca: &[u8],
    review: &[u8],
    concurrency: usize,
    rounds: usize,
    shape: Shape,
    pid: u32,
) -> anyhow::Result<()> {
    let body = large_body(review, shape)?;
    let client = client(addr, ca)?;
    let url = format!("https://{SERVER_NAME}:{}/validate", addr.port());
    let (_, before) = memory_mib(pid)?;
    let (mut answered, mut refused, mut closed) = (0, 0, 0);
    let started = Instant::now();
    for _ in 0..rounds {
        let sent = (0..concurrency)
            .map(|_| client.post(&url).header("Content-Type", "application/json").body(body.clone()).send());
        for result in futures::future::join_all(sent).await {
            match result.map(|r| r.status()) {
                Ok(reqwest::StatusCode::OK) => answered += 1,
                Ok(_) => refused += 1,
                // Refused early: the server closed the connection while the body was being sent.
                Err(_) => closed += 1,
            }
        }
    }
    let (peak, after) = memory_mib(pid)?;
    println!(
        "{rounds} x {concurrency} bodies of {:.2} MiB ({}): {answered} answered 200, {refused} refused (503/413), {closed} cut off while sending, in {:.1} s; server RSS before {before:.1} MiB, peak (VmHWM) {peak:.1} MiB, after {after:.1} MiB",
        body.len() as f64 / 1048576.0,
        shape.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}
