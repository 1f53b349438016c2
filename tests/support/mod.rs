//! Shared test helpers: a throw-away PKI made with rcgen, and an in-process server.

#![allow(dead_code)]

pub mod fake_apiserver;
pub mod managed_fields;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokengate::cluster::Cluster;
use tokengate::metrics::Metrics;
use tokengate::server::tls::CertificateFiles;
use tokengate::server::{self, Running, ServerConfig};
use tokengate::source::{self, PolicyPublisher, PolicyReceiver};

/// The name kube-apiserver verifies: `<service>.<namespace>.svc`.
pub const SERVER_NAME: &str = "tokengate.tokengate-system.svc";

/// A certificate authority that issues server and client certificates.
pub struct Pki {
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate chain and key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { ca }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `names`.
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, "tokengate")
    }

    /// A client certificate, e.g. for the API server.
    pub fn client(&self, common_name: &str) -> Issued {
        self.issue(&[], ExtendedKeyUsagePurpose::ClientAuth, common_name)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, common_name: &str) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tokengate-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a certificate pair the way the kubelet mounts a Secret: files are symlinks through
/// `..data` to a timestamped directory, swapped atomically on update.
pub fn write_secret_volume(dir: &Path, generation: usize, issued: &Issued) {
    let target = format!("..{generation}");
    let versioned = dir.join(&target);
    std::fs::create_dir_all(&versioned).expect("mkdir");
    std::fs::write(versioned.join("tls.crt"), &issued.cert_pem).expect("write");
    std::fs::write(versioned.join("tls.key"), &issued.key_pem).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).expect("symlink");
        }
    }
}

/// A server under test, with the policy file it watches.
pub struct TestServer {
    pub running: Running,
    pub metrics: Arc<Metrics>,
    pub policy: PolicyReceiver,
    pub dir: TempDir,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("https://{SERVER_NAME}:{}{path}", self.running.addr.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }
}

/// Options for [`start`].
pub struct Options<'a> {
    pub policy: Option<&'a str>,
    pub client_ca: Option<String>,
    pub drain_delay: Duration,
    pub max_in_flight: usize,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            policy: Some(include_str!("../fixtures/policy.yaml")),
            client_ca: None,
            drain_delay: Duration::from_millis(200),
            max_in_flight: 512,
        }
    }
}

/// Starts a server on loopback ports with a certificate for [`SERVER_NAME`] from `pki`.
pub async fn start<C: Cluster + Send + Sync + 'static>(pki: &Pki, cluster: C, options: Options<'_>) -> TestServer {
    let dir = TempDir::new("server");
    write_secret_volume(&dir.0, 1, &pki.server(&[SERVER_NAME]));
    let policy_path = dir.path("policy.yaml");
    if let Some(policy) = options.policy {
        std::fs::write(&policy_path, policy).expect("write policy");
    }
    let metrics = Arc::new(Metrics::new());
    let (publisher, policy) = PolicyPublisher::new(metrics.clone());
    tokio::spawn(source::watch_file(policy_path, Duration::from_millis(100), publisher));
    let mut config = server_defaults(CertificateFiles { cert: dir.path("tls.crt"), key: dir.path("tls.key") });
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    config.reload_interval = Duration::from_millis(100);
    config.drain_delay = options.drain_delay;
    config.shutdown_timeout = Duration::from_secs(10);
    config.log_reviews = false;
    config.max_in_flight = options.max_in_flight;
    config.client_ca = options.client_ca.map(|pem| dir.write("client-ca.pem", pem));
    let running =
        server::start(config, policy.clone(), Arc::new(cluster), metrics.clone()).await.expect("server starts");
    if options.policy.is_some() {
        let mut loaded = policy.clone();
        let ready = tokio::time::timeout(Duration::from_secs(5), loaded.wait_for(Option::is_some)).await;
        assert!(matches!(ready, Ok(Ok(_))), "the policy loads");
    }
    TestServer { running, metrics, policy, dir }
}

/// An HTTPS client that trusts `ca_pem` and reaches [`SERVER_NAME`] on loopback.
pub fn client(ca_pem: &str, server: &TestServer, identity: Option<&Issued>) -> reqwest::Client {
    let mut builder = client_builder(ca_pem, server.running.addr);
    if let Some(identity) = identity {
        let pem = format!("{}{}", identity.cert_pem, identity.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

fn client_builder(ca_pem: &str, addr: std::net::SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .resolve(SERVER_NAME, addr)
        .http1_only()
        .timeout(Duration::from_secs(10))
}

/// An HTTPS client that trusts `ca_pem` and reaches [`SERVER_NAME`] at a loopback port.
pub fn client_for(ca_pem: &str, port: u16) -> reqwest::Client {
    client_builder(ca_pem, std::net::SocketAddr::from(([127, 0, 0, 1], port))).build().expect("client")
}

/// An HTTPS client like [`client_for`] whose connections come from the loopback address
/// `source` (Linux routes all of 127.0.0.0/8 to `lo`): to the server, another client.
pub fn client_from(ca_pem: &str, port: u16, source: std::net::IpAddr) -> reqwest::Client {
    let builder = client_builder(ca_pem, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    builder.local_address(source).build().expect("client")
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A child process killed (and reaped) when the test ends, even when it fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this is a CI run: `CI` set to `true` or `1` (as CI services and `.ci/run` set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value.eq_ignore_ascii_case("true") || value == "1")
}

/// For a test that cannot run here (`reason`: a tool that is not installed, say). Under CI, which
/// installs everything the suite needs, it panics: a missing tool there is a failure, never a
/// skip. Elsewhere it prints `SKIPPED: reason` and the caller returns.
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    assert!(!under_ci(), "{reason}: under CI this is a failure, not a skip (.ci/run installs what the suite needs)");
    eprintln!("SKIPPED: {reason}");
}

/// The server built with release optimisation: the test's own binary when the tests are built
/// optimised (`cargo test --release`), otherwise one `cargo build --profile memtest` into
/// `target/memtest` (a no-op once built). Debug builds use more memory and are far slower, so a
/// memory bound measured on them would say little about what runs in a cluster. Build it before
/// starting any clock: the first build takes minutes.
pub fn optimised_server() -> PathBuf {
    if !cfg!(debug_assertions) {
        return env!("CARGO_BIN_EXE_tokengate").into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/memtest");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--profile", "memtest", "--locked", "--bin", "tokengate"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the memtest profile");
    target.join("memtest/tokengate")
}

/// A memory figure of a process from `/proc/<pid>/status`, in KiB: `VmRSS` (now), `VmHWM`
/// (peak), `RssAnon`, `RssFile`.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The processor time a process has used so far (user and system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // The fields after the command (which may hold spaces) in parentheses; utime and stime are
    // the 14th and 15th of the line, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a command in parentheses").1.split_whitespace().collect();
    let ticks: u64 = fields[11..13].iter().map(|f| f.parse::<u64>().expect("ticks")).sum();
    Duration::from_millis(ticks * 10)
}

/// The server's configuration with every default of `serve`'s flags, for `certificates`.
pub fn server_defaults(certificates: CertificateFiles) -> ServerConfig {
    tokengate::cli::ServeArgs::defaults(&certificates).server_config()
}

/// The live cluster's options with every default of `serve`'s flags.
#[allow(dead_code)]
pub fn live_defaults() -> tokengate::cluster::LiveOptions {
    let certificates = CertificateFiles { cert: "unused".into(), key: "unused".into() };
    tokengate::cli::ServeArgs::defaults(&certificates).live_options()
}

/// `count` running pods, each with its own service account, in 100 namespaces, as Deployments
/// make them: what the watch caches of a cluster of that size hold.
#[allow(dead_code)]
pub fn cluster_of(api: &fake_apiserver::FakeApiServer, count: usize) {
    for i in 0..count {
        let role = serde_json::json!({"eks.amazonaws.com/role-arn": format!("arn:aws:iam::111122223333:role/sa-{i}")});
        for object in deployed_pod(i, &format!("ns-{}", i % 100), "vault", role) {
            api.apply(object);
        }
    }
}

/// Pod `i` of a Deployment in `namespace`, running, with an automount volume and a projected
/// token for `audience`, and its own service account `sa-{i}` annotated with
/// `account_annotations`: the service account, then the pod.
#[allow(dead_code)]
pub fn deployed_pod(
    i: usize,
    namespace: &str,
    audience: &str,
    account_annotations: serde_json::Value,
) -> [serde_json::Value; 2] {
    let account = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("sa-{i}"), "namespace": namespace, "uid": format!("00000000-0000-4000-8000-{i:012}"),
                         "annotations": account_annotations}});
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}-7d9f8b6c5d-x2x4q"), "namespace": namespace, "uid": format!("10000000-0000-4000-8000-{i:012}"),
                         "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
                         "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d", "uid": "r1", "controller": true}]},
            "spec": {"nodeName": format!("node-{}", i % 50), "serviceAccountName": format!("sa-{i}"),
                     "containers": [{"name": "app", "image": "registry.example.com/web:1.4.2",
                                     "env": [{"name": "LOG_LEVEL", "value": "info"}],
                                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                                     "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                                                      {"name": "vault-token", "mountPath": "/var/run/secrets/vault"}]}],
                     "volumes": [
                        {"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {"audience": audience, "expirationSeconds": 3600, "path": "token"}}]}},
                        {"name": "kube-api-access-abcde", "projected": {"sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}});
    [account, pod]
}
