//! The response body: generated content or a fixed buffer, with byte accounting,
//! throttling and injected aborts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::content::fill_content;
use crate::server::ConnCtl;
use crate::{LiveRecord, Shared};

/// Large enough to amortise per-frame overhead at >1 GB/s, small enough to stay in L2.
const CHUNK: usize = 256 * 1024;
/// Minimum throttled chunk: smaller would only add wake-ups.
const MIN_RATE_CHUNK: usize = 1024;

/// Where the counters of one response live.
#[derive(Clone)]
pub(crate) struct Meter {
    pub(crate) record: Arc<LiveRecord>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Arc<ConnCtl>,
}

impl Meter {
    fn add(&self, n: u64) {
        self.record.body_bytes_sent.fetch_add(n, Ordering::Relaxed);
        self.shared.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
}

enum Source {
    Fixed(Bytes),
    /// Content starting at `offset` of the resource with effective seed `seed`.
    Content {
        seed: u64,
        offset: u64,
        buf: BytesMut,
    },
}

/// Options of a content body.
#[derive(Default)]
pub(crate) struct Shaping {
    /// Stop (and abort the connection) after this many body bytes.
    pub(crate) stop_at: Option<u64>,
    /// Bytes per second.
    pub(crate) rate: Option<u64>,
    /// Omit the exact length so hyper uses chunked transfer encoding.
    pub(crate) chunked: bool,
}

pub(crate) struct ResponseBody {
    source: Source,
    /// Length of the body if nothing goes wrong (what Content-Length declares).
    total: u64,
    /// Bytes to hand over before ending; below `total` means "then abort".
    stop_at: u64,
    sent: u64,
    chunk: usize,
    chunked: bool,
    pacer: Option<Pacer>,
    meter: Meter,
}

impl ResponseBody {
    pub(crate) fn fixed(data: Bytes, meter: Meter) -> Self {
        let total = data.len() as u64;
        Self {
            source: Source::Fixed(data),
            total,
            stop_at: total,
            sent: 0,
            chunk: usize::MAX,
            chunked: false,
            pacer: None,
            meter,
        }
    }

    pub(crate) fn empty(meter: Meter) -> Self {
        Self::fixed(Bytes::new(), meter)
    }

    /// `len` bytes of content of effective seed `seed`, starting at `offset`.
    pub(crate) fn content(
        seed: u64,
        offset: u64,
        len: u64,
        shaping: Shaping,
        meter: Meter,
    ) -> Self {
        let chunk = match shaping.rate {
            // ~20 chunks per second keeps throttled progress smooth for clients that
            // measure speed or stall timeouts.
            Some(rate) => usize::try_from(rate / 20)
                .unwrap_or(CHUNK)
                .clamp(MIN_RATE_CHUNK, CHUNK),
            None => CHUNK,
        };
        Self {
            source: Source::Content {
                seed,
                offset,
                buf: BytesMut::new(),
            },
            total: len,
            stop_at: shaping.stop_at.map_or(len, |s| s.min(len)),
            sent: 0,
            chunk,
            chunked: shaping.chunked,
            pacer: shaping.rate.map(Pacer::new),
            meter,
        }
    }

    fn next_chunk(&mut self) -> Bytes {
        let remaining = self.stop_at - self.sent;
        let n = usize::try_from(remaining).map_or(self.chunk, |r| r.min(self.chunk));
        match &mut self.source {
            Source::Fixed(data) => {
                // `sent` never exceeds the fixed buffer's length, so it fits in usize.
                let start = self.sent as usize;
                data.slice(start..start + n)
            }
            Source::Content { seed, offset, buf } => {
                // Reclaims the previous allocation if hyper has already written and
                // dropped the last chunk, so steady state needs no new allocation.
                buf.reserve(n);
                buf.resize(n, 0);
                fill_content(*seed, *offset + self.sent, &mut buf[..]);
                buf.split().freeze()
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.sent >= this.stop_at {
            if this.stop_at < this.total {
                // Not an error frame: hyper would discard its unflushed buffer. The IO
                // wrapper fails the connection once everything before is written, and
                // hyper calls its flush right after this Pending, so no waker is needed.
                this.meter.conn.abort_after_flush();
                return Poll::Pending;
            }
            return Poll::Ready(None);
        }
        if let Some(pacer) = &mut this.pacer {
            ready!(pacer.poll_ready(this.sent, cx));
        }
        let chunk = this.next_chunk();
        let n = chunk.len() as u64;
        this.sent += n;
        this.meter.add(n);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.total - self.sent)
        }
    }
}

/// Paces a body to an average rate measured from its first byte, so that scheduling
/// jitter in one sleep is made up by the next instead of accumulating.
struct Pacer {
    rate: u64,
    start: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            start: None,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    fn poll_ready(&mut self, sent: u64, cx: &mut Context<'_>) -> Poll<()> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs_f64(sent as f64 / self.rate as f64);
        if due <= Instant::now() {
            return Poll::Ready(());
        }
        if self.sleep.deadline() != due {
            self.sleep.as_mut().reset(due);
        }
        self.sleep.as_mut().poll(cx)
    }
}
