//! A certificate and key that follow their files: rotating them on disk (a new pair
//! written in place, or renamed over the old files) takes effect for new connections
//! without a restart. The files are looked at, at most once per check interval, when a
//! handshake asks for the certificate; a changed pair that does not load (half written,
//! key and certificate not matching yet) leaves the old one in use and is tried again at
//! the next check.

use super::{file_error, TlsError};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What tells that a file changed: a rename over it changes the inode, an edit in place
/// the modification time or length.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        length: metadata.len(),
        inode: metadata.ino(),
    })
}

struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked_at: Instant,
}

pub struct ReloadingCertificate {
    cert: (String, PathBuf),
    key: (String, PathBuf),
    provider: Arc<CryptoProvider>,
    check_interval: Duration,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("cert_file", &self.cert.1)
            .field("key_file", &self.key.1)
            .finish_non_exhaustive()
    }
}

/// Reads a certificate chain and its private key; errors name the flag and file.
pub fn load_pair(
    (cert_flag, cert_path): (&str, &Path),
    (key_flag, key_path): (&str, &Path),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = super::load_certificates(cert_flag, cert_path)?;
    let key_bytes =
        std::fs::read(key_path).map_err(|error| file_error(key_flag, key_path, format!("cannot read it: {error}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|error| file_error(key_flag, key_path, format!("no usable PEM private key: {error}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        file_error(
            key_flag,
            key_path,
            format!("does not go with --{cert_flag} {}: {error}", cert_path.display()),
        )
    })
}

impl ReloadingCertificate {
    /// Loads the pair now (an error names the flag and the file).
    pub fn load(
        cert: (&str, &Path),
        key: (&str, &Path),
        provider: Arc<CryptoProvider>,
        check_interval: Duration,
    ) -> Result<Self, TlsError> {
        // Stamps first: a change that lands while loading is then seen at the next check.
        let stamps = (stamp(cert.1), stamp(key.1));
        let loaded = load_pair(cert, key, &provider)?;
        Ok(Self {
            cert: (cert.0.to_string(), cert.1.to_path_buf()),
            key: (key.0.to_string(), key.1.to_path_buf()),
            provider,
            check_interval,
            loaded: Mutex::new(Loaded {
                key: Arc::new(loaded),
                stamps,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The certificate to present now, re-read first if its files changed and the last
    /// look is at least a check interval old.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.checked_at.elapsed() >= self.check_interval {
            loaded.checked_at = Instant::now();
            let stamps = (stamp(&self.cert.1), stamp(&self.key.1));
            if stamps != loaded.stamps {
                match load_pair((&self.cert.0, &self.cert.1), (&self.key.0, &self.key.1), &self.provider) {
                    Ok(pair) => {
                        tracing::info!(cert_file = %self.cert.1.display(), "certificate files changed; new connections use the new certificate");
                        loaded.key = Arc::new(pair);
                        loaded.stamps = stamps;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "certificate files changed but do not load; keeping the previous certificate");
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The end-entity certificate a key presents (for logs and tests).
pub fn end_entity(key: &CertifiedKey) -> Option<&CertificateDer<'static>> {
    key.cert.first()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn make_pair(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn issuer() -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::Issuer::new(params, key)
    }

    fn write(dir: &Path, pair: &Pair) {
        // Written beside and renamed over, as a careful rotation does.
        std::fs::write(dir.join("new.crt"), &pair.cert_pem).unwrap();
        std::fs::write(dir.join("new.key"), &pair.key_pem).unwrap();
        std::fs::rename(dir.join("new.crt"), dir.join("node.crt")).unwrap();
        std::fs::rename(dir.join("new.key"), dir.join("node.key")).unwrap();
    }

    fn load(dir: &Path, interval: Duration) -> ReloadingCertificate {
        ReloadingCertificate::load(
            ("cert-file", &dir.join("node.crt")),
            ("key-file", &dir.join("node.key")),
            super::super::provider(),
            interval,
        )
        .unwrap()
    }

    fn presented(certificate: &ReloadingCertificate) -> Vec<u8> {
        end_entity(&certificate.current()).unwrap().to_vec()
    }

    #[test]
    fn changed_files_are_picked_up_at_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer();
        let (first, second) = (make_pair(&ca), make_pair(&ca));
        write(dir.path(), &first);
        let certificate = load(dir.path(), Duration::ZERO);
        assert_eq!(presented(&certificate), first.der);
        write(dir.path(), &second);
        assert_eq!(presented(&certificate), second.der);
    }

    #[test]
    fn files_are_not_looked_at_again_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer();
        let (first, second) = (make_pair(&ca), make_pair(&ca));
        write(dir.path(), &first);
        let certificate = load(dir.path(), Duration::from_secs(3600));
        write(dir.path(), &second);
        assert_eq!(presented(&certificate), first.der);
    }

    #[test]
    fn a_half_rotated_pair_keeps_the_old_certificate_until_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer();
        let (first, second) = (make_pair(&ca), make_pair(&ca));
        write(dir.path(), &first);
        let certificate = load(dir.path(), Duration::ZERO);
        // The new certificate is there, its key not yet.
        std::fs::write(dir.path().join("node.crt"), &second.cert_pem).unwrap();
        assert_eq!(presented(&certificate), first.der);
        std::fs::write(dir.path().join("node.key"), "garbage").unwrap();
        assert_eq!(presented(&certificate), first.der);
        std::fs::write(dir.path().join("node.key"), &second.key_pem).unwrap();
        assert_eq!(presented(&certificate), second.der);
    }

    #[test]
    fn bad_files_are_refused_at_load_naming_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = issuer();
        let (first, second) = (make_pair(&ca), make_pair(&ca));
        let error = |dir: &Path| {
            ReloadingCertificate::load(
                ("cert-file", &dir.join("node.crt")),
                ("key-file", &dir.join("node.key")),
                super::super::provider(),
                Duration::ZERO,
            )
            .unwrap_err()
            .to_string()
        };
        let message = error(dir.path());
        assert!(
            message.contains("--cert-file") && message.contains("node.crt"),
            "{message}"
        );
        std::fs::write(dir.path().join("node.crt"), &first.cert_pem).unwrap();
        std::fs::write(dir.path().join("node.key"), "not a key").unwrap();
        let message = error(dir.path());
        assert!(
            message.contains("--key-file") && message.contains("node.key"),
            "{message}"
        );
        std::fs::write(dir.path().join("node.key"), &second.key_pem).unwrap();
        let message = error(dir.path());
        assert!(message.contains("does not go with --cert-file"), "{message}");
        std::fs::write(dir.path().join("node.crt"), "no certificate here").unwrap();
        let message = error(dir.path());
        assert!(
            message.contains("--cert-file") && message.contains("no PEM certificate"),
            "{message}"
        );
    }
}
