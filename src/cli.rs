//! The command line: subcommands and flags, each documented for `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}
