//! The `tokengate` binary: parse the command line, run the subcommand, map outcomes to exit codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use clap::Parser;
use k8s_openapi::api::core::v1::ObjectReference;

use tokengate::cli::{
    about, AuditArgs, CheckArgs, Cli, Command, ExplainArgs, ExplainFormat, InitArgs, LogFormat, ManArgs,
    ManageWebhooksArgs, OutputFormat, PolicyCommand, PolicySourceArgs, ReviewArgs, ServeArgs, WebhookArg, WebhooksArgs,
};
use tokengate::cluster::audiences::audiences_of_token_file;
use tokengate::cluster::kubeconfig::{self, ClientOptions};
use tokengate::cluster::{Cluster, LiveCluster, ObjectStore};
use tokengate::manifest::{self, Document};
use tokengate::metrics::Metrics;
use tokengate::policy::{Policy, PolicyError};
use tokengate::report::render;
use tokengate::report::{FileError, FileErrorReason, Gate, Report, UnreadKind};
use tokengate::review::{self, Reply, Webhook};
use tokengate::server;
use tokengate::simulate::{self, Extras};
use tokengate::source::{self, PolicyPublisher, PolicyReceiver};
use tokengate::webhooks::manage::{self, ManageOptions};
use tokengate::webhooks::{self, Endpoint};
use tokengate::who_decides::WhoDecides;

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
            Command::Explain(args) => run_explain(args).await,
            Command::Init(args) => run_init(args).await,
            Command::Webhooks(args) => run_webhooks(args),
            Command::Completions(args) => {
                about::completions(args.shell, &mut std::io::stdout().lock());
                Ok(ExitCode::SUCCESS)
            }
            Command::Man(args) => run_man(args),
            Command::Version => {
                print!("{}", about::version());
                Ok(ExitCode::SUCCESS)
            }
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
    let needs_api = args.policy.policy_configmap.is_some() || args.objects.is_empty() || args.webhooks.manage_webhooks;
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

    let manager = match (&client, args.webhooks.manage_webhooks) {
        (Some(client), true) => Some((client.clone(), manage_options(&args, client)?)),
        _ => None,
    };
    match client.filter(|_| args.objects.is_empty()) {
        Some(client) => {
            let cluster = LiveCluster::start(client, args.live_options(), metrics.clone());
            serve_with(&args, policy, cluster, metrics, manager).await
        }
        None => {
            serve_with(
                &args,
                policy,
                Arc::new(load_offline_cluster(&args.objects, &[], "default")?.0),
                metrics,
                manager,
            )
            .await
        }
    }
}

/// `--manage-webhooks` and its settings, typed once.
fn manage_options(args: &ServeArgs, client: &kube::Client) -> anyhow::Result<ManageOptions> {
    let ManageWebhooksArgs {
        webhook_configuration_name,
        webhook_service,
        webhook_url,
        webhook_ca_bundle,
        webhook_annotation,
        ..
    } = &args.webhooks;
    let endpoint = match webhook_url {
        Some(url) => Endpoint::Url(url.clone()),
        None => Endpoint::Service(webhook_service.clone()),
    };
    let webhooks =
        webhook_options(endpoint, webhook_configuration_name, webhook_ca_bundle.as_deref(), webhook_annotation)?;
    let event_target = match (&args.policy.policy_configmap, std::env::var("POD_NAME")) {
        (Some(configmap), _) => Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("ConfigMap".to_string()),
            namespace: Some(configmap.namespace.clone()),
            name: Some(configmap.name.clone()),
            ..ObjectReference::default()
        }),
        (None, Ok(pod)) => Some(ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Pod".to_string()),
            namespace: Some(client.default_namespace().to_string()),
            name: Some(pod),
            ..ObjectReference::default()
        }),
        (None, Err(_)) => None,
    };
    Ok(ManageOptions { event_target, native_policies: args.webhooks.native_policies, ..ManageOptions::new(webhooks) })
}

/// The options shared by `webhooks` and `serve --manage-webhooks`; reads the CA bundle file.
fn webhook_options(
    endpoint: Endpoint,
    name: &str,
    ca_bundle: Option<&Path>,
    annotations: &[(String, String)],
) -> anyhow::Result<webhooks::Options> {
    let ca_bundle = match ca_bundle {
        Some(file) => {
            let pem = std::fs::read(file).with_context(|| format!("reading the CA bundle {}", file.display()))?;
            if !pem.starts_with(b"-----BEGIN") {
                anyhow::bail!("{} is not a PEM file (it should start with -----BEGIN)", file.display());
            }
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        None => None,
    };
    let options = webhooks::Options {
        name: name.to_string(),
        endpoint,
        ca_bundle,
        annotations: annotations.iter().cloned().collect(),
    };
    options.validate()?;
    Ok(options)
}

fn run_webhooks(args: WebhooksArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(&args.policy)?;
    if args.kubernetes_version.is_some() && !args.native && !args.narrowed {
        anyhow::bail!("--kubernetes-version applies to --native and --narrowed only");
    }
    let served = match args.kubernetes_version {
        None => webhooks::native::ServedApis::ALL,
        Some((major, minor)) => webhooks::native::ServedApis::of_version(major, minor).ok_or_else(|| {
            anyhow::anyhow!("--kubernetes-version {major}.{minor}: the API server serves no ValidatingAdmissionPolicy v1 (Kubernetes 1.30+), so nothing can be native: apply the full webhook configurations")
        })?,
    };
    if args.native {
        webhooks::native::check_name(&args.name)?;
        let native = webhooks::native::native_for(&policy, &args.name, served);
        let yaml = webhooks::native::render::render_yaml(&native)?;
        std::io::stdout().lock().write_all(yaml.as_bytes()).context("writing the native policies")?;
        return Ok(ExitCode::SUCCESS);
    }
    let endpoint = match (args.endpoint.service, args.endpoint.url) {
        (Some(service), _) => Endpoint::Service(service),
        (None, Some(url)) => Endpoint::Url(url),
        (None, None) => unreachable!("clap requires --service or --url"),
    };
    let options = webhook_options(endpoint, &args.name, args.ca_bundle.as_deref(), &args.annotation)?;
    let mut configurations = webhooks::configurations(&policy, &options);
    if args.narrowed {
        let native = webhooks::native::native_for(&policy, &args.name, served);
        configurations = webhooks::native::narrow::narrow(&policy, configurations, &native);
    }
    let yaml = webhooks::render_yaml(&policy, &configurations)?;
    let yaml = if args.narrowed { format!("{}{yaml}", webhooks::native::narrow::HEADER) } else { yaml };
    std::io::stdout().lock().write_all(yaml.as_bytes()).context("writing the configurations")?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_with<C: Cluster + Send + Sync + 'static>(
    args: &ServeArgs,
    policy: PolicyReceiver,
    cluster: Arc<C>,
    metrics: Arc<Metrics>,
    manager: Option<(kube::Client, ManageOptions)>,
) -> anyhow::Result<ExitCode> {
    let config = args.server_config();
    tracing::info!(config = ?config, policy = ?args.policy, objects = ?args.objects, "starting");
    let (manager_policy, manager_cluster, manager_metrics) = (policy.clone(), cluster.clone(), metrics.clone());
    let running = match server::start(config, policy, cluster, metrics).await {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("error: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Started only now that the certificate has loaded; it also waits for a policy and synced caches.
    if let Some((client, options)) = manager {
        let ready = move || manager_cluster.is_ready();
        tokio::spawn(manage::run(client, manager_policy, ready, options, manager_metrics));
    }
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
    let (cluster, _) = load_offline_cluster(&args.objects, &[], "default")?;
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
    let gate = Gate { fail_on_warn: args.fail_on_warn, strict: args.strict };
    let text = read_text(&args.policy).context("reading the policy")?;
    let policy = match Policy::parse(&text) {
        Ok(policy) => policy,
        // Every format carries the policy's problems, so CI shows a report.
        Err(err) => return print_report(&policy_problems_report(&args.policy, &err), args.output, gate),
    };
    let exclude = exclude_globs(&args.exclude)?;
    let reading = manifest::Reading { exclude: &exclude, stdin_name: args.stdin_filename.as_deref() };
    let loaded = manifest::load_inputs(&args.paths, reading);
    let (cluster, extras) = load_offline_cluster(&args.objects, &loaded.documents, &args.namespace)?;
    let options = simulate::Options {
        default_namespace: &args.namespace,
        mutate_pods_first: true,
        assume_present: &args.assume_present,
    };
    let mut report = simulate::judge(&policy, &loaded.documents, &cluster, &extras, options).await;
    WhoDecides::new(&policy, &args.native_name).annotate_findings(&mut report);
    report.files = Some(loaded.files);
    let unreadable = loaded.errors.into_iter().map(|e| {
        let place = manifest::Place { file: Some(e.path), ..manifest::Place::default() };
        FileError::at(place, FileErrorReason::Unreadable, e.message)
    });
    report.errors.splice(0..0, unreadable);
    report.warnings = args
        .exclude
        .iter()
        .zip(&loaded.excluded)
        .filter(|(_, count)| **count == 0)
        .map(|(pattern, _)| format!("--exclude {pattern:?} matched no file"))
        .collect();
    print_report(&report, args.output, gate)
}

/// A report of nothing checked whose errors are an invalid policy's problems, each at its line.
fn policy_problems_report(file: &Path, err: &PolicyError) -> Report {
    let mut report = Report::empty("(invalid policy)");
    report.errors = err
        .problems()
        .iter()
        .map(|problem| {
            let place = manifest::Place {
                file: Some(file.to_path_buf()),
                line: problem.position.map(|at| at.line),
                rendered: None,
            };
            FileError::at(place, FileErrorReason::InvalidPolicy, format!("invalid policy: {problem}"))
        })
        .collect();
    report
}

/// `--exclude` globs, matched against whole file paths.
fn exclude_globs(patterns: &[String]) -> anyhow::Result<globset::GlobSet> {
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(globset::Glob::new(pattern).with_context(|| format!("--exclude {pattern:?}"))?);
    }
    Ok(builder.build()?)
}

async fn run_audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client =
        kube_client(&ClientOptions { kubeconfig: args.kubeconfig.clone(), context: args.context.clone() }).await?;
    let policy = match &args.policy {
        PolicySourceArgs { policy: Some(file), .. } => load_policy(file)?,
        PolicySourceArgs { policy_configmap: Some(configmap), .. } => {
            let text = source::fetch_configmap_policy(client.clone(), configmap).await?;
            Policy::parse(&text).map_err(|err| anyhow::anyhow!("ConfigMap {configmap}: {err}"))?
        }
        _ => unreachable!("clap requires --policy or --policy-configmap"),
    };
    let progress = |kind: &str, count: usize| eprintln!("listed {count} {kind} object(s)");
    let audit = tokengate::audit::audit(client, &policy, args.namespace.as_deref(), progress)
        .await
        .map_err(|err| anyhow::anyhow!("listing the cluster: {err}"))?;
    let mut report = audit.report;
    report.unread = audit.unread.into_iter().map(|u| UnreadKind { kind: u.kind, reason: u.reason }).collect();
    print_report(&report, args.output, Gate::default())
}

fn print_report(report: &Report, output: OutputFormat, gate: Gate) -> anyhow::Result<ExitCode> {
    let rendered = render(report, output, gate);
    print!("{}", rendered.stdout);
    eprint!("{}", rendered.stderr);
    Ok(if !report.errors.is_empty() || !report.unread.is_empty() {
        ExitCode::from(EXIT_UNREADABLE)
    } else if report.fails(gate) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn validate_policy(file: &Path) -> anyhow::Result<ExitCode> {
    let text = read_text(file)?;
    let name = file.display().to_string();
    match Policy::parse(&text) {
        Ok(policy) => {
            println!("{name}: valid");
            for warning in policy.warnings() {
                eprintln!("{name}: warning: {warning}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            for problem in err.problems() {
                println!("{}", problem.at(&name));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A file's text; `-` is standard input.
fn read_text(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == manifest::STDIN {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

fn load_policy(file: &Path) -> anyhow::Result<Policy> {
    let text = read_text(file).context("reading the policy")?;
    Policy::parse(&text).map_err(|err: PolicyError| {
        let name = file.display().to_string();
        let problems: Vec<String> = err.problems().iter().map(|p| format!("  {}", p.at(&name))).collect();
        anyhow::anyhow!("the policy {name} is invalid:\n{}", problems.join("\n"))
    })
}

/// The offline cluster: objects from `--objects` files plus those found among manifests, for
/// lookups and for what offline commands read beyond them ([`Extras`]); namespace-less objects
/// are in `default_namespace`.
fn load_offline_cluster(
    files: &[PathBuf],
    documents: &[Document],
    default_namespace: &str,
) -> anyhow::Result<(ObjectStore, Extras)> {
    let mut store = ObjectStore::default();
    let mut objects = Vec::new();
    for file in files {
        for document in manifest::load_paths(std::slice::from_ref(file))? {
            store
                .insert_in(&document.object, default_namespace)
                .with_context(|| format!("reading objects from {}", file.display()))?;
            objects.push(document);
        }
    }
    // A manifest that does not decode is reported by the check itself.
    for document in documents {
        let _ = store.insert_in(&document.object, default_namespace);
    }
    let extras = Extras::from_documents(objects.iter().chain(documents), default_namespace);
    Ok((store, extras))
}

async fn run_explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use tokengate::explain;
    let needs_client = args.pod.is_some() || args.policy.policy_configmap.is_some();
    let client = if needs_client { Some(kube_client(&ClientOptions::default()).await?) } else { None };
    let policy = match (&args.policy, &client) {
        (PolicySourceArgs { policy: Some(file), .. }, _) => load_policy(file)?,
        (PolicySourceArgs { policy_configmap: Some(configmap), .. }, Some(client)) => {
            let text = source::fetch_configmap_policy(client.clone(), configmap).await?;
            Policy::parse(&text).map_err(|err| anyhow::anyhow!("ConfigMap {configmap}: {err}"))?
        }
        _ => unreachable!("clap requires --policy or --policy-configmap, and a client for the ConfigMap"),
    };
    let mut report = match (&args.pod, client) {
        (Some(pod), Some(client)) => {
            let live = explain::live::fetch_pod(client, &pod.namespace, &pod.name).await?;
            let options =
                simulate::Options { default_namespace: &pod.namespace, mutate_pods_first: false, assume_present: &[] };
            explain::explain(&policy, &live.documents, &live.store, &live.extras, options).await
        }
        _ => {
            let documents = manifest::load_paths(&args.paths)?;
            let (cluster, extras) = load_offline_cluster(&args.objects, &documents, &args.namespace)?;
            let options =
                simulate::Options { default_namespace: &args.namespace, mutate_pods_first: true, assume_present: &[] };
            explain::explain(&policy, &documents, &cluster, &extras, options).await
        }
    };
    WhoDecides::new(&policy, &args.native_name).annotate_explained(&mut report);
    match args.output {
        ExplainFormat::Text => {
            print!("{}", report.to_text());
            eprintln!(
                "explained {} object(s): {} violation(s), policy mode {}",
                report.objects.len(),
                report.violations,
                report.mode
            );
        }
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?),
    }
    Ok(if report.fails() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            let written =
                about::man_pages(&dir).with_context(|| format!("writing manual pages to {}", dir.display()))?;
            for page in written {
                println!("{}", page.display());
            }
        }
        None => about::man_page(&mut std::io::stdout().lock()).context("writing the manual page")?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_init(args: InitArgs) -> anyhow::Result<ExitCode> {
    use tokengate::init::{self, InitOptions};
    let mut api_audiences = args.api_audience.clone();
    if api_audiences.is_empty() {
        api_audiences = init::live::token_file_audiences(&args.service_account_token);
    }
    let (documents, origin, unread) = if args.from_cluster {
        let client = kube_client(&ClientOptions::default()).await?;
        let progress = |kind: &str, count: usize| eprintln!("listed {count} {kind} object(s)");
        let documents = init::live::list_cluster(client, progress).await.context("listing the cluster")?;
        (documents, "--from-cluster".to_string(), Vec::new())
    } else {
        read_init_files(&args)?
    };
    let options = InitOptions {
        default_namespace: &args.namespace,
        namespace_globs: args.namespace_globs,
        api_server_audiences: &api_audiences,
    };
    let mut draft = init::draft(&documents, options).await?;
    draft.unread = unread;
    print!("{}", draft.to_yaml(&origin));
    eprintln!(
        "wrote a policy with {} audiences, {} csiDrivers and {} legacyTokens entries",
        draft.audiences.len(),
        draft.csi_drivers.len(),
        draft.legacy_tokens.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `init --from-files`: the objects, the flags as the policy's comment quotes them, and the files
/// that did not parse (each named on stderr as it is found).
fn read_init_files(args: &InitArgs) -> anyhow::Result<(Vec<Document>, String, Vec<String>)> {
    use tokengate::init::files::{self, FilesError};
    let warn = |skipped: &[manifest::ManifestError]| {
        let unread: Vec<String> = skipped.iter().map(files::warning).collect();
        for warning in &unread {
            eprintln!("warning: {warning} (file skipped)");
        }
        unread
    };
    let exclude = exclude_globs(&args.exclude)?;
    let read = match files::read(&args.from_files, &exclude) {
        Ok(read) => read,
        Err(err) => {
            if let FilesError::NoManifest { skipped, .. } = &err {
                warn(skipped);
            }
            return Err(err.into());
        }
    };
    let mut origin = vec!["--from-files".to_string()];
    origin.extend(args.from_files.iter().map(|p| p.display().to_string()));
    for pattern in &args.exclude {
        origin.extend(["--exclude".to_string(), format!("{pattern:?}")]);
    }
    Ok((read.documents, origin.join(" "), warn(&read.skipped)))
}
