//! Request bodies read under a byte limit, for the JSON extractors of both services (each maps
//! [`BodyError`] to its own error body). A declared `Content-Length` over the limit is refused
//! before anything is read, and a body without one is cut off as soon as it passes the limit,
//! so at most the limit is ever held in memory. The rest of an oversized body is read and
//! dropped (up to [`DRAIN_CAP`]): a client still sending then gets the 413 instead of a reset
//! connection.

use axum::body::{Body, Bytes};
use futures::StreamExt;

/// Most bytes of an oversized body read and dropped before giving up on the connection.
pub const DRAIN_CAP: usize = 64 << 20;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("failed to read the request body: {0}")]
    Read(String),
}

/// Reads and drops up to `cap` more bytes of `body`.
async fn drain(body: &mut axum::body::BodyDataStream, cap: usize) {
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        seen = seen.saturating_add(chunk.len());
        if seen > cap {
            break;
        }
    }
}

/// The whole of `body` if it is at most `limit` bytes; `declared` is its `Content-Length`.
pub async fn read_limited(
    body: Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        if n <= DRAIN_CAP as u64 {
            drain(&mut stream, DRAIN_CAP).await;
        }
        return Err(BodyError::TooLarge { limit });
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if buf.len().saturating_add(chunk.len()) > limit {
            drain(&mut stream, DRAIN_CAP).await;
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The request's declared `Content-Length`, if it has a valid one.
pub fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<&'static [u8]>) -> Body {
        Body::from_stream(futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
        ))
    }

    #[tokio::test]
    async fn bodies_within_the_limit_are_read_whole() {
        let b = read_limited(chunked(vec![b"ab", b"cd"]), None, 4)
            .await
            .unwrap();
        assert_eq!(&b[..], b"abcd");
        let b = read_limited(Body::from("xyz"), Some(3), 3).await.unwrap();
        assert_eq!(&b[..], b"xyz");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_declared_or_not() {
        // Declared too long: refused whatever follows.
        let e = read_limited(Body::from("x"), Some(5), 4).await.unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: 4 }), "{e}");
        // Not declared: cut off once past the limit.
        let e = read_limited(chunked(vec![b"abc", b"de", b"f"]), None, 4)
            .await
            .unwrap_err();
        assert!(matches!(e, BodyError::TooLarge { limit: 4 }), "{e}");
    }

    #[tokio::test]
    async fn a_failing_body_is_a_read_error() {
        let body = Body::from_stream(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Err(std::io::Error::other("peer went away")),
        ]));
        let e = read_limited(body, None, 10).await.unwrap_err();
        assert!(
            matches!(e, BodyError::Read(ref m) if m.contains("peer went away")),
            "{e}"
        );
    }
}
