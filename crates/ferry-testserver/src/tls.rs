//! A throwaway TLS identity per server.

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A fresh self-signed certificate for "127.0.0.1" and "localhost", and an acceptor
/// using it. Fresh per server so that no test can pass by trusting a stale root.
pub(crate) fn self_signed_acceptor() -> io::Result<(TlsAcceptor, String)> {
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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(io::Error::other)?;
    // Only HTTP/1.1 is served; advertising it keeps h2-capable clients from trying h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), pem))
}
