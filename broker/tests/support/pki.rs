//! Test certificate authorities made with rcgen, and TLS clients (tokio-rustls) for them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use time::{Duration, OffsetDateTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{version, ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

/// Whether a certificate is valid now or expired yesterday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
}

/// A CA's files, and what it signs.
pub struct Ca {
    pub name: String,
    pub ca_file: PathBuf,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
pub struct Leaf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write CA");
        Self {
            name: name.into(),
            ca_file,
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `<file>.pem/.key`.
    pub fn leaf(&self, file: &str, names: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        let now = OffsetDateTime::now_utc();
        match validity {
            Validity::Current => {
                params.not_before = now - Duration::days(1);
                params.not_after = now + Duration::days(30);
            }
            Validity::Expired => {
                params.not_before = now - Duration::days(30);
                params.not_after = now - Duration::days(1);
            }
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let cert_file = self.dir.join(format!("{}-{file}.pem", self.name));
        let key_file = self.dir.join(format!("{}-{file}.key", self.name));
        std::fs::write(&cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Leaf {
            cert_file,
            key_file,
        }
    }

    /// A server certificate for the loopback address and `localhost`.
    pub fn server(&self, validity: Validity) -> Leaf {
        self.leaf("server", &["127.0.0.1", "localhost"], validity)
    }
}

fn pem_certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).expect("read PEM");
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).expect("read PEM");
    rustls_pemfile::private_key(&mut pem.as_slice())
        .expect("PEM key")
        .expect("a key")
}

/// TLS client settings: the CA to trust, a client certificate, the protocol versions.
pub struct ClientTls<'a> {
    pub trust: &'a Path,
    pub identity: Option<&'a Leaf>,
    pub versions: &'static [&'static SupportedProtocolVersion],
}

const BOTH_VERSIONS: &[&SupportedProtocolVersion] = &[&version::TLS13, &version::TLS12];

impl<'a> ClientTls<'a> {
    pub fn trusting(trust: &'a Path) -> Self {
        Self {
            trust,
            identity: None,
            versions: BOTH_VERSIONS,
        }
    }
}

/// Connects over TLS to `addr` as `127.0.0.1`; the error says why the handshake failed.
pub async fn connect(
    addr: std::net::SocketAddr,
    tls: &ClientTls<'_>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for certificate in pem_certificates(tls.trust) {
        roots.add(certificate).expect("trusted CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(tls.versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match tls.identity {
        Some(leaf) => builder
            .with_client_auth_cert(pem_certificates(&leaf.cert_file), pem_key(&leaf.key_file))
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}
