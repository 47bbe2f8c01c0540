//! TLS policy towards the orchestrator, shared by the gRPC stream, the segment download
//! and the result upload.
//!
//! go-livepeer's orchestrator writes a fresh self-signed ECDSA P-256 certificate on every
//! start, and its stock transcoder skips verification. comine does the same by default,
//! logged, and offers two stricter modes: pin the SHA-256 of the leaf certificate's DER
//! (useful behind a proxy with a stable certificate), or verify against a CA file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::LivepeerError;

/// How the orchestrator's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Accept any certificate, as go-livepeer's transcoder does (the O's is self-signed
    /// and changes on every restart). The handshake signature is still verified.
    AcceptSelfSigned,
    /// Accept only a leaf certificate whose DER has this SHA-256.
    PinSha256([u8; 32]),
    /// Verify the chain against these PEM roots, and the host name.
    CaFile(PathBuf),
}

impl TlsPolicy {
    /// Parses a `--orch-cert-sha256` value: 64 hex digits, colons allowed (`openssl x509
    /// -fingerprint -sha256` prints them with colons).
    pub fn parse_pin(s: &str) -> Result<[u8; 32], LivepeerError> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(clean.trim()).map_err(|_| LivepeerError::Config(format!(
            "--orch-cert-sha256 {s:?} is not hex; give the 64-hex-digit SHA-256 of the orchestrator's certificate (openssl x509 -noout -fingerprint -sha256)"
        )))?;
        bytes.try_into().map_err(|_| {
            LivepeerError::Config(format!(
                "--orch-cert-sha256 {s:?} is not 32 bytes; give the full 64-hex-digit SHA-256"
            ))
        })
    }

    pub fn describe(&self) -> String {
        match self {
            TlsPolicy::AcceptSelfSigned => "accepting the orchestrator's self-signed certificate without verification (go-livepeer's default; use --orch-cert-sha256 or --orch-ca-file to verify)".into(),
            TlsPolicy::PinSha256(p) => format!("pinning the orchestrator certificate to sha256 {}", hex::encode(p)),
            TlsPolicy::CaFile(p) => format!("verifying the orchestrator certificate against {}", p.display()),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration for `policy`, advertising `alpn`.
pub fn client_config(
    policy: &TlsPolicy,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, LivepeerError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LivepeerError::Config(format!("TLS setup failed: {e}")))?;
    let mut config = match policy {
        TlsPolicy::AcceptSelfSigned => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier {
                pin: None,
                provider,
            }))
            .with_no_client_auth(),
        TlsPolicy::PinSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier {
                pin: Some(*pin),
                provider,
            }))
            .with_no_client_auth(),
        TlsPolicy::CaFile(path) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, LivepeerError> {
    let bad = |why: String| {
        LivepeerError::Config(format!(
            "--orch-ca-file {}: {why}; give a PEM file with the CA certificate(s) that signed the orchestrator's certificate",
            path.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(roots)
}

/// SHA-256 of a certificate's DER, the value `--orch-cert-sha256` takes.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Accepts any leaf (or only the pinned one) but still checks that the server holds the
/// certificate's key, so a pin cannot be replayed by a man in the middle.
#[derive(Debug)]
struct LeafVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = self.pin {
            let got = fingerprint(end_entity.as_ref());
            if got != pin {
                return Err(rustls::Error::General(format!(
                    "orchestrator certificate sha256 {} does not match --orch-cert-sha256 {}; the orchestrator restarted with a new self-signed certificate or this is not your orchestrator",
                    hex::encode(got),
                    hex::encode(pin)
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
    fn pin_parses_with_and_without_colons() {
        let hexed = "ab".repeat(32);
        assert_eq!(TlsPolicy::parse_pin(&hexed).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(TlsPolicy::parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(TlsPolicy::parse_pin("abcd").is_err());
        assert!(TlsPolicy::parse_pin("zz").is_err());
    }

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let err = client_config(&TlsPolicy::CaFile("/nonexistent/ca.pem".into()), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--orch-ca-file"), "{err}");
    }
}
