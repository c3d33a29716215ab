//! Client certificates the configuration names, checked when it is loaded rather than at
//! the first connection: readable, the key belongs to the certificate, and valid now.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};

/// A certificate that ends sooner than this is reported.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Checks the certificate chain in `cert_file` and the private key in `key_file` at
/// `now`: the reason when they cannot be used, or a warning when the certificate ends
/// within [`EXPIRY_WARNING_DAYS`].
pub(super) fn check_pair(
    cert_file: &Path,
    key_file: &Path,
    now: SystemTime,
) -> Result<Option<String>, String> {
    let chain = read_chain(cert_file)?;
    let key = rustls_pemfile::private_key(&mut open(key_file)?)
        .map_err(|e| format!("{}: {e}", key_file.display()))?
        .ok_or_else(|| format!("{} holds no PEM private key", key_file.display()))?;
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: not a usable private key: {e}", key_file.display()))?;
    let leaf = chain[0].clone();
    // Only a proven mismatch is refused: a key that cannot tell its public half
    // (`InconsistentKeys::Unknown`) is left to the broker to judge.
    let keys = CertifiedKey::new(chain, signing_key).keys_match();
    if let Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) = keys {
        return Err(format!(
            "the private key in {} does not belong to the certificate in {}",
            key_file.display(),
            cert_file.display()
        ));
    }
    validity(cert_file, &leaf, now)
}

fn read_chain(cert_file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = rustls_pemfile::certs(&mut open(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    Ok(chain)
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Whether `now` lies in the certificate's validity period, and how close its end is.
fn validity(
    cert_file: &Path,
    leaf: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<Option<String>, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", cert_file.display()))?;
    let validity = certificate.validity();
    let now = now
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_secs()).ok())
        .unwrap_or(i64::MAX);
    let shown = cert_file.display();
    if now < validity.not_before.timestamp() {
        return Err(format!(
            "the certificate in {shown} is not valid before {}",
            validity.not_before
        ));
    }
    let left = validity.not_after.timestamp() - now;
    if left < 0 {
        return Err(format!(
            "the certificate in {shown} expired on {}",
            validity.not_after
        ));
    }
    let days = left / 86_400;
    Ok((days < EXPIRY_WARNING_DAYS).then(|| {
        format!(
            "the certificate in {shown} expires on {} (in {days} days)",
            validity.not_after
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use std::time::Duration;

    /// A self-signed certificate valid from `from` to `until` (Unix seconds), and its key.
    fn write_pair(
        dir: &Path,
        name: &str,
        from: i64,
        until: i64,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn at(seconds: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap())
    }

    #[test]
    fn a_valid_pair_passes_and_one_ending_soon_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "good", NOW - DAY, NOW + 365 * DAY);
        assert_eq!(check_pair(&cert, &key, at(NOW)), Ok(None));
        let warning = check_pair(&cert, &key, at(NOW + 350 * DAY))
            .unwrap()
            .expect("a warning");
        assert!(
            warning.contains("expires on") && warning.contains("(in 15 days)"),
            "{warning}"
        );
    }

    #[test]
    fn an_expired_or_future_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "old", NOW - 10 * DAY, NOW - DAY);
        let error = check_pair(&cert, &key, at(NOW)).unwrap_err();
        assert!(error.contains("expired on"), "{error}");
        let (cert, key) = write_pair(dir.path(), "new", NOW + DAY, NOW + 10 * DAY);
        let error = check_pair(&cert, &key, at(NOW)).unwrap_err();
        assert!(error.contains("not valid before"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "one", NOW - DAY, NOW + 365 * DAY);
        let (_, other_key) = write_pair(dir.path(), "two", NOW - DAY, NOW + 365 * DAY);
        let error = check_pair(&cert, &other_key, at(NOW)).unwrap_err();
        assert!(
            error.contains("does not belong to the certificate"),
            "{error}"
        );
    }

    #[test]
    fn unreadable_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "good", NOW - DAY, NOW + 365 * DAY);
        let missing = dir.path().join("missing.pem");
        let error = check_pair(&missing, &key, at(NOW)).unwrap_err();
        assert!(
            error.starts_with("cannot read") && error.contains("missing.pem"),
            "{error}"
        );
        let error = check_pair(&cert, &cert, at(NOW)).unwrap_err();
        assert!(error.contains("holds no PEM private key"), "{error}");
        let error = check_pair(&key, &key, at(NOW)).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }
}
