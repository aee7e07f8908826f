//! An HTTP/1.1 origin with deterministic content and fault injection, used by every
//! ferry test and by the benchmarks.
//!
//! The server runs on its own thread with its own tokio runtime, so it can be used the
//! same way from synchronous tests and from `#[tokio::test]` (sharing the test's
//! runtime would let a blocked test starve the server, and vice versa).
//!
//! # Endpoints
//!
//! * `GET|HEAD /bytes/<n>`: `n` bytes of [`content`]. Headers: `Content-Length`,
//!   `Accept-Ranges: bytes`, `ETag: "<seed hex>-<n>-g<generation>"`, `Last-Modified`
//!   (2024-01-01 plus `generation` days), `Content-Type: application/octet-stream`.
//!   Single ranges (`a-b`, `a-`, `-suffix`) get 206 + `Content-Range`, unsatisfiable
//!   ones 416 + `Content-Range: bytes */n`; multi-range or malformed `Range` is
//!   ignored. `If-Range` must equal the strong ETag or the `Last-Modified` string
//!   exactly, otherwise the full body is sent with 200. Query parameters (optional,
//!   combinable; booleans are `1`/`true`/`0`/`false`; malformed values get a 400):
//!   - `seed=<u64>` (default 0)
//!   - `ranges=0`: ignore `Range`/`If-Range`, no `Accept-Ranges`
//!   - `bad_range=1`: a 206 always starts at byte 0, whatever start was asked for
//!   - `etag=0`, `lastmod=0`: omit that validator; `weak_etag=1`: `W/"..."`
//!   - `versioned=1`: content, ETag and Last-Modified follow
//!     [`TestServer::set_generation`]
//!   - `rate=<bytes/s>`: throttle, in chunks of rate/20 (1 KiB..256 KiB)
//!   - `drop_after=<bytes>`: abort the connection after that many body bytes
//!   - `short_by=<bytes>`: declare the full length, send that many fewer, abort
//!   - `chunked=1`: no Content-Length (chunked transfer encoding)
//!   - `first_byte_delay_ms=<ms>`: delay before the response head
//!   - `status=<code>`: answer `code` with body `error <code>` instead of content
//!   - `retry_after=<secs>`: `Retry-After` on that error response
//!   - `fail_times=<k>`: `status`, `drop_after`, `short_by` and `first_byte_delay_ms`
//!     apply only to the first `k` requests (any method) with this exact path+query,
//!     counted over the server's life
//!   - `filename=<pct>`: `Content-Disposition: attachment; filename="<decoded>"`
//!   - `filename_star=<pct>`: `...; filename*=UTF-8''<value as given>` (combined with
//!     `filename` into one header if both are present)
//!   - `cd=<pct>`: `Content-Disposition: <decoded>` verbatim (overrides the two above)
//!
//!   Percent-decoding keeps `+` literal. Decoded values containing control characters
//!   other than tab cannot be sent in an HTTP/1.1 header (clients reject the whole
//!   response), so such requests get a 400 explaining why.
//! * `GET /redirect/<k>?to=<pct url>&code=<301|302|303|307|308>`: redirects to
//!   `/redirect/<k-1>?<same query>`, or to the decoded `to` when `k == 0`.
//! * `GET /loop`: 302 to itself.
//! * `GET /echo`: the request headers as a JSON object (lower-case names, repeated
//!   headers joined with ", ").
//! * `PUT|POST /upload/<name>`: reads the whole body and stores it (see
//!   [`TestServer::upload`]); 201 with `{"name":..,"bytes":n,"sha256":"<hex>"}`. A
//!   `multipart/form-data` body is also split into its parts, each stored under
//!   `<name>/<field>` (a later part with the same field replaces an earlier one), and the
//!   reply gains `"parts":[{"field":..,"file_name":..|null,"content_type":..|null,
//!   "bytes":n,"sha256":..}]` in body order; a malformed multipart body gets a 400. Bytes
//!   read are counted in [`RequestRecord::body_bytes_received`]. Query parameters:
//!   - `status=<code>`: after reading the whole body, answer `code` with body
//!     `error <code>` and store nothing
//!   - `retry_after=<secs>`: `Retry-After` on that error response
//!   - `drop_after=<bytes>`: abort the connection, without an answer, once that many
//!     body bytes were read (the read that crosses the line included); store nothing
//!   - `fail_times=<k>`: `status` and `drop_after` apply only to the first `k` requests
//!     with this exact path+query, as for `/bytes`
//! * Anything else: 404 (405 for a known path with the wrong method).
//!
//! Requests in absolute-form (as sent to a proxy) are routed on their path and
//! recorded with the absolute URI.

mod body;
mod content;
mod multipart;
mod range;
mod routes;
mod server;
mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

pub use content::{content, fill_content};

/// A running test server. Dropping it stops accepting, aborts in-flight connections and
/// ends the server thread.
pub struct TestServer {
    addr: SocketAddr,
    tls: bool,
    cert_pem: Option<String>,
    client_identity_pem: Option<String>,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Plain HTTP on 127.0.0.1 with an ephemeral port.
    pub fn start() -> io::Result<TestServer> {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), false)
    }

    /// HTTPS (rustls, ring provider) on 127.0.0.1 with an ephemeral port and a fresh
    /// self-signed certificate for "127.0.0.1" and "localhost" (see [`Self::cert_pem`]).
    pub fn start_tls() -> io::Result<TestServer> {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), true)
    }

    /// As [`Self::start_tls`], but offering HTTP/2 (ALPN `h2`, then `http/1.1`): a client
    /// that speaks it multiplexes its requests over one connection.
    pub fn start_h2() -> io::Result<TestServer> {
        let tls = tls::h2_acceptor()?;
        Self::serve((Ipv4Addr::LOCALHOST, 0).into(), Some(tls))
    }

    /// As [`Self::start_tls`], but the TLS handshake needs a client certificate signed by a
    /// CA made for this server (mutual TLS); [`Self::client_identity_pem`] is one.
    pub fn start_mutual_tls() -> io::Result<TestServer> {
        let (acceptor, pem, identity) = tls::mutual_acceptor()?;
        let mut server = Self::serve((Ipv4Addr::LOCALHOST, 0).into(), Some((acceptor, pem)))?;
        server.client_identity_pem = Some(identity);
        Ok(server)
    }

    /// Binds `addr` and starts serving, plain or TLS.
    pub fn start_on(addr: SocketAddr, tls: bool) -> io::Result<TestServer> {
        let tls = match tls {
            true => Some(tls::self_signed_acceptor()?),
            false => None,
        };
        Self::serve(addr, tls)
    }

    fn serve(
        addr: SocketAddr,
        tls: Option<(tokio_rustls::TlsAcceptor, String)>,
    ) -> io::Result<TestServer> {
        let (acceptor, cert_pem) = tls.map_or((None, None), |(a, p)| (Some(a), Some(p)));
        let tls = acceptor.is_some();

        // Bind synchronously so that bind errors reach the caller and the port is
        // known (and accepting) before `start_on` returns.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-testserver-worker")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };

        let shared = Arc::new(Shared::default());
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ferry-testserver".into())
            .spawn(move || {
                runtime.block_on(server::accept_loop(
                    listener,
                    acceptor,
                    thread_shared,
                    shutdown_rx,
                ));
                // Connections still open belong to a test that is over; do not wait
                // for clients that may never hang up.
                runtime.shutdown_background();
            })?;

        Ok(TestServer {
            addr,
            tls,
            cert_pem,
            client_identity_pem: None,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The bound address (with the actual port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` followed by `path_and_query`
    /// (which should start with '/', or be empty for the bare origin).
    pub fn url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path_and_query}", self.addr)
    }

    /// PEM of the self-signed certificate (TLS servers only).
    pub fn cert_pem(&self) -> Option<String> {
        self.cert_pem.clone()
    }

    /// A client identity the server accepts (mutual TLS servers only): PEM of the private
    /// key, then the certificate.
    pub fn client_identity_pem(&self) -> Option<String> {
        self.client_identity_pem.clone()
    }

    /// Every request seen so far, in arrival order. Status and byte counts are a
    /// snapshot: a response still streaming keeps counting after this returns.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log)
            .iter()
            .map(|r| r.snapshot())
            .collect()
    }

    /// Total response-body bytes handed to connections, over all requests since the
    /// start or the last [`Self::clear_log`].
    pub fn bytes_sent(&self) -> u64 {
        self.shared.bytes_sent.load(Ordering::Relaxed)
    }

    /// Forgets the request log and the byte counter. `fail_times` counters, uploads and
    /// the generation are kept: they are server state, not observations.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
        self.shared.bytes_sent.store(0, Ordering::Relaxed);
    }

    /// Sets the generation of versioned resources (`versioned=1`); it starts at 0.
    pub fn set_generation(&self, generation: u64) {
        self.shared.generation.store(generation, Ordering::Relaxed);
    }

    /// The body stored by the upload endpoint under `name` (a multipart part under
    /// `<name>/<field>`).
    pub fn upload(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.shared.uploads).get(name).cloned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // An error means the accept loop is already gone, which is what we want.
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been reported by the panic hook;
            // re-raising it from Drop could abort the test process.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// One request as the server saw it, and what it answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// The HTTP version, as `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub method: String,
    /// As received: origin-form `/p?q`, or absolute-form `http://host/p?q` when the
    /// client treated this server as a proxy.
    pub uri: String,
    pub path: String,
    /// Raw query string, "" if none.
    pub query: String,
    /// Lower-case names, in the order received (repeated names are grouped at the
    /// position of their first occurrence).
    pub headers: Vec<(String, String)>,
    /// 0 while the response is still being decided (e.g. the upload body is being read).
    pub status: u16,
    /// Body bytes handed to the connection for this response so far (final once the
    /// response ended or was aborted).
    pub body_bytes_sent: u64,
    /// Request-body bytes the server read so far (uploads only; 0 for other endpoints,
    /// which do not read bodies).
    pub body_bytes_received: u64,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// State shared between the [`TestServer`] handle and the connection tasks.
#[derive(Default)]
pub(crate) struct Shared {
    log: Mutex<Vec<Arc<LiveRecord>>>,
    bytes_sent: AtomicU64,
    generation: AtomicU64,
    /// Requests seen per exact path+query carrying `fail_times`.
    fail_counts: Mutex<HashMap<String, u64>>,
    uploads: Mutex<HashMap<String, Vec<u8>>>,
}

impl Shared {
    fn push_record(&self, record: Arc<LiveRecord>) {
        lock(&self.log).push(record);
    }
}

/// The mutable-in-flight version of a [`RequestRecord`]: counters are atomics so that
/// the body stream can update them per chunk while tests read them.
pub(crate) struct LiveRecord {
    version: String,
    method: String,
    uri: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    status: AtomicU16,
    body_bytes_sent: AtomicU64,
    body_bytes_received: AtomicU64,
}

impl LiveRecord {
    fn snapshot(&self) -> RequestRecord {
        RequestRecord {
            version: self.version.clone(),
            method: self.method.clone(),
            uri: self.uri.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            status: self.status.load(Ordering::Relaxed),
            body_bytes_sent: self.body_bytes_sent.load(Ordering::Relaxed),
            body_bytes_received: self.body_bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// Poisoning only means another connection task panicked; the data (a log, counters)
/// is still usable and tests should see it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
