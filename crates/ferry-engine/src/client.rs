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
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Proxies; [`ProxyConfig::from_env`] by default.
    pub proxy: ProxyConfig,
    /// Extra trusted root certificates (PEM), besides the system's.
    pub extra_roots_pem: Vec<Vec<u8>>,
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
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(30),
        }
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
