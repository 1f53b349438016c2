//! How the commands that talk to a cluster (`serve`, `audit`) find it: a kubeconfig (the
//! `--kubeconfig` file, else `KUBECONFIG`, else `~/.kube/config`, with an optional `--context`),
//! or the in-cluster configuration of a pod. Each problem is reported once, in plain words.

use std::path::{Path, PathBuf};

use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

/// Where the client configuration comes from, as the command line gave it.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// A kubeconfig file to read instead of `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig instead of its current context.
    pub context: Option<String>,
}

/// Why no client could be built. Each variant's message is complete on its own (the kube
/// error it wraps is rendered into it, not chained), so it is printed once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read or does not name a usable context.
    #[error("kubeconfig {message}")]
    Kubeconfig { message: String },
    /// No kubeconfig exists and the process does not run in a pod.
    #[error("no kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) and no in-cluster configuration: {message}")]
    NoConfiguration { message: String },
    /// The client certificate is X.509 version 1, which rustls does not accept.
    #[error(
        "the client certificate {location} is an X.509 version 1 certificate (one without \
         extensions, as `openssl x509 -req` makes unless given -extfile). kubectl accepts it, but \
         the TLS library tokengate uses (rustls with webpki) only accepts version 3 certificates, \
         so tokengate cannot connect with it. Reissue it with extensions, e.g.\n  openssl x509 \
         -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -out client.crt \
         -extfile <(printf \"basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature,keyEncipherment\\nextendedKeyUsage=clientAuth\")\n\
         and point the kubeconfig at the new file (or its client-certificate-data at its base64)"
    )]
    VersionOneCertificate { location: String },
    /// The configuration was read but the client could not be built from it.
    #[error("building the Kubernetes client: {message}")]
    Client { message: String },
}

/// A client for the cluster `options` name (see the module documentation for the order).
pub async fn client(options: &ClientOptions) -> Result<Client, ClientError> {
    let (config, location) = config(options).await?;
    check_client_certificate(&config, &location)?;
    Client::try_from(config).map_err(|err| ClientError::Client { message: err.to_string() })
}

/// The configuration, and where it came from (for messages).
async fn config(options: &ClientOptions) -> Result<(Config, String), ClientError> {
    let explicit = options.kubeconfig.clone();
    let from_env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let default = std::env::var_os("HOME").map(|home| Path::new(&home).join(".kube/config"));
    let source_name = match (&explicit, &from_env, &default) {
        (Some(path), _, _) => path.display().to_string(),
        (None, Some(env), _) => format!("{} (KUBECONFIG)", env.to_string_lossy()),
        (None, None, Some(path)) if path.exists() => path.display().to_string(),
        // Neither a kubeconfig nor a context to look for: a pod's own configuration.
        _ if options.context.is_none() => {
            let config =
                Config::incluster().map_err(|err| ClientError::NoConfiguration { message: err.to_string() })?;
            return Ok((config, "in-cluster configuration".to_string()));
        }
        _ => "~/.kube/config".to_string(),
    };
    // kube's message names the file when it could not be read; otherwise say which one.
    let failed = |err: &dyn std::fmt::Display| {
        let message = err.to_string();
        let path = explicit.as_ref().map(|p| p.display().to_string());
        let named = path.is_some_and(|p| message.contains(&p))
            || from_env.as_ref().is_some_and(|env| message.contains(env.to_string_lossy().as_ref()));
        let message = if named { message } else { format!("{source_name}: {message}") };
        ClientError::Kubeconfig { message }
    };
    let kubeconfig = match &explicit {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|err| failed(&err))?;
    let kube_options = KubeConfigOptions { context: options.context.clone(), ..KubeConfigOptions::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &kube_options).await.map_err(|err| failed(&err))?;
    Ok((config, source_name))
}

/// Refuses a version 1 client certificate with the reason and the fix, before rustls refuses it
/// with "invalid peer certificate: UnsupportedCertVersion" (webpki's `EndEntityCert` parser,
/// which rustls' `with_client_auth_cert` runs to match the key, accepts only version 3).
fn check_client_certificate(config: &Config, source_name: &str) -> Result<(), ClientError> {
    let auth = &config.auth_info;
    let user = "the kubeconfig user";
    let (pem, location) = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => {
            let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(data.trim()) else { return Ok(()) };
            (pem, format!("in client-certificate-data of {user} in {source_name}"))
        }
        (None, Some(file)) => {
            let Ok(pem) = std::fs::read(file) else { return Ok(()) };
            (pem, format!("{file} (client-certificate of {user} in {source_name})"))
        }
        (None, None) => return Ok(()),
    };
    if is_version_one(&pem) {
        return Err(ClientError::VersionOneCertificate { location });
    }
    Ok(())
}

/// Whether the first certificate of a PEM bundle is X.509 version 1. Anything unreadable is left
/// to the TLS library to report.
pub fn is_version_one(pem: &[u8]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem) else { return false };
    X509Certificate::from_der(&pem.contents).is_ok_and(|(_, cert)| cert.version() == X509Version::V1)
}
