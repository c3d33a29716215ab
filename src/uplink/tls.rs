//! rustls client configuration for `mqtts://` (ring provider).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::UplinkError;

/// The CA bundle of Debian-family systems, used when no `ca_file` is given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `upstream.tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that signed the broker's certificate; the system bundle
    /// when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for brokers that
    /// authenticate clients by certificate. Both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Encrypts but does not authenticate the broker:
    /// for tests and commissioning only.
    pub insecure: bool,
}

/// A PEM client certificate (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TlsSettings {
    /// These settings with `certificate` as the client certificate.
    pub(crate) fn with_certificate(&self, certificate: &ClientCertificate) -> TlsSettings {
        TlsSettings {
            cert_file: Some(certificate.cert_file.clone()),
            key_file: Some(certificate.key_file.clone()),
            ..self.clone()
        }
    }
}

pub(crate) fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, UplinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("no usable TLS versions: {e}")))?;
    let builder = if settings.insecure {
        tracing::warn!(
            "TLS CERTIFICATE VERIFICATION IS DISABLED (upstream.tls.insecure: true): the \
             connection is encrypted, but anyone on the network path can impersonate the \
             broker and read every event and token. Use only for tests or commissioning."
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
    } else {
        let ca_file = settings
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(read_certs(&ca_file)?);
        if added == 0 {
            return Err(tls_error(format!(
                "{} holds no usable CA certificate",
                ca_file.display()
            )));
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&settings.cert_file, &settings.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file)?;
            if chain.is_empty() {
                return Err(tls_error(format!(
                    "{} holds no PEM certificate",
                    cert_file.display()
                )));
            }
            let key = rustls_pemfile::private_key(&mut open(key_file)?)
                .map_err(|e| tls_error(format!("{}: {e}", key_file.display())))?
                .ok_or_else(|| {
                    tls_error(format!("{} holds no PEM private key", key_file.display()))
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(format!("client certificate/key: {e}")))?
        }
        _ => {
            return Err(tls_error(
                "cert_file and key_file must be given together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

fn open(path: &Path) -> Result<BufReader<File>, UplinkError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| tls_error(format!("cannot read {}: {e}", path.display())))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))
}

fn tls_error(reason: String) -> UplinkError {
    UplinkError::Tls(reason)
}

/// Skips the certificate chain and name checks but still checks that the server owns
/// the key of the certificate it presented.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = TlsSettings {
            ca_file: Some(tmp.path().join("missing.pem")),
            ..TlsSettings::default()
        };
        let err = client_config(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");

        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&TlsSettings {
            ca_file: Some(empty),
            ..TlsSettings::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no usable CA certificate"), "{err}");
    }

    #[test]
    fn client_certificate_needs_its_key() {
        let err = client_config(&TlsSettings {
            cert_file: Some("client.pem".into()),
            insecure: true,
            ..TlsSettings::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("together"), "{err}");
    }

    #[test]
    fn insecure_mode_builds_without_a_ca() {
        let settings = TlsSettings {
            insecure: true,
            ..TlsSettings::default()
        };
        assert!(client_config(&settings).is_ok());
    }
}
