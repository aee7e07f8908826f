//! Framing: each message is a 4-byte big-endian length followed by that many bytes of UTF-8
//! JSON. Frames longer than [`MAX_FRAME_LEN`] are refused before they are read.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts, in bytes (the length prefix excluded).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// A length prefix above [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// The bytes are not the JSON of an expected message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame and decodes it as `T`.
pub async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Encodes `message` and writes it as one frame.
pub async fn write_frame<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_enforces_the_limit() {
        let (mut a, mut b) = tokio::io::duplex(4 << 20);
        write_frame(&mut a, &serde_json::json!({"x": 1}))
            .await
            .unwrap();
        let v: serde_json::Value = read_frame(&mut b).await.unwrap();
        assert_eq!(v["x"], 1);

        a.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<serde_json::Value>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");

        let big = "x".repeat(MAX_FRAME_LEN);
        assert!(matches!(
            write_frame(&mut a, &big).await,
            Err(FrameError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn reports_garbage_and_a_clean_close() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        let err = read_frame::<serde_json::Value>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        drop(a);
        let err = read_frame::<serde_json::Value>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Closed), "{err}");
    }
}
