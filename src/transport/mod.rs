//! Transport: TCP (and TLS/TCP, RFC 6733 §2.1 on a dedicated port) connections carrying Diameter frames.
//!
//! Each connection has a reader task, which cuts the byte stream into frames (version and Message Length checked
//! before anything is allocated, [`crate::codec::peek_frame_length`]), and a writer task, which drains a bounded
//! queue and writes what it finds in one go (batching under load, one write per message when idle).
//!
//! Back-pressure: the queue holds at most `write_queue` messages. A peer that stops reading fills its TCP window,
//! then the queue; the next send finds it full and the connection is closed (its pending requests fail over).
//! Memory per connection is therefore bounded by the queue, never by the peer's behaviour.
//!
//! SCTP is not supported (the kernels this runs on lack it); a transport is anything `AsyncRead + AsyncWrite`,
//! so it can be added behind the same seam.

pub mod tls;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::codec::{DecodeError, DecodeLimits, peek_frame_length};
use crate::peer::ConnId;

/// What a connection's tasks report to the node.
#[derive(Debug)]
pub enum ConnEvent {
    /// A whole frame.
    Frame(ConnId, Bytes),
    /// The connection ended (EOF, error, or an unreadable frame header).
    Closed(ConnId, Option<String>),
}

/// Allocates connection ids for a node.
#[derive(Clone, Debug, Default)]
pub struct ConnIds(Arc<AtomicU64>);

impl ConnIds {
    /// The next id.
    pub fn next(&self) -> ConnId {
        ConnId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The node's handle on a connection: its write queue and its reader.
#[derive(Debug)]
pub struct Connection {
    /// Frames to write.
    pub writer: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
}

impl Connection {
    /// Stops reading; dropping the handle then ends the writer, which shuts the socket down.
    pub fn close(self) {
        self.reader.abort();
    }
}

/// Reads one frame. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    limits: &DecodeLimits,
) -> Result<Option<Bytes>, FrameError> {
    loop {
        if let Some(len) = peek_frame_length(buf, limits).map_err(FrameError::Header)?
            && buf.len() >= len
        {
            return Ok(Some(buf.split_to(len).freeze()));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if r.read_buf(buf).await.map_err(FrameError::Io)? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())) };
        }
    }
}

/// Why a stream could not be cut into frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first octets of a frame are not a Diameter header we accept (version, length, size limit).
    #[error("bad frame header: {0}")]
    Header(DecodeError),
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
}

/// Any byte stream a connection can run over: TCP, TLS over TCP (and SCTP, should it come).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A stream whose type is decided at run time (plain or TLS).
pub type BoxedStream = Box<dyn Stream>;

/// The most one write gathers from the queue (more only when a single message is larger).
const WRITE_BATCH: usize = 64 * 1024;

/// Starts the reader and writer tasks of a connection over any stream. Call it only once the connection is
/// registered wherever its events go: its first frame may be read at once.
pub fn spawn_connection<S>(
    conn: ConnId,
    stream: S,
    events: mpsc::UnboundedSender<ConnEvent>,
    limits: DecodeLimits,
    write_queue: usize,
) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(write_queue.max(1));
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let why = loop {
            match read_frame(&mut rd, &mut buf, &limits).await {
                Ok(Some(frame)) => {
                    if events.send(ConnEvent::Frame(conn, frame)).is_err() {
                        return;
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        let _ = events.send(ConnEvent::Closed(conn, why));
    });
    tokio::spawn(async move {
        let mut batch = BytesMut::with_capacity(WRITE_BATCH);
        // Whatever else is queued goes in the same write, up to 64 KiB.
        let gather = |rx: &mut mpsc::Receiver<Bytes>, batch: &mut BytesMut| {
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
        };
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&first);
            gather(&mut rx, &mut batch);
            if batch.len() == first.len() {
                // A message alone: let the tasks that can run now run first, so that what they send goes in this
                // write. Requests released together (several callers woken at once) otherwise went one write each:
                // each wakes this task as it sends, and the runtime runs the task it just woke first (tokio's LIFO
                // slot) or its own before those woken from other threads. A loopback send costs about 4.5 µs of
                // kernel time here: paced at 60,000/s the load process went from 15.7 to 11.8 µs of CPU per
                // request, and from 234,519 sends to 24,290 (BENCHMARKS.md, ninth measurement). Not when several
                // are queued: they are already being gathered, and the extra turn of the scheduler cost throughput
                // at full load.
                tokio::task::yield_now().await;
                gather(&mut rx, &mut batch);
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    Connection { writer: tx, reader }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_cut_from_a_stream_in_any_chunking() {
        let dict = crate::dict::Dictionary::builtin();
        let msgs: Vec<Bytes> = crate::samples::all(&dict).iter().map(|(_, m)| m.encode().unwrap()).collect();
        let all: Vec<u8> = msgs.iter().flat_map(|b| b.to_vec()).collect();
        for chunk in [1, 3, 7, 64, 100_000] {
            let (mut a, mut b) = tokio::io::duplex(1 << 20);
            let data = all.clone();
            tokio::spawn(async move {
                for c in data.chunks(chunk) {
                    a.write_all(c).await.unwrap();
                }
            });
            let mut buf = BytesMut::new();
            for m in &msgs {
                assert_eq!(read_frame(&mut b, &mut buf, &DecodeLimits::default()).await.unwrap().as_ref(), Some(m));
            }
            assert!(read_frame(&mut b, &mut buf, &DecodeLimits::default()).await.unwrap().is_none());
        }
    }

    /// A stream that counts the writes made to it.
    struct Counted {
        inner: tokio::io::DuplexStream,
        writes: Arc<AtomicU64>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            // Counted before the bytes can be read, not after: the reader may run on another thread.
            self.writes.fetch_add(1, Ordering::SeqCst);
            let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
            if r.is_pending() {
                self.writes.fetch_sub(1, Ordering::SeqCst);
            }
            r
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Three tasks woken together each send a message: one write carries all three. (Without the writer's yield
    /// it took three: each sender woke the writer, which ran before the next sender.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn messages_sent_by_tasks_woken_together_go_in_one_write() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let writes = Arc::new(AtomicU64::new(0));
        let (events, _events) = mpsc::unbounded_channel();
        let stream = Counted { inner: a, writes: writes.clone() };
        let conn = spawn_connection(ConnId(1), stream, events, DecodeLimits::default(), 16);
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        for i in 0..3u8 {
            let (go, tx) = (go.clone(), conn.writer.clone());
            tokio::spawn(async move {
                go.acquire().await.unwrap().forget();
                tx.send(Bytes::from(vec![i; 20])).await.unwrap();
            });
        }
        // Spawned after the senders, so it runs once each waits: it wakes all three on the runtime's one thread.
        tokio::spawn(async move { go.add_permits(3) });
        let mut got = [0u8; 60];
        b.read_exact(&mut got).await.unwrap();
        let mut firsts: Vec<u8> = got.chunks(20).map(|c| c[0]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 1, 2]);
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_bad_header_stops_reading_before_allocating() {
        let limits = DecodeLimits { max_message_size: 1024, ..Default::default() };
        let (mut a, mut b) = tokio::io::duplex(64);
        // Claims 16 MiB: refused from the first four octets.
        a.write_all(&[1, 0xff, 0xff, 0xfc]).await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(read_frame(&mut b, &mut buf, &limits).await, Err(FrameError::Header(_))));
        assert!(buf.capacity() < 64 * 1024);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[2, 0, 0, 20]).await.unwrap();
        assert!(matches!(read_frame(&mut b, &mut BytesMut::new(), &limits).await, Err(FrameError::Header(_))));
    }
}
