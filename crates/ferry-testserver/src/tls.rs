//! A throwaway TLS identity per server, and for mutual TLS a throwaway client CA.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A fresh self-signed certificate for "127.0.0.1" and "localhost", and an acceptor
/// using it. Fresh per server so that no test can pass by trusting a stale root.
pub(crate) fn self_signed_acceptor() -> io::Result<(TlsAcceptor, String)> {
    let (acceptor, pem, _) = acceptor(false, false)?;
    Ok((acceptor, pem))
}

/// As [`self_signed_acceptor`], offering HTTP/2 first.
pub(crate) fn h2_acceptor() -> io::Result<(TlsAcceptor, String)> {
    let (acceptor, pem, _) = acceptor(false, true)?;
    Ok((acceptor, pem))
}

/// As [`self_signed_acceptor`], but the server asks for a client certificate and accepts
/// only one signed by a CA made for this server; also returns a client identity that CA
/// signed (PEM: private key, then certificate).
pub(crate) fn mutual_acceptor() -> io::Result<(TlsAcceptor, String, String)> {
    let (acceptor, pem, identity) = acceptor(true, false)?;
    Ok((acceptor, pem, identity.unwrap_or_default()))
}

fn acceptor(mutual: bool, h2: bool) -> io::Result<(TlsAcceptor, String, Option<String>)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(io::Error::other)?;
    let pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    // Explicit provider: the process-wide default may be unset, or differ between the
    // binaries that link this crate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let (builder, identity) = if mutual {
        let (ca, identity) = client_ca().map_err(io::Error::other)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(io::Error::other)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(io::Error::other)?;
        (builder.with_client_cert_verifier(verifier), Some(identity))
    } else {
        (builder.with_no_client_auth(), None)
    };
    let mut config = builder
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(io::Error::other)?;
    // Advertising only HTTP/1.1 keeps h2-capable clients from trying h2.
    config.alpn_protocols = match h2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Ok((TlsAcceptor::from(Arc::new(config)), pem, identity))
}

/// A fresh CA (its certificate, DER) and a client identity it signed (PEM).
fn client_ca() -> Result<(rustls::pki_types::CertificateDer<'static>, String), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "ferry test client CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["ferry-test-client".to_string()])?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca)?;
    Ok((
        ca.der().clone(),
        format!("{}{}", key.serialize_pem(), cert.pem()),
    ))
}
