//! The `tokengate` binary: parse the command line, run the subcommand, map outcomes to exit codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use tokengate::cli::{CheckArgs, Cli, Command, OutputFormat, PolicyCommand, ReviewArgs, WebhookArg};
use tokengate::cluster::ObjectStore;
use tokengate::manifest::{self, Document};
use tokengate::policy::{Policy, PolicyError};
use tokengate::review::{self, Reply, Webhook};

/// Exit status for input that cannot be read (unreadable files, invalid policy).
const EXIT_UNREADABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime starts");
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Review(args) => run_review(args).await,
            Command::Check(args) => run_check(args).await,
            Command::Policy(PolicyCommand::Validate { file }) => validate_policy(&file),
        }
    });
    outcome.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(EXIT_UNREADABLE)
    })
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
    let report = tokengate::check::check(&policy, &documents, &cluster, &args.namespace).await;
    match args.output {
        OutputFormat::Text => {
            print!("{}", report.to_text());
            eprintln!(
                "checked {} object(s): {} violation(s), policy mode {}",
                report.checked,
                report.violations.len(),
                report.mode
            );
        }
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?),
    }
    Ok(if report.fails() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn validate_policy(file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match Policy::parse(&text) {
        Ok(_) => {
            println!("{}: valid", file.display());
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
    for document in manifest::load_paths(files)? {
        store.insert(&document.object).with_context(|| format!("reading objects from {}", document.file.display()))?;
    }
    // A manifest that does not decode is reported by the check itself.
    for document in documents {
        let _ = store.insert(&document.object);
    }
    Ok(store)
}
