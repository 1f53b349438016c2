//! TLS for the webhook port: certificates checked at start-up, re-read on change, and mTLS.
//!
//! The certificate and key files are re-read by path every few seconds, so the kubelet's
//! `..data` symlink swap of a mounted Secret is seen; a file that does not load (half-written,
//! corrupt, key and certificate that do not match) leaves the previous certificate serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::metrics::Metrics;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The serving certificate and key file paths.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded certificate chain and key, with what the metrics and logs need.
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
    /// The file contents it was built from, to notice changes.
    source: (Vec<u8>, Vec<u8>),
}

impl CertificateFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source });
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn build(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(Arc<CertifiedKey>, i64), TlsError> {
        let pem_error = |path: &Path, message: String| TlsError::Pem { path: path.to_path_buf(), message };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&self.cert, format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(pem_error(&self.cert, "holds no certificate".to_string()));
        };
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| pem_error(&self.cert, format!("the first certificate does not parse: {e}")))?
            .1
            .validity()
            .not_after
            .timestamp();
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(&self.key, format!("not a PEM private key: {e}")))?;
        let key_error = |message: String| TlsError::Key { path: self.key.clone(), message };
        let signing_key = any_supported_type(&key).map_err(|e| key_error(format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|e| key_error(format!("does not match the certificate in {}: {e}", self.cert.display())))?;
        Ok((Arc::new(certified), not_after))
    }

    fn load(&self) -> Result<Loaded, TlsError> {
        let source = self.read()?;
        let (key, not_after) = self.build(&source.0, &source.1)?;
        Ok(Loaded { key, not_after, source })
    }
}

/// Hands rustls the current certificate; [`CertificateStore::reload`] swaps it.
pub struct CertificateStore {
    files: CertificateFiles,
    current: RwLock<Loaded>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateStore").field("files", &self.files).finish_non_exhaustive()
    }
}

impl CertificateStore {
    /// Loads and checks the certificate and key; an error here should stop start-up.
    pub fn load(files: CertificateFiles, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let loaded = files.load()?;
        metrics.certificate_loaded(loaded.not_after);
        Ok(Self { files, current: RwLock::new(loaded), metrics })
    }

    /// Re-reads the files; a changed, valid pair replaces the current one, anything else keeps
    /// it. Returns whether the certificate changed.
    pub fn reload(&self) -> bool {
        let source = match self.files.read() {
            Ok(source) => source,
            Err(err) => {
                self.metrics.certificate_failed();
                tracing::warn!(error = %err, "certificate files unreadable, keeping the current certificate");
                return false;
            }
        };
        if self.current.read().expect("certificate lock is never poisoned").source == source {
            return false;
        }
        match self.files.build(&source.0, &source.1) {
            Ok((key, not_after)) => {
                *self.current.write().expect("certificate lock is never poisoned") = Loaded { key, not_after, source };
                self.metrics.certificate_loaded(not_after);
                tracing::info!(not_after, "serving certificate reloaded");
                true
            }
            Err(err) => {
                self.metrics.certificate_failed();
                tracing::warn!(error = %err, "new certificate files do not load (half-written?), keeping the current certificate");
                false
            }
        }
    }

    /// Reloads every `interval`, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let store = self.clone();
            // Reading files blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock is never poisoned").key.clone())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3, ALPN `http/1.1` (and `h2` when enabled), and
/// client certificates required when `client_ca` is given.
pub fn server_config(
    certificates: Arc<CertificateStore>,
    client_ca: Option<&Path>,
    http2: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })?;
                roots.add(cert).map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem { path: path.to_path_buf(), message: "holds no CA certificate".to_string() });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certificates);
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(config)
}
