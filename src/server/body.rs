//! An apply request's body, streamed: the async side reads its frames within the limits
//! (size, idle time) and hands them through a small bounded channel to a blocking reader,
//! which the receiver reads the batch from. At most [`CHUNKS_IN_FLIGHT`] frames wait
//! between the two, so a request costs the same memory whatever its size.

use std::io::{self, Read};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

/// Frames waiting between the socket and the receiver, per request.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Why a request body could not be read.
#[derive(Debug)]
pub(super) enum BodyError {
    TooLarge,
    Stalled,
    Broken(String),
}

impl BodyError {
    fn to_io(&self) -> io::Error {
        io::Error::other(match self {
            BodyError::TooLarge => "the request body is too large".to_string(),
            BodyError::Stalled => "the request body stalled".to_string(),
            BodyError::Broken(e) => e.clone(),
        })
    }
}

/// The blocking end of a streamed body.
pub(super) struct BodyReader {
    frames: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.frames.blocking_recv() {
                None => return Ok(0),
                Some(frame) => self.current = frame?,
            }
        }
        let n = into.len().min(self.current.len());
        into[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// A channel for one body: the pump's end and the reader's.
pub(super) fn channel() -> (mpsc::Sender<io::Result<Bytes>>, BodyReader) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    (
        tx,
        BodyReader {
            frames: rx,
            current: Bytes::new(),
        },
    )
}

/// Reads `body` into `to` as it arrives, at most `limit` bytes, giving up when it makes no
/// progress for `idle` (a client that trickles or stops cannot hold the request). The
/// reader sees the end of the body only when all of it arrived; otherwise it sees the
/// error. Returns the bytes read. When the reader is gone (it refused the batch
/// already), the rest of the body is read and dropped, within the same limits.
pub(super) async fn pump(
    mut body: Body,
    limit: usize,
    idle: Duration,
    to: mpsc::Sender<io::Result<Bytes>>,
) -> Result<usize, BodyError> {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    let mut read = 0usize;
    let mut discarding = false;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => Err(BodyError::Stalled),
            Ok(None) => return Ok(read),
            Ok(Some(Err(e))) => Err(BodyError::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => Ok(frame),
        };
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) => {
                let _ = to.send(Err(e.to_io())).await;
                return Err(e);
            }
        };
        // Frames already arrived go together: fewer hand-overs to the reader.
        let mut data = data;
        let mut ended = false;
        let mut broken = None;
        if data.len() < GATHER_BYTES {
            let mut gathered = bytes::BytesMut::from(&data[..]);
            while gathered.len() < GATHER_BYTES {
                match body.frame().now_or_never() {
                    Some(Some(Ok(frame))) => {
                        if let Ok(more) = frame.into_data() {
                            gathered.extend_from_slice(&more);
                        }
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    Some(Some(Err(e))) => {
                        broken = Some(BodyError::Broken(e.to_string()));
                        break;
                    }
                    None => break,
                }
            }
            data = gathered.freeze();
        }
        read += data.len();
        if read > limit {
            let _ = to.send(Err(BodyError::TooLarge.to_io())).await;
            return Err(BodyError::TooLarge);
        }
        // A reader gone has refused the batch already: the rest of the body is read
        // and dropped, so that the client, still sending, gets the refusal rather than
        // a broken connection.
        if !discarding && to.send(Ok(data)).await.is_err() {
            discarding = true;
        }
        if ended {
            return Ok(read);
        }
        if let Some(e) = broken {
            let _ = to.send(Err(e.to_io())).await;
            return Err(e);
        }
    }
}

/// Bytes of frames already arrived that go to the reader together.
const GATHER_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: Vec<&'static [u8]>) -> Body {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, io::Error>(Bytes::from_static(c))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn the_reader_gets_every_byte_in_order() {
        let (tx, mut reader) = channel();
        let body = body_of(vec![b"hello ", b"", b"streamed ", b"world"]);
        let read = tokio::task::spawn_blocking(move || {
            let mut all = String::new();
            reader.read_to_string(&mut all).map(|_| all)
        });
        let pumped = pump(body, 1024, Duration::from_secs(5), tx).await.unwrap();
        assert_eq!(read.await.unwrap().unwrap(), "hello streamed world");
        assert_eq!(pumped, 20);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_ends_the_reader_with_an_error() {
        let (tx, mut reader) = channel();
        let body = body_of(vec![b"0123456789", b"0123456789"]);
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all)
        });
        let pumped = pump(body, 15, Duration::from_secs(5), tx).await;
        assert!(matches!(pumped, Err(BodyError::TooLarge)), "{pumped:?}");
        let err = read.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_body_ends_the_reader_with_an_error() {
        let (tx, mut reader) = channel();
        let stream = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"x"))])
            .chain(futures_util::stream::pending());
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all)
        });
        let pumped = pump(
            Body::from_stream(stream),
            1024,
            Duration::from_millis(50),
            tx,
        )
        .await;
        assert!(matches!(pumped, Err(BodyError::Stalled)), "{pumped:?}");
        assert!(read
            .await
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("stalled"));
    }

    use futures_util::StreamExt;
}
