//! tokengate: governs which service-account tokens a Kubernetes cluster may mint.

pub mod policy;
pub mod cluster;
pub mod review;
pub mod manifest;
pub mod check;
pub mod cli;
