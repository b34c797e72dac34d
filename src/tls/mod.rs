//! TLS on every port, with rustls and the ring provider (never aws-lc-rs: its C build
//! costs minutes on a 2-core builder). Certificates are read from disk and re-read when
//! their files change ([`reload`]), so rotating them needs no restart: new connections
//! get the new certificate, open ones keep theirs. TLS 1.2 and 1.3 only.
//!
//! [`listener`] accepts TLS connections for the client, peer and metrics listeners;
//! [`connector`] dials peers (and lets tests and the playground dial nodes) over TLS.
//! Tonic's own TLS is not used: its client configuration is fixed when a channel is
//! made, which would pin a peer's client certificate until restart.

pub mod closing;
pub mod connector;
pub mod listener;
pub mod reload;
pub mod subject;

pub use connector::TlsConnector;
pub use listener::{incoming, ServerConnection, ServerListener, TlsConnectInfo, TlsConnection, TlsIncoming};
pub use reload::ReloadingCertificate;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often at most a certificate's files are looked at for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// ALPN for gRPC listeners (HTTP/2; grpc-go clients insist on it).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1: the metrics listener speaks only that, the client port also (for
/// the JSON gateway).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{flag} {}: {problem}", path.display())]
    File {
        flag: String,
        path: PathBuf,
        problem: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_error(flag: &str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// The ring provider, which every TLS configuration of this crate uses explicitly.
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which only its
/// aws-lc-rs provider has; that one is kept out of the build (see
/// shared/DEPENDENCIES.md), so ring it is, knowingly.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider, for code that builds a rustls
/// configuration without naming one. Harmless when one is installed already.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default(provider().as_ref().clone());
}

/// TLS 1.2 and 1.3; nothing older.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM file, for a trust store.
pub fn load_certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| file_error(flag, path, format!("cannot read it: {error}")))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(flag, path, format!("not a PEM certificate file: {error}")))?;
    if certificates.is_empty() {
        return Err(file_error(flag, path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

/// A trust store of the certificates in a PEM file.
pub fn load_roots(flag: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(flag, path)? {
        roots
            .add(certificate)
            .map_err(|error| file_error(flag, path, format!("not a usable CA certificate: {error}")))?;
    }
    Ok(roots)
}

/// What one server side (client port or peer port) uses, with the flag names that
/// errors mention.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// A certificate signed by the trusted CA is required of every connection.
    pub client_cert_auth: bool,
    /// "" for the client side, "peer-" for the peer side.
    pub flag_prefix: &'static str,
}

/// The certificate and client verification of one side, shared by its listeners (the
/// client side's serves both the client and the metrics listeners).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub certificate: Arc<ReloadingCertificate>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ServerTls {
    /// Reads the files now, so a bad one stops the node at startup with its flag named.
    pub fn load(files: &ServerTlsFiles) -> Result<Self, TlsError> {
        let prefix = files.flag_prefix;
        let provider = provider();
        let certificate = Arc::new(ReloadingCertificate::load(
            (&format!("{prefix}cert-file"), &files.cert_file),
            (&format!("{prefix}key-file"), &files.key_file),
            provider.clone(),
            RELOAD_CHECK_INTERVAL,
        )?);
        let verifier = match &files.trusted_ca_file {
            None if files.client_cert_auth => {
                return Err(TlsError::Setup(format!(
                    "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file (the CA that signs client certificates)"
                )))
            }
            None => None,
            Some(path) => {
                let flag = format!("{prefix}trusted-ca-file");
                let roots = Arc::new(load_roots(&flag, path)?);
                let builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let builder = if files.client_cert_auth {
                    builder
                } else {
                    // Without client-cert-auth a client may still show a certificate;
                    // one that is shown must be signed by the CA.
                    builder.allow_unauthenticated()
                };
                Some(builder.build().map_err(|error| file_error(&flag, path, error))?)
            }
        };
        Ok(Self { certificate, verifier })
    }

    /// A rustls server configuration offering the protocols of `alpn`, in order of
    /// preference.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|error| TlsError::Setup(error.to_string()))?;
        let builder = match &self.verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.certificate.clone());
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A client configuration that trusts the CAs in `trusted_ca` and shows `certificate`
/// (re-read as its files change) when the server asks for one. Offers HTTP/2 (ALPN h2).
pub fn client_config(
    roots: RootCertStore,
    certificate: Option<Arc<ReloadingCertificate>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|error| TlsError::Setup(error.to_string()))?
        .with_root_certificates(roots);
    let mut config = match certificate {
        Some(certificate) => builder.with_client_cert_resolver(certificate),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// True for an `https://` URL.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}
