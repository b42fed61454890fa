//! TLS 1.3 bound to node identities.
//!
//! Each node presents a self-signed X.509 certificate whose key *is* its ed25519 node
//! key. There is no certificate authority: the verifiers accept a certificate exactly
//! when its subject public key is an ed25519 key (and, when dialling, the one dialled),
//! and rustls checks the handshake signature against that key, so the peer has proven
//! possession of it. Both TCP (tokio-rustls) and QUIC (quinn) use these configurations.

use std::sync::{Arc, Mutex};

use por_protocol::{Keypair, NodeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::TransportError;

/// ALPN protocol id spoken on every connection.
pub const ALPN: &[u8] = b"por/1";

/// The server name used in handshakes (identity is the key, not a name).
pub const SERVER_NAME: &str = "por.node";

/// A node's certificate and key in the forms rustls wants.
#[derive(Debug)]
pub struct Identity {
    id: NodeId,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Makes a self-signed certificate for the node key.
    pub fn new(key: &Keypair) -> Result<Identity, TransportError> {
        // PKCS#8 v1 wrapping of an ed25519 seed (RFC 8410).
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&key.seed());
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| TransportError::Tls(format!("node key: {e}")))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|e| TransportError::Tls(format!("certificate: {e}")))?;
        let cert = params
            .self_signed(&kp)
            .map_err(|e| TransportError::Tls(format!("certificate: {e}")))?;
        let cert = cert.der().clone();
        // Paranoia: the certificate must carry exactly our key.
        if node_id_of(&cert)? != key.id() {
            return Err(TransportError::Tls(
                "certificate key differs from node key".into(),
            ));
        }
        Ok(Identity {
            id: key.id(),
            cert,
            key: pkcs8,
        })
    }

    /// The node this identity proves.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The ed25519 node id in a certificate's subject public key.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, TransportError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TransportError::Tls(format!("peer certificate: {e}")))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(TransportError::Tls(
            "peer certificate key is not ed25519".into(),
        ));
    }
    let bytes: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| TransportError::Tls("peer ed25519 key is not 32 bytes".into()))?;
    Ok(NodeId(bytes))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both verifiers: TLS 1.2 is refused outright.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not spoken".into()))
}

/// Both verifiers: the TLS 1.3 handshake signature, checked with the certificate's key.
fn tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn to_rustls(e: TransportError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// Verifies the server when dialling: it must be the node we dialled.
#[derive(Debug)]
struct DialledNode {
    expected: NodeId,
    seen: SeenIdentity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for DialledNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = node_id_of(end_entity).map_err(to_rustls)?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(got);
        }
        if got != self.expected {
            return Err(rustls::Error::General(format!(
                "peer is {got}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies a dialling client: any node may connect, with an ed25519 certificate.
#[derive(Debug)]
struct AnyNode {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyNode {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        node_id_of(end_entity).map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server-side TLS configuration: present our certificate, require the client's.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AnyNode { provider }))
        .with_single_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Where a dial's verifier records the identity the server presented.
pub type SeenIdentity = Arc<Mutex<Option<NodeId>>>;

/// Client-side TLS configuration for dialling `expected`. The returned slot records
/// which identity the server presented, so a mismatch can be reported precisely.
pub fn client_config(
    identity: &Identity,
    expected: NodeId,
) -> Result<(rustls::ClientConfig, SeenIdentity), TransportError> {
    let provider = provider();
    let seen = Arc::new(Mutex::new(None));
    let verifier = DialledNode {
        expected,
        seen: seen.clone(),
        provider: provider.clone(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok((cfg, seen))
}

/// Turns a failed dial handshake into the most precise error: a wrong identity if the
/// server presented another node's certificate.
pub fn dial_error(
    expected: NodeId,
    seen: &Mutex<Option<NodeId>>,
    e: impl std::fmt::Display,
) -> TransportError {
    match seen.lock().ok().and_then(|s| *s) {
        Some(got) if got != expected => TransportError::WrongIdentity { expected, got },
        _ => TransportError::Handshake(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_key() {
        let k = Keypair::from_seed([3; 32]);
        let id = Identity::new(&k).unwrap();
        assert_eq!(node_id_of(&id.cert).unwrap(), k.id());
        assert!(node_id_of(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
