//! tokengate: governs which service-account tokens a Kubernetes cluster may mint.

pub mod audit;
pub mod cli;
pub mod cluster;
pub mod explain;
pub mod init;
pub mod k8s;
pub mod manifest;
pub mod metrics;
pub mod policy;
pub mod positions;
pub mod report;
pub mod review;
pub mod server;
pub mod simulate;
pub mod source;
pub mod webhooks;
pub mod who_decides;
