//! The HTTP client shared by all transfers of an [`crate::Engine`]: TLS, proxies, pooling.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Proxies for plain and TLS requests, and the hosts that bypass them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy for `http://` URLs.
    pub http: Option<String>,
    /// Proxy for `https://` URLs.
    pub https: Option<String>,
    /// Comma-separated hosts, domains (`.example.com`), IPs or CIDRs that go direct; `*` for all.
    pub no_proxy: Option<String>,
}

impl std::fmt::Debug for ProxyConfig {
    // Proxy URLs may carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |p: &Option<String>| p.as_deref().map(redact_userinfo);
        f.debug_struct("ProxyConfig")
            .field("http", &redact(&self.http))
            .field("https", &redact(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

fn redact_userinfo(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl ProxyConfig {
    /// Reads `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (or their lower-case forms) from the
    /// environment. `ALL_PROXY` fills in for either when unset.
    pub fn from_env() -> ProxyConfig {
        ProxyConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`ProxyConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ProxyConfig {
        let var = |upper: &str| {
            lookup(upper)
                .or_else(|| lookup(&upper.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        let all = var("ALL_PROXY");
        ProxyConfig {
            http: var("HTTP_PROXY").or_else(|| all.clone()),
            https: var("HTTPS_PROXY").or(all),
            no_proxy: var("NO_PROXY"),
        }
    }
}

/// Settings of the client every transfer of an engine shares.
#[derive(Clone)]
pub struct ClientConfig {
    /// Proxies; [`ProxyConfig::from_env`] by default.
    pub proxy: ProxyConfig,
    /// Extra trusted root certificates (PEM), besides the system's.
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// The client's identity for mutual TLS: a PEM holding its private key and certificate
    /// chain, sent when a server asks for one.
    pub client_identity_pem: Option<Vec<u8>>,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Time allowed to establish a connection (part of the request timeout's job).
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            proxy: ProxyConfig::from_env(),
            extra_roots_pem: Vec::new(),
            client_identity_pem: None,
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    // The identity holds a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("proxy", &self.proxy)
            .field("extra_roots_pem", &self.extra_roots_pem.len())
            .field("client_identity_pem", &self.client_identity_pem.is_some())
            .field("user_agent", &self.user_agent)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The largest TLS file [`TlsFiles::read`] reads (1 MiB: a root bundle is ~200 KiB).
pub const MAX_TLS_FILE_BYTES: u64 = 1 << 20;

/// The TLS material a session names by path (SPEC §4: extra roots, a client identity), read
/// from its files: what an [`crate::Engine`] for that session is built with, and the key
/// under which one is kept.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// The contents of each root certificates file (PEM).
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// The contents of the identity file (PEM: private key and certificate chain).
    pub client_identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("extra_roots_pem", &self.extra_roots_pem.len())
            .field("client_identity_pem", &self.client_identity_pem.is_some())
            .finish()
    }
}

impl TlsFiles {
    /// Reads the files: each must be a regular file of at most [`MAX_TLS_FILE_BYTES`], named
    /// by an absolute path (a daemon's working directory is not the client's).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] naming a file that cannot be read, or is not such a file.
    pub fn read(
        extra_roots: &[impl AsRef<std::path::Path>],
        client_identity: Option<&std::path::Path>,
    ) -> Result<TlsFiles, Error> {
        let read = |path: &std::path::Path, what: &str| {
            let refuse = |why: String| {
                Error::from(ErrorKind::Config(format!(
                    "the {what} {} {why}",
                    path.display()
                )))
            };
            if !path.is_absolute() {
                return Err(refuse("is not an absolute path".into()));
            }
            let io = |e| {
                Error::with_source(
                    ErrorKind::Config(format!("cannot read the {what} {}", path.display())),
                    e,
                )
            };
            // No FIFO or device to block on (checked before opening), no endless file to
            // fill memory with (the read is bounded too).
            let meta = std::fs::metadata(path).map_err(io)?;
            if !meta.is_file() {
                return Err(refuse("is not a regular file".into()));
            }
            if meta.len() > MAX_TLS_FILE_BYTES {
                return Err(refuse(format!(
                    "is larger than {MAX_TLS_FILE_BYTES} bytes: not a PEM of certificates"
                )));
            }
            let file = std::fs::File::open(path).map_err(io)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, MAX_TLS_FILE_BYTES),
                &mut bytes,
            )
            .map_err(io)?;
            Ok(bytes)
        };
        Ok(TlsFiles {
            extra_roots_pem: extra_roots
                .iter()
                .map(|p| read(p.as_ref(), "root certificates file"))
                .collect::<Result<_, _>>()?,
            client_identity_pem: client_identity
                .map(|p| read(p, "client identity file"))
                .transpose()?,
        })
    }

    /// Nothing to add to the system's roots, and no identity.
    pub fn is_empty(&self) -> bool {
        self.extra_roots_pem.is_empty() && self.client_identity_pem.is_none()
    }

    /// `base` with this material added.
    pub fn apply(&self, base: &ClientConfig) -> ClientConfig {
        let mut config = base.clone();
        config
            .extra_roots_pem
            .extend(self.extra_roots_pem.iter().cloned());
        config
            .client_identity_pem
            .clone_from(&self.client_identity_pem);
        config
    }
}

/// Builds the shared client. Redirects are not followed by reqwest: the engine follows them
/// itself to record the chain, detect loops, refuse downgrades and drop credentials.
pub(crate) fn build(config: &ClientConfig) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(&config.user_agent)
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .no_proxy();
    let no_proxy = config
        .proxy
        .no_proxy
        .as_deref()
        .and_then(reqwest::NoProxy::from_string);
    let proxies = [(&config.proxy.http, false), (&config.proxy.https, true)];
    for (url, tls) in proxies {
        let Some(url) = url else { continue };
        let proxy = if tls {
            reqwest::Proxy::https(url.as_str())
        } else {
            reqwest::Proxy::http(url.as_str())
        }
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Config(format!("bad proxy URL {}", redact_userinfo(url))),
                e,
            )
        })?;
        builder = builder.proxy(proxy.no_proxy(no_proxy.clone()));
    }
    for pem in &config.extra_roots_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            Error::with_source(ErrorKind::Config("unreadable root certificate".into()), e)
        })?;
        if certs.is_empty() {
            return Err(ErrorKind::Config("no certificate in the extra roots PEM".into()).into());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = &config.client_identity_pem {
        let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
            Error::with_source(
                ErrorKind::Config(
                    "unusable client identity (a PEM with the private key and its certificate \
                     chain is needed)"
                        .into(),
                ),
                e,
            )
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Config("cannot build HTTP client".into()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proxy_variables_in_either_case() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let cfg = ProxyConfig::from_lookup(env(&[
            ("http_proxy", "http://p:1"),
            ("HTTPS_PROXY", "http://s:2"),
            ("NO_PROXY", "localhost"),
        ]));
        assert_eq!(cfg.http.as_deref(), Some("http://p:1"));
        assert_eq!(cfg.https.as_deref(), Some("http://s:2"));
        assert_eq!(cfg.no_proxy.as_deref(), Some("localhost"));

        let cfg = ProxyConfig::from_lookup(env(&[("ALL_PROXY", "http://a:3"), ("HTTP_PROXY", "")]));
        assert_eq!(cfg.http.as_deref(), Some("http://a:3"));
        assert_eq!(cfg.https.as_deref(), Some("http://a:3"));
    }

    #[test]
    fn debug_hides_proxy_credentials() {
        let cfg = ProxyConfig {
            http: Some("http://user:secret@proxy:8080".into()),
            ..ProxyConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("user"),
            "{shown}"
        );
    }
}
