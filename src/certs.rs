//! `shoal cert`: a CA, a node certificate and a client certificate for trying TLS on one
//! machine (the playground's `--tls` uses it). The node certificate serves both server
//! and client use, as members show their peer certificate when they dial each other.
//! Keys are written readable by their owner only. Not a replacement for a real PKI.
//!
//! Running it again keeps the CA and makes new node and client certificates (new keys,
//! new serials): a rotation that running nodes pick up from disk.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The CA's subject is this, followed by a digest of its public key: CAs made apart
/// never share a name (a verifier that finds a CA by the issuer's name then reports an
/// unknown issuer, not a bad signature), and the name of a CA found in the folder
/// follows from its key alone.
const CA_COMMON_NAME: &str = "Shoal local CA";
const CA_ORGANIZATION: &str = "Shoal";
const VALIDITY_DAYS_MAX: u32 = 3650;

#[derive(clap::Args, Debug, Clone)]
pub struct CertArgs {
    /// Folder for the files (ca.crt, ca.key, node.crt, node.key, client.crt, client.key)
    #[arg(long, default_value = "./shoal-certs")]
    pub dir: PathBuf,
    /// More names or IP addresses for the node certificate, besides localhost, 127.0.0.1
    /// and ::1 (comma-separated or repeated)
    #[arg(long = "host", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Common name of the client certificate (with etcd's client-cert auth, the user)
    #[arg(long, default_value = "client")]
    pub client_name: String,
    /// Days the node and client certificates are valid (the CA: ten years)
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("creating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Where the files of one folder are.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl CertFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }

    /// True when every file is there.
    pub fn complete(&self) -> bool {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.node_cert,
            &self.node_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|path| path.is_file())
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` beside `path` and renames it over, so a node reloading the file
/// never reads half of it; `private` files get mode 0600.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let staging = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&staging)
        .map_err(io_error(&staging))?;
    file.write_all(contents.as_bytes()).map_err(io_error(&staging))?;
    file.sync_all().map_err(io_error(&staging))?;
    std::fs::rename(&staging, path).map_err(io_error(path))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, as RFC 5280 asks
    bytes[0] |= 0x01; // and 16 bytes long
    SerialNumber::from(bytes.to_vec())
}

/// FNV-1a: a digest that is the same in every build (std's hasher may change), for
/// telling CAs apart by name; nothing relies on it for security.
fn name_digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash: u64, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn ca_params(key: &KeyPair) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("{CA_COMMON_NAME} {:016x}", name_digest(key.public_key_raw())),
    );
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The CA of the folder: loaded if both files are there (and go together), else made.
/// A CA found there is taken to be one this command made (its name follows from its
/// key); certificates signed with another's key would name the wrong issuer.
fn ca(files: &CertFiles) -> Result<Issuer<'static, KeyPair>, CertError> {
    if files.ca_cert.is_file() && files.ca_key.is_file() {
        crate::tls::reload::load_pair(
            ("ca.crt", &files.ca_cert),
            ("ca.key", &files.ca_key),
            &crate::tls::provider(),
        )
        .map_err(|error| CertError::Invalid(format!("the CA in the folder does not load: {error}")))?;
        let pem = std::fs::read_to_string(&files.ca_key).map_err(io_error(&files.ca_key))?;
        let key = KeyPair::from_pem(&pem)?;
        return Ok(Issuer::new(ca_params(&key)?, key));
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params(&key)?;
    params.serial_number = Some(random_serial());
    validity(&mut params, VALIDITY_DAYS_MAX);
    let certificate = params.self_signed(&key)?;
    write_file(&files.ca_key, &key.serialize_pem(), true)?;
    write_file(&files.ca_cert, &certificate.pem(), false)?;
    Ok(Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
    (cert_path, key_path): (&Path, &Path),
) -> Result<(), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let certificate = params.signed_by(&key, issuer)?;
    // Key first: a node that looks between the two writes sees a key that does not
    // match its certificate, keeps the old pair and looks again.
    write_file(key_path, &key.serialize_pem(), true)?;
    write_file(cert_path, &certificate.pem(), false)
}

/// Makes (or keeps) the CA and makes new node and client certificates in `args.dir`.
pub fn create(args: &CertArgs) -> Result<CertFiles, CertError> {
    if args.days == 0 || args.days > VALIDITY_DAYS_MAX {
        return Err(CertError::Invalid(format!(
            "--days {}: between 1 and {VALIDITY_DAYS_MAX}",
            args.days
        )));
    }
    if args.client_name.is_empty() {
        return Err(CertError::Invalid("--client-name must not be empty".into()));
    }
    std::fs::create_dir_all(&args.dir).map_err(io_error(&args.dir))?;
    let files = CertFiles::in_dir(&args.dir);
    let issuer = ca(&files)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for host in &args.hosts {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|name| name == host) {
            names.push(host.to_string());
        }
    }
    leaf(
        &issuer,
        "shoal node",
        names,
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        args.days,
        (&files.node_cert, &files.node_key),
    )?;
    leaf(
        &issuer,
        &args.client_name,
        Vec::new(),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        args.days,
        (&files.client_cert, &files.client_key),
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> CertArgs {
        CertArgs {
            dir: dir.to_path_buf(),
            hosts: vec!["db.example".into(), "10.0.0.7".into()],
            client_name: "client".into(),
            days: 30,
        }
    }

    fn verify_server(files: &CertFiles, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let roots = crate::tls::load_roots("ca", &files.ca_cert).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), crate::tls::provider())
                .build()
                .unwrap();
        let chain = crate::tls::load_certificates("node", &files.node_cert).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    fn verify_client(files: &CertFiles, cert: &Path) -> Result<(), rustls::Error> {
        let roots = crate::tls::load_roots("ca", &files.ca_cert).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crate::tls::provider())
                .build()
                .unwrap();
        let chain = crate::tls::load_certificates("client", cert).unwrap();
        verifier
            .verify_client_cert(&chain[0], &[], rustls::pki_types::UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn the_node_certificate_serves_its_names_and_both_certificates_are_trusted_clients() {
        let dir = tempfile::tempdir().unwrap();
        let files = create(&args(dir.path())).unwrap();
        assert!(files.complete());
        for name in ["localhost", "127.0.0.1", "::1", "db.example", "10.0.0.7"] {
            verify_server(&files, name).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        assert!(verify_server(&files, "other.example").is_err());
        verify_client(&files, &files.client_cert).unwrap();
        // Members show their node certificate when they dial each other.
        verify_client(&files, &files.node_cert).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.node_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a private key is readable by others");
    }

    #[test]
    fn another_folders_ca_has_another_name_and_its_certificates_are_not_trusted() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files = create(&args(one.path())).unwrap();
        let other_files = create(&args(other.path())).unwrap();
        let error = verify_client(&files, &other_files.client_cert).unwrap_err();
        // Not a bad signature: the verifier does not even find an issuer of that name.
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_second_run_keeps_the_ca_and_makes_new_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let files = create(&args(dir.path())).unwrap();
        let ca = std::fs::read(&files.ca_cert).unwrap();
        let node = std::fs::read(&files.node_cert).unwrap();
        create(&args(dir.path())).unwrap();
        assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca);
        assert_ne!(std::fs::read(&files.node_cert).unwrap(), node);
        verify_server(&files, "localhost").unwrap();
        verify_client(&files, &files.client_cert).unwrap();
    }
}
