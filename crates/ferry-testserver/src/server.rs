//! Accepting connections and driving hyper on them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::{Shared, routes};

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            // Fires on an explicit shutdown and when the handle is dropped.
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Small responses (redirects, errors) should not wait for Nagle.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, tls.clone(), Arc::clone(&shared)));
            }
            Err(e) => {
                // Typically EMFILE under a stress test: back off instead of spinning.
                eprintln!("ferry-testserver: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let ctl = Arc::new(ConnCtl::default());
    match tls {
        None => {
            serve_http(
                AbortableIo::new(stream, Arc::clone(&ctl)),
                ctl,
                shared,
                false,
            )
            .await
        }
        Some(acceptor) => {
            // A failed handshake is expected whenever a test checks that an untrusted
            // certificate is refused; there is nobody to report it to.
            if let Ok(stream) = acceptor.accept(stream).await {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_http(AbortableIo::new(stream, Arc::clone(&ctl)), ctl, shared, h2).await;
            }
        }
    }
}

/// Serves HTTP/1.1, or HTTP/2 on a connection that negotiated it (where an injected abort
/// ends the whole connection, every stream on it, as a network failure would).
async fn serve_http<S>(io: AbortableIo<S>, ctl: Arc<ConnCtl>, shared: Arc<Shared>, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let ctl = Arc::clone(&ctl);
        // An `Err` (an injected `drop_after` on an upload) makes hyper close the
        // connection without answering.
        async move { routes::handle(req, shared, ctl).await }
    });
    // Errors here are injected aborts or clients hanging up mid-response; both are
    // normal for a fault-injection server and already visible in the request log.
    let io = TokioIo::new(io);
    let _ = match h2 {
        true => {
            http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
        false => http1::Builder::new().serve_connection(io, service).await,
    };
}

/// Per-connection control shared between the response body and the IO wrapper.
#[derive(Default)]
pub(crate) struct ConnCtl {
    abort: AtomicBool,
}

impl ConnCtl {
    /// Requests that the connection be torn down once everything the body has handed
    /// to hyper so far is on the wire.
    pub(crate) fn abort_after_flush(&self) {
        self.abort.store(true, Ordering::Release);
    }
}

/// Wraps a connection so that an injected abort happens *after* the bytes sent so far
/// reached the socket.
///
/// Returning an error from the body stream would make hyper drop its write buffer
/// unflushed, so the client would see fewer bytes than `drop_after` promises (and than
/// the request record claims). hyper only calls the transport's `poll_flush` after it
/// has written out its whole buffer, so failing there aborts at exactly the right point.
struct AbortableIo<S> {
    inner: S,
    ctl: Arc<ConnCtl>,
}

impl<S> AbortableIo<S> {
    fn new(inner: S, ctl: Arc<ConnCtl>) -> Self {
        Self { inner, ctl }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AbortableIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AbortableIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    // Forwarded so hyper keeps its zero-copy queued write strategy for large chunks.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if self.ctl.abort.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "ferry-testserver: injected connection abort",
            )));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
