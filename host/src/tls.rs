//! The TLS client settings shared by every connection weir opens itself (the AWS SDKs bring their own):
//! rustls on ring, the public web roots, and the certificates of an optional CA file.

use std::path::Path;

/// A rustls client configuration trusting the public web roots and the PEM certificates of `ca_file`;
/// errors name `field` (the setting that gave the file).
pub fn client_config(ca_file: Option<&Path>, field: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |e: String| format!("{field} {}: {e}", path.display());
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
