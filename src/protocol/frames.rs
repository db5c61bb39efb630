//! A body sent as it is written: bytes gathered into frames of [`FRAME_BYTES`], handed
//! to the request (or the answer) through a bounded channel by the blocking task that
//! writes them, so that neither end of a large body ever holds it whole.

use std::io;

use bytes::Bytes;

/// Frames of a body waiting to be sent, per body.
pub const FRAMES_IN_FLIGHT: usize = 2;
/// Bytes gathered into one frame of a body: a few TLS records. Every body being sent
/// has its frames in flight: a sender's memory per peer, a daemon's per answer.
pub const FRAME_BYTES: usize = 64 * 1024;

/// The sending end of a body's frames.
pub type FrameSender = tokio::sync::mpsc::Sender<io::Result<Bytes>>;

/// A channel for a body's frames, and the stream of them the body is made of.
pub fn channel() -> (
    FrameSender,
    impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(FRAMES_IN_FLIGHT);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    (tx, stream)
}

/// The frames of a body on their way, written from a blocking task: many small writes
/// cost few hand-overs to the body.
pub struct Frames<'a> {
    tx: &'a FrameSender,
    /// The frame being gathered; a writer may fill it directly, up to [`FRAME_BYTES`].
    pub frame: Vec<u8>,
}

impl<'a> Frames<'a> {
    pub fn new(tx: &'a FrameSender) -> Frames<'a> {
        Frames {
            tx,
            frame: Vec::with_capacity(FRAME_BYTES),
        }
    }

    /// Sends what is gathered; `Err` when the body's receiver is gone.
    pub fn send(&mut self) -> Result<(), Gone> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME_BYTES));
        self.hand_over(frame)
    }

    /// Sends the last frame, making no room for another.
    pub fn finish(mut self) -> Result<(), Gone> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let frame = std::mem::take(&mut self.frame);
        self.hand_over(frame)
    }

    fn hand_over(&self, frame: Vec<u8>) -> Result<(), Gone> {
        self.tx
            .blocking_send(Ok(Bytes::from(frame)))
            .map_err(|_| Gone)
    }
}

/// The body's receiver is gone: the request or the answer was dropped.
#[derive(Debug)]
pub struct Gone;

impl io::Write for Frames<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = FRAME_BYTES.saturating_sub(self.frame.len()).max(1);
        let taken = bytes.len().min(room);
        self.frame.extend_from_slice(&bytes[..taken]);
        if self.frame.len() >= FRAME_BYTES {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send().map_err(|Gone| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the body's receiver is gone")
        })
    }
}
