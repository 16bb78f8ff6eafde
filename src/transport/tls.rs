//! TLS/TCP (RFC 6733 §2.1, §13: TLS from the first octet on a dedicated port, 5658 by convention) with rustls and
//! the ring provider. Peer certificates are verified against the configured CA; a server with a CA also
//! requires and verifies client certificates. Turning verification off is possible for the server side only and
//! is logged at every start.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[tls]`: certificate, key and the CA that signs the peers' certificates.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// Require and verify client certificates on our TLS port (default true).
    #[serde(default = "yes")]
    pub verify_clients: bool,
}

fn yes() -> bool {
    true
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("TLS file {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verification: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File { path: path.clone(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::File { path: path.clone(), why: "no certificate in the file".into() });
    }
    Ok(certs)
}

fn key(path: &PathBuf) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File { path: path.clone(), why: e.to_string() })
}

fn roots(path: &PathBuf) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| TlsError::File { path: path.clone(), why: e.to_string() })?;
    }
    Ok(store)
}

impl TlsConfig {
    /// The acceptor side.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = if self.verify_clients {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&self.ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            tracing::warn!("TLS client certificate verification is disabled (tls.verify_clients = false)");
            builder.with_no_client_auth()
        };
        Ok(Arc::new(builder.with_single_cert(certs(&self.cert)?, key(&self.key)?)?))
    }

    /// The connector side: the peer's certificate must chain to the CA and name the peer's host.
    pub fn client(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&self.ca)?);
        Ok(Arc::new(builder.with_client_auth_cert(certs(&self.cert)?, key(&self.key)?)?))
    }
}
