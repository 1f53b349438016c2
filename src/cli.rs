//! The command line: subcommands and flags, each documented for `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::source::ConfigMapRef;

/// tokengate governs which service-account tokens a Kubernetes cluster may mint: audiences
/// per namespace and service account, lifetimes, what kubelets may request, and the
/// projected-token volumes pods must carry.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook server (POST /validate and /mutate) and the plain-HTTP
    /// admin server (GET /livez, /readyz, /metrics).
    ///
    /// Every flag can also be set with an environment variable TOKENGATE_<FLAG>, e.g.
    /// TOKENGATE_TLS_CERT. The server starts only with a usable certificate and key (exit 1
    /// otherwise); without a valid policy it runs but stays not ready. SIGTERM: readiness fails
    /// at once, requests are served for --drain-delay, then in-flight requests finish, idle
    /// connections close and the process exits 0.
    Serve(Box<ServeArgs>),
    /// Answer one AdmissionReview (read from stdin) exactly as the webhook server would.
    ///
    /// Prints the response AdmissionReview on stdout. Exit status: 0 when a response was
    /// produced (allowed or denied), 1 when the input has no readable request uid, 2 when the
    /// policy or objects cannot be read.
    Review(ReviewArgs),
    /// Check manifests on disk (files or directories of YAML/JSON, multi-document, Lists).
    ///
    /// Pods, workload pod templates (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
    /// CronJob, ReplicationController, PodTemplate) and CSIDrivers are judged as the webhooks
    /// would judge them at admission; Pods are first given the injections the mutating
    /// webhook would add. ServiceAccounts and CSIDrivers found among the manifests are used
    /// for lookups, together with --objects. Prints one line per violation:
    /// `file: Kind namespace/name: field: message`. Exit status: 1 when any violation would
    /// be denied (policy mode Enforce), 0 otherwise, 2 on unreadable input.
    Check(CheckArgs),
    /// Work with policy documents.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check every existing Pod, workload, CSIDriver and legacy token Secret of the cluster of
    /// the current kubeconfig (or in-cluster config) against a policy.
    ///
    /// Pods are judged as they run (a pod lacking a required injection is reported); workloads
    /// owned by a controller (a Deployment's ReplicaSets, a CronJob's Jobs) are judged through
    /// their owner. Objects are listed and judged a page at a time, so memory stays flat however
    /// large the cluster. An object that does not decode is reported as a violation of its own.
    /// A kind the caller may not list (403) is named on stderr and the rest is still judged.
    /// Progress goes to stderr. Exit status: 2 when the cluster or policy cannot be read or some
    /// kind could not be listed (after printing what was read), else 1 when any violation would
    /// be denied (policy mode Enforce), else 0.
    Audit(AuditArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub policy: PolicySourceArgs,
    /// PEM certificate chain for the webhook port (leaf first); re-read when it changes.
    #[arg(long, value_name = "FILE", env = "TOKENGATE_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_TLS_KEY")]
    pub tls_key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed (the API
    /// server's client certificate, see its --admission-control-config-file).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Address of the HTTPS webhook port.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443", env = "TOKENGATE_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP admin port (/livez, /readyz, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080", env = "TOKENGATE_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Cluster objects for lookups, from files instead of watching the API server (for testing
    /// and offline evaluation); repeat for several files. Without it, tokengate watches Pods,
    /// ServiceAccounts, CSIDrivers, PVCs and PVs of the cluster it runs in.
    #[arg(long, value_name = "FILE", env = "TOKENGATE_OBJECTS", value_delimiter = ',')]
    pub objects: Vec<PathBuf>,
    /// Longest wait for an API call made when a watch cache has not seen an object yet (a pod
    /// created a moment ago); the lookup then fails and the request is denied with that reason.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, env = "TOKENGATE_LOOKUP_TIMEOUT")]
    pub lookup_timeout: Duration,
    /// A service-account token the cluster issued, read once at start-up to learn the API
    /// server's audiences (its `aud` claim lists exactly the cluster's --api-audiences); they are
    /// added to the policy's apiServerAudiences, logged, and exported as
    /// tokengate_api_server_audiences_info. In a pod this is its own automount token; when the
    /// file is absent only the policy's list is used.
    #[arg(long, value_name = "FILE", default_value = tokengate_default_token_file(), env = "TOKENGATE_SERVICE_ACCOUNT_TOKEN")]
    pub service_account_token: PathBuf,
    /// Also offer HTTP/2 in ALPN (kube-apiserver speaks HTTP/1.1 to webhooks).
    #[arg(long, env = "TOKENGATE_HTTP2")]
    pub http2: bool,
    /// Reviews in flight at once; beyond it requests fail fast with 503.
    #[arg(long, value_name = "N", default_value_t = 512, env = "TOKENGATE_MAX_IN_FLIGHT")]
    pub max_in_flight: usize,
    /// How often the policy and certificate files are re-read (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, env = "TOKENGATE_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// After SIGTERM, how long to keep serving before closing connections.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "TOKENGATE_DRAIN_DELAY")]
    pub drain_delay: Duration,
    /// After the drain delay, how long in-flight requests may still take.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration, env = "TOKENGATE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,
    /// Idle keep-alive connections are closed after this (keep it above the API server's 90s).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration, env = "TOKENGATE_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Time allowed for a TLS handshake, and separately for reading request headers.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "TOKENGATE_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Duration,
    /// Log format: `text` or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOKENGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `warn`, `tokengate=debug` (tracing EnvFilter syntax).
    #[arg(long, value_name = "FILTER", default_value = "info", env = "TOKENGATE_LOG")]
    pub log: String,
}

/// Where the policy comes from: a file or a ConfigMap (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PolicySourceArgs {
    /// The policy document; re-read every --reload-interval, a bad update keeps the last good
    /// policy.
    #[arg(long, value_name = "FILE", env = "TOKENGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// The policy from a ConfigMap (key `policy.yaml`), watched through the API server; a bad
    /// update keeps the last good policy and is recorded as an Event on the ConfigMap.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "TOKENGATE_POLICY_CONFIGMAP")]
    pub policy_configmap: Option<ConfigMapRef>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub policy: PolicySourceArgs,
    /// Output format: `text` (one line per violation) or `json` (one document).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The kubeconfig file to use, instead of KUBECONFIG or ~/.kube/config (as kubectl's
    /// --kubeconfig). Without any kubeconfig, the in-cluster configuration of a pod is used.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current context (as kubectl's --context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Audit one namespace only (Pods, workloads, ServiceAccounts, legacy token Secrets);
    /// CSIDrivers are cluster-scoped and always audited. Without it, every namespace.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The policy document (YAML or JSON, kind TokenPolicy).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_POLICY")]
    pub policy: PathBuf,
    /// Cluster objects that lookups would otherwise fetch (Pods, ServiceAccounts, CSIDrivers,
    /// PersistentVolumeClaims, PersistentVolumes), as multi-document YAML or a `kind: List`.
    /// Repeat for several files; a directory is read recursively.
    #[arg(long, value_name = "FILE")]
    pub objects: Vec<PathBuf>,
    /// Which webhook to answer as: `validate` (allow/deny) or `mutate` (injection patch).
    #[arg(long, value_enum, default_value_t = WebhookArg::Validate)]
    pub webhook: WebhookArg,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The policy document (YAML or JSON, kind TokenPolicy).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_POLICY")]
    pub policy: PathBuf,
    /// Extra cluster objects for lookups (ServiceAccounts with their annotations, CSIDrivers,
    /// ...), as multi-document YAML or a `kind: List`. Repeat for several files.
    #[arg(long, value_name = "FILE")]
    pub objects: Vec<PathBuf>,
    /// Output format: `text` (one line per violation) or `json` (one document).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The namespace of objects whose manifests name none (as `kubectl apply -n` would).
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Manifest files or directories to check.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy document and list every problem with its field path.
    ///
    /// Exit status: 0 when valid, 1 when invalid, 2 when the file cannot be read.
    Validate {
        /// The policy document (YAML or JSON).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `--webhook`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WebhookArg {
    Validate,
    Mutate,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const fn tokengate_default_token_file() -> &'static str {
    crate::cluster::audiences::AUTOMOUNT_TOKEN_FILE
}

/// Parses `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 500ms, 5s, 2m"))?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_millis(millis))
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
