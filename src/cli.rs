//! The command line: subcommands and flags, each documented for `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::cluster::LiveOptions;
use crate::server::tls::CertificateFiles;
use crate::server::ServerConfig;
use crate::source::ConfigMapRef;

pub mod about;

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
    /// for lookups, together with --objects. A field the API server's strict decoding refuses
    /// where tokengate reads (an unknown or mistyped field in volumes, projected token sources,
    /// CSI volumes, CSIDriver specs, pod template paths, metadata) is an error of the file, and
    /// that object is not judged; the rest of the schema is not validated (use a schema
    /// validator such as kubeconform for that). Output (-o): see --output; the text format
    /// prints a line per violation on stdout, `error: FILE:LINE: KIND [NAMESPACE/]NAME: FIELD:
    /// MESSAGE` (`warning:` when violations do not fail the run). Helm's output (`helm template
    /// | tokengate check -`) is reported against each `# Source:` template, at a line counted
    /// from the start of the document rendered from it (approximate, and said so). Exit status:
    /// 2 when a file, an object or the policy cannot be read (after reporting the rest); else 1
    /// when a violation fails the run (policy mode Enforce, or any mode with --fail-on-warn) or
    /// --strict fails; else 0.
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
    /// Show every service-account credential a pod will hold, and why it is allowed or denied.
    ///
    /// For each Pod and workload template among the manifests (or one live pod with --pod), one
    /// row per credential: the automount token, each projected token (with the injection that
    /// adds it and the variables it sets), each token a CSI driver the pod reaches mints
    /// (inline, or through a PersistentVolumeClaim and its PersistentVolume when they are among
    /// --objects), and legacy token Secrets it mounts; each with its audience, requested and
    /// effective lifetime, when the kubelet refreshes it, the containers that mount it, and the
    /// verdict: the spec.audiences entry that allows it, or the violation as the webhook words
    /// it. Manifests are first given what the mutating webhook would add; a live pod is
    /// explained as it runs. Give manifests (PATH...) or --pod. Exit status: 1 when any violation
    /// would be denied (policy mode Enforce), 0 otherwise, 2 on unreadable input, an unreachable
    /// cluster or a --pod that does not exist.
    Explain(ExplainArgs),
    /// Write the smallest policy (mode Audit) that admits the Pods, workloads, CSIDrivers and
    /// legacy token Secrets that exist, on stdout.
    ///
    /// One spec.audiences entry per audience and namespace actually used, listing the service
    /// accounts and the longest lifetime seen; a spec.csiDrivers entry per CSIDriver with
    /// tokenRequests; spec.legacyTokens for the legacy token Secrets (listed by type, their
    /// data never read). Each entry names up to three objects that need it. The tokens other
    /// mutating webhooks add at admission, which no manifest shows, are admitted too, with a
    /// comment naming the webhook: the EKS pod identity webhook's (IRSA) for ServiceAccounts
    /// annotated eks.amazonaws.com/role-arn (audience sts.amazonaws.com or the SA's
    /// eks.amazonaws.com/audience; 86400 s or eks.amazonaws.com/token-expiration), and the Azure
    /// workload identity webhook's for pods labelled azure.workload.identity/use: "true"
    /// (api://AzureADTokenExchange; 3600 s or
    /// azure.workload.identity/service-account-token-expiration). Give --from-cluster or
    /// --from-files.
    ///
    /// Exit status: 0 when the policy was written, also when some files did not parse (each is
    /// named on stderr as a warning, `file:line: problem`, and in a comment of the policy; the
    /// other files are still read); 2 when a --from-files path is empty, does not exist or holds
    /// no Kubernetes object, when the cluster cannot be read, or when an --api-audience is
    /// unusable.
    Init(InitArgs),
    /// Print the MutatingWebhookConfiguration and ValidatingWebhookConfiguration for a policy,
    /// as YAML that `kubectl apply -f -` takes as it is.
    ///
    /// Their CEL matchConditions keep requests tokengate would allow unchanged inside the API
    /// server (pods with only the automount token outside every injection, kubelets' automount
    /// token requests, Secrets of other types, CSIDrivers without tokenRequests, the policy's
    /// exemptions), so that while tokengate is down only requests whose answer it could change
    /// fail. Exit status: 0 when printed, 2 when the policy or CA bundle cannot be read or --url
    /// is one the API server would refuse.
    Webhooks(WebhooksArgs),
    /// Print a shell completion script on stdout.
    ///
    /// bash: `tokengate completions bash > /etc/bash_completion.d/tokengate` (or `source` it from
    /// ~/.bashrc); zsh: save it as `_tokengate` in a directory of $fpath; fish: `tokengate
    /// completions fish > ~/.config/fish/completions/tokengate.fish`. Exit status: 0.
    Completions(CompletionsArgs),
    /// Write manual pages (roff).
    ///
    /// Without --dir, the page tokengate(1) on stdout (`tokengate man | man -l -`). With --dir,
    /// one page per command, as packagers install them under share/man/man1: tokengate.1,
    /// tokengate-serve.1, tokengate-policy-validate.1, ...; the files written are listed on
    /// stdout. Exit status: 0 when written, 2 when the directory cannot be written.
    Man(ManArgs),
    /// Print the version of tokengate, the platform it was built for and, when the build set
    /// TOKENGATE_GIT_COMMIT, the commit it was built from.
    ///
    /// The first line is what --version prints. Exit status: 0.
    Version,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write one page per command into this directory (created when missing) instead of
    /// tokengate(1) on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["pod", "paths"])))]
pub struct ExplainArgs {
    #[command(flatten)]
    pub policy: PolicySourceArgs,
    /// Cluster objects that lookups would otherwise fetch (ServiceAccounts with their
    /// annotations, CSIDrivers, PersistentVolumeClaims, PersistentVolumes, legacy token
    /// Secrets), as multi-document YAML or a `kind: List`. Repeat for several files.
    #[arg(long, value_name = "FILE", conflicts_with = "pod")]
    pub objects: Vec<PathBuf>,
    /// Explain this pod of the cluster of the current kubeconfig (or in-cluster configuration)
    /// instead of manifests; its ServiceAccount, the CSIDrivers, its claims and volumes, and,
    /// when it mounts Secrets, the legacy token Secrets of its namespace (metadata only) are read
    /// from the cluster.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<ConfigMapRef>,
    /// Output format: `text` (a block per object) or `json` (one document).
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainFormat::Text)]
    pub output: ExplainFormat,
    /// The namespace of objects whose manifests name none (as `kubectl apply -n` would).
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The `--name` given to `tokengate webhooks --native`: names the ValidatingAdmissionPolicy
    /// said to decide a credential when the native policies are applied.
    #[arg(long, value_name = "NAME", default_value = "tokengate")]
    pub native_name: String,
    /// Manifest files or directories to explain (directories recursively: files ending in .yaml,
    /// .yml or .json); `-` reads standard input.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// `explain --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_cluster", "from_files"])))]
pub struct InitArgs {
    /// Read the cluster of the current kubeconfig (or in-cluster configuration): Pods,
    /// workloads not owned by a controller, CSIDrivers, the ServiceAccounts annotated for IRSA
    /// or Azure workload identity (metadata only), and legacy token Secrets (metadata only).
    #[arg(long)]
    pub from_cluster: bool,
    /// Read manifests from these files or directories (e.g. a GitOps repository); `-` reads
    /// standard input. Directories are read recursively (files ending in .yaml, .yml or .json,
    /// hidden entries skipped). A file that does not parse (a Helm template, say) is named on
    /// stderr as a warning and skipped, the rest still read; a path that is empty, does not
    /// exist or holds no Kubernetes object is an error (exit 2).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub from_files: Vec<PathBuf>,
    /// With --from-files: skip files whose path matches this glob (e.g. `**/templates/**`), as
    /// check's --exclude does; repeatable.
    #[arg(long, value_name = "GLOB", requires = "from_files")]
    pub exclude: Vec<String>,
    /// Merge entries that differ only by namespace into one glob where the namespaces share a
    /// prefix up to a `-` (team-a, team-b -> team-*). The policy then also admits namespaces
    /// created later under that prefix.
    #[arg(long)]
    pub namespace_globs: bool,
    /// An API server audience of the cluster (its --api-audiences; the `aud` claim of any
    /// automount token). Repeat for several. When not given, the `aud` claim of the token in
    /// --service-account-token is used if that file exists; otherwise spec.apiServerAudiences
    /// is left out, with a comment saying how to fill it in. Never guessed.
    #[arg(long, value_name = "AUDIENCE")]
    pub api_audience: Vec<String>,
    /// A service-account token the cluster issued, read only for its `aud` claim (the
    /// cluster's API server audiences) when --api-audience is not given. In a pod this is its
    /// own automount token; a missing file is not an error.
    #[arg(long, value_name = "FILE", default_value = tokengate_default_token_file())]
    pub service_account_token: PathBuf,
    /// The namespace of objects whose manifests name none (as `kubectl apply -n` would).
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, clap::Args)]
pub struct WebhooksArgs {
    /// The policy document (YAML or JSON, kind TokenPolicy).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_POLICY")]
    pub policy: PathBuf,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// PEM file of the CA that signed tokengate's serving certificate, written base64-encoded to
    /// every clientConfig.caBundle. Without it caBundle is left out (cert-manager's cainjector,
    /// or an overlay, fills it in).
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// metadata.name of both configurations.
    #[arg(long, value_name = "NAME", default_value = crate::webhooks::DEFAULT_CONFIGURATION_NAME)]
    pub name: String,
    /// An annotation for both configurations, e.g.
    /// cert-manager.io/inject-ca-from=tokengate-system/tokengate-serving; repeat for several.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotation: Vec<(String, String)>,
    /// Print instead the ValidatingAdmissionPolicies (and their bindings, named NAME-<kind>) that
    /// let the API server itself decide the rules that need no lookup, and the
    /// MutatingAdmissionPolicy (NAME-pod-injections) that adds the injections matched by
    /// namespaces and pod labels alone, with a comment header saying which rule and injection is
    /// decided where and why (docs/native.md). Takes the place of --service or --url.
    #[arg(long, group = "endpoint")]
    pub native: bool,
    /// Print the webhook configurations narrowed to what the native policies (--native) leave to
    /// tokengate: apply both together, the native policies first.
    #[arg(long, conflicts_with = "native")]
    pub narrowed: bool,
    /// With --native or --narrowed: the Kubernetes version of the API server (MAJOR.MINOR, e.g.
    /// 1.35), to print only what it serves. 1.30 to 1.35 serve ValidatingAdmissionPolicy v1 but
    /// not MutatingAdmissionPolicy v1, so the injections stay in the webhook; below 1.30 is an
    /// error (nothing native: keep the full webhook configurations). Default: the newest (both).
    #[arg(long, value_name = "VERSION", value_parser = parse_kubernetes_version)]
    pub kubernetes_version: Option<(u32, u32)>,
}

/// `--kubernetes-version`: `MAJOR.MINOR`, optionally with a leading `v` and a patch version.
fn parse_kubernetes_version(text: &str) -> Result<(u32, u32), String> {
    let invalid = || format!("{text:?} is not a Kubernetes version such as 1.35");
    let mut parts = text.strip_prefix('v').unwrap_or(text).split('.');
    let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(invalid)?;
    let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(invalid)?;
    if parts.next().is_some_and(|patch| patch.parse::<u32>().is_err()) || parts.next().is_some() {
        return Err(invalid());
    }
    Ok((major, minor))
}

/// How the API server reaches tokengate: exactly one of --service and --url, or --native instead
/// (the group `endpoint` holds the three).
#[derive(Debug, clap::Args)]
#[group(id = "endpoint", required = true, multiple = false)]
pub struct EndpointArgs {
    /// The Service in front of tokengate, NAMESPACE/NAME[:PORT] (port default 443); its
    /// namespace is also left out of every webhook.
    #[arg(long, value_name = "NAMESPACE/NAME[:PORT]")]
    pub service: Option<crate::webhooks::ServiceRef>,
    /// A URL instead of a Service, e.g. https://127.0.0.1:8443 for a tokengate outside the
    /// cluster; /mutate and /validate are appended (tokengate-system is then the namespace left
    /// out of every webhook).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// `serve --manage-webhooks` and what the managed configurations look like.
#[derive(Debug, clap::Args)]
pub struct ManageWebhooksArgs {
    /// Keep the webhook configurations equal to what `tokengate webhooks` computes from the
    /// policy in force: each ready replica server-side-applies both (field manager
    /// tokengate-webhooks), again after every policy change, and every 10 minutes (undoing edits
    /// by hand). Failures are logged, counted
    /// (tokengate_webhook_configuration_applies_total) and retried with backoff; readiness is
    /// unaffected. Needs RBAC get, create and patch on the two configurations.
    #[arg(long, env = "TOKENGATE_MANAGE_WEBHOOKS")]
    pub manage_webhooks: bool,
    /// metadata.name of both managed configurations.
    #[arg(long, value_name = "NAME", default_value = crate::webhooks::DEFAULT_CONFIGURATION_NAME, env = "TOKENGATE_WEBHOOK_CONFIGURATION_NAME")]
    pub webhook_configuration_name: String,
    /// The Service the managed configurations point at, NAMESPACE/NAME[:PORT].
    #[arg(
        long,
        value_name = "NAMESPACE/NAME[:PORT]",
        default_value = "tokengate-system/tokengate:443",
        env = "TOKENGATE_WEBHOOK_SERVICE",
        conflicts_with = "webhook_url"
    )]
    pub webhook_service: crate::webhooks::ServiceRef,
    /// A URL the managed configurations point at instead of the Service.
    #[arg(long, value_name = "URL", env = "TOKENGATE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// PEM CA bundle to write into the managed configurations' caBundle. Without it caBundle is
    /// never written, so cert-manager's cainjector (or whoever set it) keeps it.
    #[arg(long, value_name = "FILE", env = "TOKENGATE_WEBHOOK_CA_BUNDLE")]
    pub webhook_ca_bundle: Option<PathBuf>,
    /// An annotation the managed configurations carry, e.g.
    /// cert-manager.io/inject-ca-from=tokengate-system/tokengate-serving; repeat for several
    /// (comma-separated in the environment variable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_annotation, env = "TOKENGATE_WEBHOOK_ANNOTATION", value_delimiter = ',')]
    pub webhook_annotation: Vec<(String, String)>,
    /// With --manage-webhooks, let the API server itself decide the rules that need no lookup:
    /// at every apply (policy change, resync) ask it by API discovery which admission policies
    /// it serves, apply the ValidatingAdmissionPolicies of `tokengate webhooks --native` (named
    /// NAME-<kind>, labelled app.kubernetes.io/managed-by=tokengate), and only once they are
    /// accepted narrow the webhooks (`webhooks --narrowed`). Going back (flag off, the API no
    /// longer served, a rule over the CEL cost limits) puts the full webhooks back before the
    /// native policies are deleted; a refused native policy leaves the full webhooks. Without
    /// the flag, native policies an earlier run applied are removed. Needs RBAC on
    /// validatingadmissionpolicies and their bindings (docs/native.md).
    #[arg(long, env = "TOKENGATE_NATIVE_POLICIES", requires = "manage_webhooks")]
    pub native_policies: bool,
}

/// Why a flag's value was refused; clap prints it after the flag's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `KEY=VALUE` with a key.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// No number where a duration was expected.
    #[error("{0:?} is not a duration like 500ms, 5s, 2m")]
    NotDuration(String),
    /// No number where a size was expected.
    #[error("{0:?} is not a size like 28Mi, 512Ki, 1048576")]
    NotSize(String),
    /// A unit the flag does not know.
    #[error("unknown unit {unit:?} in {text:?}: use {known}")]
    UnknownUnit { unit: String, text: String, known: &'static str },
    /// More bytes than the machine can count.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `KEY=VALUE`.
pub fn parse_annotation(text: &str) -> Result<(String, String), ValueError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(ValueError::NotKeyValue(text.to_string())),
    }
}

#[derive(Debug, clap::Args)]
#[command(mut_arg("policy", |arg| arg.help(SERVE_POLICY_HELP)))]
#[command(mut_arg("policy_configmap", |arg| arg.help(SERVE_POLICY_CONFIGMAP_HELP)))]
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
    /// Reviews in flight at once, counted once a request's body has arrived whole; beyond it
    /// requests fail fast with 503.
    #[arg(long, value_name = "N", default_value_t = 512, env = "TOKENGATE_MAX_IN_FLIGHT")]
    pub max_in_flight: usize,
    /// Memory that request bodies being received or reviewed, and answers not yet taken, may
    /// take, all connections together (bytes, or with a suffix Ki, Mi, Gi); each is charged by
    /// the bytes that have arrived, never by its Content-Length. 4Mi of it are kept for small
    /// bodies (64Ki or less: ordinary reviews), which larger ones cannot take, so reviews are
    /// answered however many large or slow bodies are held; a body that does not fit is refused
    /// at once with 503 (`body_budget`). At least 11Mi (the largest body, 7Mi, beside the small
    /// bodies' share); the default holds four of the largest.
    #[arg(long, value_name = "BYTES", default_value = "28Mi", value_parser = parse_bytes, env = "TOKENGATE_BODY_BUDGET")]
    pub body_budget: usize,
    /// How much of --body-budget one client (one IP address, all its connections together) may
    /// hold, and at most half of the small bodies' share; beyond it its bodies are refused at
    /// once with 429 (`peer_budget`). An API server is one client however many connections it
    /// opens: the default, two of the largest bodies, is hundreds of times what its ordinary
    /// reviews (a few KiB each) take at once, and each of several API servers has a share of
    /// its own. Behind a proxy or NAT every client shares one. At least 7Mi.
    #[arg(long, value_name = "BYTES", default_value = "14Mi", value_parser = parse_bytes, env = "TOKENGATE_PEER_BODY_BUDGET")]
    pub peer_body_budget: usize,
    /// A request, headers and body, must arrive within this of its first byte; otherwise the
    /// connection is closed (counted as reason `read_timeout`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "TOKENGATE_READ_TIMEOUT")]
    pub read_timeout: Duration,
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
    /// Time allowed for a TLS handshake (reading a request is bounded by --read-timeout).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "TOKENGATE_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Duration,
    /// API calls made on watch-cache misses in flight at once; more wait, within
    /// --lookup-timeout.
    #[arg(long, value_name = "N", default_value_t = 16, env = "TOKENGATE_LOOKUP_CONCURRENCY")]
    pub lookup_concurrency: usize,
    /// Log one line per review (uid, kind, namespace/name, operation, decision; never the
    /// object): `true` or `false`.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, env = "TOKENGATE_LOG_REVIEWS")]
    pub log_reviews: bool,
    /// Log format: `text` or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOKENGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `warn`, `tokengate=debug` (tracing EnvFilter syntax).
    #[arg(long, value_name = "FILTER", default_value = "info", env = "TOKENGATE_LOG")]
    pub log: String,
    #[command(flatten)]
    pub webhooks: ManageWebhooksArgs,
}

impl ServeArgs {
    /// The server's configuration, every value from the command line: the flags above are the
    /// one table of defaults.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            admin_listen: self.admin_listen,
            certificates: CertificateFiles { cert: self.tls_cert.clone(), key: self.tls_key.clone() },
            client_ca: self.client_ca.clone(),
            http2: self.http2,
            max_in_flight: self.max_in_flight,
            body_budget: self.body_budget,
            peer_body_budget: self.peer_body_budget,
            reload_interval: self.reload_interval,
            handshake_timeout: self.handshake_timeout,
            read_timeout: self.read_timeout,
            idle_timeout: self.idle_timeout,
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            log_reviews: self.log_reviews,
        }
    }

    /// How the live cluster's lookups are tuned.
    pub fn live_options(&self) -> LiveOptions {
        LiveOptions { fallback_timeout: self.lookup_timeout, fallback_concurrency: self.lookup_concurrency }
    }

    /// `serve` with every default and only the required flags: the certificate files (for
    /// tests and benchmarks that start a server in-process).
    pub fn defaults(certificates: &CertificateFiles) -> ServeArgs {
        let (cert, key) = (certificates.cert.as_os_str(), certificates.key.as_os_str());
        let args = ["tokengate".as_ref(), "serve".as_ref(), "--policy".as_ref(), "-".as_ref()];
        let files = ["--tls-cert".as_ref(), cert, "--tls-key".as_ref(), key];
        let cli =
            Cli::try_parse_from(args.into_iter().chain(files)).expect("the required flags and the defaults parse");
        match cli.command {
            Command::Serve(args) => *args,
            _ => unreachable!("parsed as serve"),
        }
    }
}

/// `serve --policy`: the server keeps reading it.
const SERVE_POLICY_HELP: &str = "The policy document (YAML or JSON, kind TokenPolicy); re-read every \
     --reload-interval, a bad update keeps the last good policy";
/// `serve --policy-configmap`: the server keeps watching it.
const SERVE_POLICY_CONFIGMAP_HELP: &str = "The policy from a ConfigMap (key `policy.yaml`), watched through \
     the API server; a bad update keeps the last good policy and is recorded as an Event on the ConfigMap";

/// Where the policy comes from: a file or a ConfigMap (exactly one), read once (`serve` keeps
/// reading it: see its help).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PolicySourceArgs {
    /// The policy document (YAML or JSON, kind TokenPolicy).
    #[arg(long, value_name = "FILE", env = "TOKENGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// The policy from a ConfigMap (key `policy.yaml`), read through the API server the command
    /// talks to.
    #[arg(long, value_name = "NAMESPACE/NAME", env = "TOKENGATE_POLICY_CONFIGMAP")]
    pub policy_configmap: Option<ConfigMapRef>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub policy: PolicySourceArgs,
    /// Output format: `text`, `json`, `junit`, `github` or `sarif` (as for check).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
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
    /// Output format, each described below (every format carries the violations, notes, file
    /// errors and warnings; stderr always has the text lines other than violations, and the
    /// summary).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The namespace of objects whose manifests name none, as `kubectl apply -n` would: every
    /// namespace-less object takes it, ServiceAccounts from the manifests and --objects too.
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Fail (exit 1) on violations whatever the policy's mode, so CI can gate while the cluster
    /// runs the policy in Warn or Audit mode.
    #[arg(long)]
    pub fail_on_warn: bool,
    /// Fail (exit 1) when something could not be checked: a note (a lookup found nothing among
    /// the objects, e.g. the ServiceAccount of a Deployment or a CSIDriver a pod mounts is not
    /// among the files), or no object was checked. Notes are then printed as errors and the
    /// summary names the objects they are about.
    #[arg(long)]
    pub strict: bool,
    /// An object deliberately absent from the files and --objects (defined elsewhere, e.g. a
    /// ServiceAccount another chart creates): `KIND/NAMESPACE/NAME`, or `KIND/NAME` for
    /// cluster-scoped kinds (CSIDriver, PersistentVolume); `*` and other globs in NAMESPACE and
    /// NAME (`ServiceAccount/team-a/*`). A lookup of it that finds nothing is not noted (so
    /// --strict passes); what tokengate would read of it (a ServiceAccount's annotations, a
    /// CSIDriver's tokenRequests) is still unknown and not checked. Repeatable.
    #[arg(long, value_name = "KIND/NAMESPACE/NAME")]
    pub assume_present: Vec<crate::simulate::Assumed>,
    /// Skip files whose path matches this glob (e.g. `**/templates/tests/**`); repeatable. A
    /// glob that matches no file is reported as a warning (stderr, and in every format), and
    /// does not change the exit status.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// The file name to report for objects read from standard input (`-`), e.g. the file a
    /// generator rendered; documents under a Helm `# Source:` comment are reported against
    /// their template instead. Without it, standard input is reported as `-`, and GitHub
    /// annotations of it carry their line in the message (they can point at no file).
    #[arg(long, value_name = "NAME")]
    pub stdin_filename: Option<PathBuf>,
    /// The `--name` given to `tokengate webhooks --native`: names the ValidatingAdmissionPolicy
    /// said to decide a credential when the native policies are applied.
    #[arg(long, value_name = "NAME", default_value = "tokengate")]
    pub native_name: String,
    /// Manifest files or directories to check; `-` reads standard input
    /// (`helm template . | tokengate check --policy p.yaml -`).
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy document and list every problem at once, each as
    /// `file:line:column: field path: problem`; warnings (e.g. a missing apiServerAudiences) go
    /// to stderr.
    ///
    /// Exit status: 0 when valid (warnings included), 1 when invalid, 2 when the file cannot be
    /// read.
    Validate {
        /// The policy document (YAML or JSON); `-` reads standard input.
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
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| ValueError::NotDuration(text.to_string()))?;
    let millis = match unit {
        "ms" => number,
        "" | "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => {
            let (unit, text) = (unit.to_string(), text.to_string());
            return Err(ValueError::UnknownUnit { unit, text, known: "ms, s, m or h" });
        }
    };
    Ok(Duration::from_millis(millis))
}

/// Parses a size in bytes: `1048576`, `512Ki`, `28Mi`, `1Gi`.
pub fn parse_bytes(text: &str) -> Result<usize, ValueError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| ValueError::NotSize(text.to_string()))?;
    let scale: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            let (unit, text) = (unit.to_string(), text.to_string());
            return Err(ValueError::UnknownUnit { unit, text, known: "Ki, Mi or Gi" });
        }
    };
    number.checked_mul(scale).ok_or_else(|| ValueError::TooLarge(text.to_string()))
}

pub use crate::report::OutputFormat;

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
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512Ki"), Ok(512 << 10));
        assert_eq!(parse_bytes("28Mi"), Ok(28 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert!(parse_bytes("28MB").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("99999999999999999999Gi").is_err());
    }

    #[test]
    fn the_server_is_configured_by_the_flags_and_their_defaults() {
        let certificates = CertificateFiles { cert: "c.pem".into(), key: "k.pem".into() };
        let config = ServeArgs::defaults(&certificates).server_config();
        assert_eq!(config.body_budget, 4 * crate::server::MAX_BODY_BYTES, "four of the largest bodies");
        assert_eq!(config.peer_body_budget, 2 * crate::server::MAX_BODY_BYTES);
        assert_eq!(config.read_timeout, Duration::from_secs(5));
        assert!(config.idle_timeout > Duration::from_secs(90), "above the API server's idle keep-alive");
        assert!(config.log_reviews);
        assert_eq!(config.certificates.cert, std::path::PathBuf::from("c.pem"));
        let cli = Cli::parse_from([
            "tokengate",
            "serve",
            "--policy",
            "p",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--log-reviews",
            "false",
            "--lookup-timeout",
            "3s",
        ]);
        let Command::Serve(args) = cli.command else { panic!("serve") };
        assert!(!args.server_config().log_reviews);
        assert_eq!(args.live_options().fallback_timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
