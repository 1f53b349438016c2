//! The `tokengate` binary: parse the command line, run the subcommand, map outcomes to exit codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use tokengate::check::{CheckOptions, Report};
use tokengate::cli::{
    AuditArgs, CheckArgs, Cli, Command, LogFormat, OutputFormat, PolicyCommand, PolicySourceArgs, ReviewArgs,
    ServeArgs, WebhookArg,
};
use tokengate::cluster::audiences::audiences_of_token_file;
use tokengate::cluster::kubeconfig::{self, ClientOptions};
use tokengate::cluster::{Cluster, LiveCluster, LiveOptions, ObjectStore};
use tokengate::manifest::{self, Document};
use tokengate::metrics::Metrics;
use tokengate::policy::{Policy, PolicyError};
use tokengate::review::{self, Reply, Webhook};
use tokengate::server::tls::CertificateFiles;
use tokengate::server::{self, ServerConfig};
use tokengate::source::{self, PolicyPublisher, PolicyReceiver};

/// Exit status for input that cannot be read (unreadable files, invalid policy, no cluster).
const EXIT_UNREADABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(*args).await,
            Command::Review(args) => run_review(args).await,
            Command::Check(args) => run_check(args).await,
            Command::Audit(args) => run_audit(args).await,
            Command::Policy(PolicyCommand::Validate { file }) => validate_policy(&file),
        }
    });
    outcome.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(EXIT_UNREADABLE)
    })
}

async fn kube_client(options: &ClientOptions) -> anyhow::Result<kube::Client> {
    // The error's message is complete; `Context` would print its cause a second time.
    kubeconfig::client(options).await.map_err(|err| anyhow::anyhow!("connecting to the Kubernetes API: {err}"))
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, &args.log)?;
    let metrics = Arc::new(Metrics::new());
    let needs_api = args.policy.policy_configmap.is_some() || args.objects.is_empty();
    let client = if needs_api { Some(kube_client(&ClientOptions::default()).await?) } else { None };

    let (mut publisher, policy) = PolicyPublisher::new(metrics.clone());
    match audiences_of_token_file(&args.service_account_token) {
        Ok(audiences) => {
            tracing::info!(?audiences, "learned the API server audiences from the service-account token");
            metrics.api_server_audiences(&audiences);
            publisher.learn_api_server_audiences(audiences);
        }
        Err(err) => tracing::warn!(
            error = %err,
            "could not learn the API server audiences; only the policy's apiServerAudiences are used"
        ),
    }
    match (&args.policy.policy, &args.policy.policy_configmap, &client) {
        (Some(file), _, _) => {
            source::load_file(file, &file.display().to_string(), &mut publisher).await;
            tokio::spawn(source::watch_file(file.clone(), args.reload_interval, publisher));
        }
        (None, Some(configmap), Some(client)) => {
            tokio::spawn(source::watch_configmap(client.clone(), configmap.clone(), publisher));
        }
        _ => unreachable!("clap requires --policy or --policy-configmap, and a client for the ConfigMap"),
    }

    match client.filter(|_| args.objects.is_empty()) {
        Some(client) => {
            let options = LiveOptions { fallback_timeout: args.lookup_timeout, ..LiveOptions::default() };
            serve_with(&args, policy, LiveCluster::start(client, options, metrics.clone()), metrics).await
        }
        None => serve_with(&args, policy, Arc::new(load_objects(&args.objects, &[])?), metrics).await,
    }
}

async fn serve_with<C: Cluster + Send + Sync + 'static>(
    args: &ServeArgs,
    policy: PolicyReceiver,
    cluster: Arc<C>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ExitCode> {
    let certificates = CertificateFiles { cert: args.tls_cert.clone(), key: args.tls_key.clone() };
    let config = ServerConfig {
        listen: args.listen,
        admin_listen: args.admin_listen,
        client_ca: args.client_ca.clone(),
        http2: args.http2,
        max_in_flight: args.max_in_flight,
        reload_interval: args.reload_interval,
        handshake_timeout: args.handshake_timeout,
        header_read_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        drain_delay: args.drain_delay,
        shutdown_timeout: args.shutdown_timeout,
        ..ServerConfig::new(certificates)
    };
    tracing::info!(config = ?config, policy = ?args.policy, objects = ?args.objects, "starting");
    let running = match server::start(config, policy, cluster, metrics).await {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("error: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    server::termination_signal().await;
    running.shutdown();
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("--log")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn run_review(args: ReviewArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(&args.policy)?;
    let cluster = load_objects(&args.objects, &[])?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).context("reading the AdmissionReview from stdin")?;
    let webhook = match args.webhook {
        WebhookArg::Validate => Webhook::Validate,
        WebhookArg::Mutate => Webhook::Mutate,
    };
    match review::review(&body, webhook, &policy, &cluster).await {
        Reply::Review { body, .. } => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&body).and_then(|()| stdout.write_all(b"\n")).context("writing the response")?;
            Ok(ExitCode::SUCCESS)
        }
        Reply::BadRequest(message) => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(&args.policy)?;
    let documents = manifest::load_paths(&args.paths)?;
    let cluster = load_objects(&args.objects, &documents)?;
    let options = CheckOptions { default_namespace: &args.namespace, mutate_pods_first: true };
    let report = tokengate::check::check(&policy, &documents, &cluster, options).await;
    print_report(&report, args.output)
}

async fn run_audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client =
        kube_client(&ClientOptions { kubeconfig: args.kubeconfig.clone(), context: args.context.clone() }).await?;
    let policy = match &args.policy {
        PolicySourceArgs { policy: Some(file), .. } => load_policy(file)?,
        PolicySourceArgs { policy_configmap: Some(configmap), .. } => {
            let text = source::fetch_configmap_policy(client.clone(), configmap).await.map_err(anyhow::Error::msg)?;
            Policy::parse(&text).map_err(|err| anyhow::anyhow!("ConfigMap {configmap}: {err}"))?
        }
        _ => unreachable!("clap requires --policy or --policy-configmap"),
    };
    let progress = |kind: &str, count: usize| eprintln!("listed {count} {kind} object(s)");
    let audit = tokengate::audit::audit(client, &policy, args.namespace.as_deref(), progress)
        .await
        .map_err(|err| anyhow::anyhow!("listing the cluster: {err}"))?;
    let code = print_report(&audit.report, args.output)?;
    for unread in &audit.unread {
        eprintln!("error: could not list {}: {}", unread.kind, unread.reason);
    }
    if !audit.unread.is_empty() {
        eprintln!("the audit is incomplete: {} kind(s) could not be listed", audit.unread.len());
        return Ok(ExitCode::from(EXIT_UNREADABLE));
    }
    Ok(code)
}

fn print_report(report: &Report, output: OutputFormat) -> anyhow::Result<ExitCode> {
    match output {
        OutputFormat::Text => {
            print!("{}", report.to_text());
            eprintln!(
                "checked {} object(s): {} violation(s), policy mode {}",
                report.checked,
                report.violations.len(),
                report.mode
            );
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report).context("encoding the report")?),
    }
    Ok(if report.fails() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn validate_policy(file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match Policy::parse(&text) {
        Ok(policy) => {
            println!("{}: valid", file.display());
            for warning in policy.warnings() {
                eprintln!("{}: warning: {warning}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            for problem in err.problems() {
                println!("{}: {problem}", file.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load_policy(file: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading policy {}", file.display()))?;
    Policy::parse(&text).map_err(|err: PolicyError| anyhow::anyhow!("{}: {err}", file.display()))
}

/// The offline cluster: objects from `--objects` files plus those found among manifests.
fn load_objects(files: &[PathBuf], documents: &[Document]) -> anyhow::Result<ObjectStore> {
    let mut store = ObjectStore::default();
    for (file, document) in files.iter().map(|f| (f, manifest::load_paths(std::slice::from_ref(f)))) {
        for document in document? {
            store.insert(&document.object).with_context(|| format!("reading objects from {}", file.display()))?;
        }
    }
    // A manifest that does not decode is reported by the check itself.
    for document in documents {
        let _ = store.insert(&document.object);
    }
    Ok(store)
}
