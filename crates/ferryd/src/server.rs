//! The socket: accepting connections, the handshake, and one task per connection.
//!
//! Every connection is checked against the daemon's own uid (`SO_PEERCRED`) before a byte is
//! read. A malformed or oversized frame, a wrong protocol version or a missing `hello` gets
//! an error frame and closes that connection only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::frame::{FrameError, read_frame, write_frame};
use ferry_proto::{
    ClientFrame, ErrorInfo, PROTOCOL_REVISION, PROTOCOL_VERSION, Request, ServerFrame,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handlers::{self, Context};

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the answer to `shutdown` may take to reach the client before the daemon stops.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown`.
pub async fn accept_loop(listener: UnixListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let ids = AtomicU64::new(1);
    let uid = rustix::process::getuid().as_raw();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve(stream, id, uid, ctx).await;
        });
    }
}

async fn serve(stream: UnixStream, connection: u64, uid: u32, ctx: Arc<Context>) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's credentials; closing");
            return;
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    if cred.uid() != uid {
        tracing::warn!(
            peer_uid = cred.uid(),
            "refused a connection from another user"
        );
        let _ = write_frame(
            &mut writer,
            &ServerFrame::Error {
                id: None,
                error: ErrorInfo::new(
                    "permission_denied",
                    format!("this daemon serves uid {uid} only"),
                ),
            },
        )
        .await;
        return;
    }

    // All frames to the client go through one queue, written by one task, so responses and
    // events never interleave inside a frame and keep their order.
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerFrame>();
    let outbound = tokio::spawn(async move {
        let mut delivered: HashMap<String, u64> = HashMap::new();
        let mut batch: Vec<u8> = Vec::new();
        while let Some(first) = rx.recv().await {
            // The frames queued by now go out in one write: the events a commit published
            // together reach the client together, with one wake-up on each side.
            let mut next = Some(first);
            let mut closing = false;
            while let Some(frame) = next.take() {
                if !is_duplicate(&mut delivered, &frame) {
                    // A frame that cannot be encoded closes the connection, as an error
                    // frame without an id does once written.
                    let encoded = encode(&mut batch, &frame).await;
                    closing = !encoded || matches!(&frame, ServerFrame::Error { id: None, .. });
                }
                if closing || batch.len() >= BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                let written = writer.write_all(&batch).await;
                batch.clear();
                // One large answer must not keep its buffer for the connection's life.
                batch.shrink_to(BATCH_BYTES);
                if written.is_err() {
                    break;
                }
            }
            if closing {
                break;
            }
        }
    });

    // A `shutdown` request: answered, this connection closed, then the daemon stops.
    let mut stop_daemon = false;
    if let Err(error) = handshake(&mut reader, &tx).await {
        let _ = tx.send(ServerFrame::Error { id: None, error });
    } else {
        let peer = handlers::Peer {
            connection,
            pid: cred.pid(),
            outbound: tx.clone(),
        };
        loop {
            match read_frame::<ClientFrame>(&mut reader).await {
                Ok(ClientFrame::Request { id, request }) => {
                    let shutdown = matches!(request, Request::Shutdown);
                    if let Some(frame) = handlers::handle(&ctx, &peer, id, request).await {
                        let _ = tx.send(frame);
                    }
                    if shutdown {
                        stop_daemon = true;
                        break;
                    }
                }
                Ok(ClientFrame::Hello { .. }) => {
                    let _ = tx.send(ServerFrame::Error {
                        id: None,
                        error: ErrorInfo::new("protocol_error", "hello sent twice"),
                    });
                    break;
                }
                Err(FrameError::Closed | FrameError::Io(_)) => break,
                Err(e @ (FrameError::TooLarge(_) | FrameError::Malformed(_))) => {
                    let code = match e {
                        FrameError::TooLarge(_) => "frame_too_large",
                        _ => "malformed_frame",
                    };
                    tracing::info!(connection, error = %e, "closing a connection");
                    let _ = tx.send(ServerFrame::Error {
                        id: None,
                        error: ErrorInfo::new(code, e.to_string()),
                    });
                    break;
                }
            }
        }
    }
    ctx.hub.detach_all(connection);
    drop(tx);
    // Every frame queued for this connection (the answer to `shutdown` too) is written
    // before the writer ends; a client that reads nothing does not hold a shutdown up.
    if stop_daemon {
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, outbound).await;
        tracing::info!(connection, "shutdown requested");
        ctx.stop.cancel();
    } else {
        let _ = outbound.await;
    }
}

/// Bytes of frames gathered before a write starts (a frame is never split, so a write may
/// exceed this by one frame).
const BATCH_BYTES: usize = 256 * 1024;

/// Whether `frame` is a journaled event this connection has already been sent (the same
/// event can come from the replay and from live delivery); records it otherwise.
fn is_duplicate(delivered: &mut HashMap<String, u64>, frame: &ServerFrame) -> bool {
    if let ServerFrame::Event(e) = frame
        && let Some(seq) = e.seq
    {
        let last = delivered.entry(e.session.clone()).or_insert(0);
        if seq <= *last {
            return true;
        }
        *last = seq;
    }
    false
}

/// Appends `frame` to `batch`; an answer too big for a frame becomes an error the client can
/// act on. False if nothing could be encoded.
async fn encode(batch: &mut Vec<u8>, frame: &ServerFrame) -> bool {
    // Nothing is appended unless the whole frame is: the size is checked before any byte,
    // and writing into a `Vec` does not fail.
    match write_frame(batch, frame).await {
        Ok(()) => true,
        Err(FrameError::TooLarge(len)) => {
            let id = match frame {
                ServerFrame::Response { id, .. } => Some(*id),
                _ => None,
            };
            let error = ErrorInfo::new(
                "response_too_large",
                format!("the answer would take {len} bytes, more than a frame holds"),
            );
            write_frame(batch, &ServerFrame::Error { id, error })
                .await
                .is_ok()
        }
        Err(_) => false,
    }
}

async fn handshake(
    reader: &mut tokio::net::unix::OwnedReadHalf,
    tx: &mpsc::UnboundedSender<ServerFrame>,
) -> Result<(), ErrorInfo> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame::<ClientFrame>(reader))
        .await
        .map_err(|_| ErrorInfo::new("handshake_timeout", "no hello within 10 s"))?;
    match hello {
        Ok(ClientFrame::Hello { protocol, client }) if protocol == PROTOCOL_VERSION => {
            tracing::debug!(%client, "client connected");
            let _ = tx.send(ServerFrame::Welcome {
                protocol: PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                revision: PROTOCOL_REVISION,
            });
            Ok(())
        }
        Ok(ClientFrame::Hello { protocol, .. }) => Err(ErrorInfo::new(
            "unsupported_protocol",
            format!("protocol {protocol} is not supported; this daemon speaks {PROTOCOL_VERSION}"),
        )),
        Ok(ClientFrame::Request { .. }) => Err(ErrorInfo::new(
            "handshake_required",
            "the first frame must be hello",
        )),
        Err(e) => Err(ErrorInfo::new("malformed_frame", e.to_string())),
    }
}
