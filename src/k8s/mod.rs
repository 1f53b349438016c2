//! Kubernetes facts on the ground floor: what the API server, the kubelet and the container
//! runtime do with what tokengate reads, each with the upstream code it follows. Imports nothing
//! from the crate; every other module takes these facts from here instead of restating them.

pub mod api;
pub mod kinds;
pub mod names;
pub mod paths;
pub mod schema;
pub mod tokens;
pub mod volumes;

pub use api::api_group;
pub use paths::{clean_path, is_within};
pub use tokens::AUTOMOUNT_MOUNT_PATH;
