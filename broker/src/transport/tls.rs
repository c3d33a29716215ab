//! TLS for `mqtts` and `wss` listeners (rustls with the ring provider): TLS 1.2 and 1.3
//! only, certificate chain and key from PEM files, and with a CA file, clients must show a
//! certificate that CA issued.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{version, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("listener {0}: a TLS listener needs cert_file and key_file")]
    MissingFiles(SocketAddr),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: no {what} found in the PEM file")]
    Empty { path: String, what: &'static str },
    #[error("TLS setup with {path}: {message}")]
    Tls { path: String, message: String },
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::Read {
        path: path.display().to_string(),
        error: source,
    }
}

/// The certificates of a PEM file, in order.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = std::fs::read(path).map_err(read_error(path))?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error(path))?;
    if certificates.is_empty() {
        return Err(TransportError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = std::fs::read(path).map_err(read_error(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(read_error(path))?
        .ok_or_else(|| TransportError::Empty {
            path: path.display().to_string(),
            what: "private key",
        })
}

/// A TLS acceptor for a listener. `client_ca`: require client certificates issued by it.
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TransportError> {
    let tls_error = |path: &Path, message: String| TransportError::Tls {
        path: path.display().to_string(),
        message,
    };
    let provider = Arc::new(default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|error| tls_error(cert_file, error.to_string()))?;
    let builder = match client_ca {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for certificate in load_certificates(ca_file)? {
                roots
                    .add(certificate)
                    .map_err(|error| tls_error(ca_file, error.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| tls_error(ca_file, error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certificates(cert_file)?, load_private_key(key_file)?)
        .map_err(|error| tls_error(key_file, error.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let Err(error) = acceptor(&missing, &missing, None) else {
            panic!("a missing file is accepted");
        };
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("writes");
        let Err(error) = acceptor(&empty, &empty, None) else {
            panic!("a file without certificates is accepted");
        };
        assert!(error.to_string().contains("no certificate"), "{error}");
    }
}
