//! Guards around an accepted realtime socket, below the WebSocket codec:
//!
//! - [`FrameGuard`] reads frame headers as the bytes arrive and refuses a frame whose announced
//!   length is over the limit before any of its payload is buffered (the codec alone waits for
//!   the whole frame before it checks, so one client announcing 2^62 bytes could make it buffer
//!   without bound). It also ends the stream cleanly when the peer goes away: the WebSocket
//!   stream drops the frames it has buffered but not decoded when its payload ends in an error,
//!   so a frame that arrived just before a reset (a hang-up sent as the app closed) was lost.
//! - [`SocketHandle`] can abort the TCP connection under an upgraded socket when its peer has
//!   stopped reading: the close frame cannot reach such a peer, and the connection would otherwise
//!   hold its descriptor and kernel send queue for as long as the peer keeps its window shut.
//! - [`Ceiling`] caps open realtime connections below the descriptor limit, so that upgrades over
//!   it are refused at once with 503 while health checks and admins still get a descriptor.
//! - [`WriteTurns`] keeps a burst of outgoing frames from growing the connection's write buffer
//!   for good (see [`WRITE_TURN_BYTES`]).

use crate::error::ErrorCode;
use crate::metrics::Metrics;
use actix_web::dev::{Extensions, Payload};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use futures_util::Stream;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Write turns

/// Frame bytes a connection's writer hands to actix-ws before it lets the HTTP/1 dispatcher
/// take them. The dispatcher copies every frame waiting in actix-ws's queue (up to 32) into its
/// write buffer in one go, and it adds more while the buffer holds less than
/// [`H1_WRITE_BUFFER_BYTES`]. That buffer starts at 8 KiB and, once grown, is kept for the
/// connection's life (actix-http releases it only past 128 KiB). Without turns, one burst (a
/// backlog released after a slow commit, say) grew it to 16 KiB or more on every connection
/// that received the burst: about +10 MiB of live heap at 1 000 sockets, kept until they closed.
/// With turns, what the dispatcher holds at once stays under `H1_WRITE_BUFFER_BYTES` +
/// `WRITE_TURN_BYTES` + one frame, inside the first 8 KiB for frames of ordinary size.
pub(crate) const WRITE_TURN_BYTES: usize = 3 * 1024;

/// The HTTP/1 dispatcher stops taking more of a response body once its write buffer holds this
/// many bytes and writes them out first (actix-web's `h1_write_buffer_size`; its default is
/// 32 KiB, four times the buffer's first allocation).
pub(crate) const H1_WRITE_BUFFER_BYTES: usize = 4 * 1024;

// What the dispatcher takes in one turn plus what it keeps below its own limit fit the
// buffer's first 8 KiB with room for a frame of ordinary size.
const _: () = assert!(WRITE_TURN_BYTES + H1_WRITE_BUFFER_BYTES <= 7 * 1024);

/// Counts the frame bytes a writer has handed over since the dispatcher last had a turn, and
/// yields to it every [`WRITE_TURN_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct WriteTurns {
    since: usize,
}

impl WriteTurns {
    /// `bytes` more were handed to actix-ws; yields when a turn's worth is waiting. The
    /// dispatcher runs on the same worker thread and was woken by the frames, so it takes them
    /// before this task resumes.
    pub(crate) async fn wrote(&mut self, bytes: usize) {
        self.since += bytes;
        if self.since >= WRITE_TURN_BYTES {
            self.since = 0;
            tokio::task::yield_now().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frame guard

/// Where the guard is in the byte stream.
#[derive(Debug)]
enum Cursor {
    /// Collecting a frame header (2 to 14 bytes).
    Header { buf: [u8; 14], have: usize },
    /// Passing over a frame's payload.
    Payload { remaining: u64 },
    /// A frame over the limit was announced: the stream ends with `Overflow`.
    Tripped,
}

/// A payload stream that ends with [`PayloadError::Overflow`] as soon as a WebSocket frame header
/// announces more than `limit` payload bytes. Bytes pass through unchanged (no copy); those of
/// earlier, complete frames in the same chunk are delivered before the error. A connection that
/// closed or reset under the payload ends it without an error, so every frame received before
/// is still decoded and handled.
#[derive(Debug)]
pub(crate) struct FrameGuard<S> {
    inner: S,
    limit: u64,
    cursor: Cursor,
    pending_error: bool,
    ended: bool,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` with a per-frame payload limit.
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
            cursor: Cursor::Header {
                buf: [0; 14],
                have: 0,
            },
            pending_error: false,
            ended: false,
        }
    }

    /// Advances over `chunk`; returns the offset of the header that announced an oversized
    /// frame (the bytes before it may still be delivered), or `None` when all of it is fine.
    fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < chunk.len() {
            match &mut self.cursor {
                Cursor::Tripped => return Some(pos),
                Cursor::Payload { remaining } => {
                    let rest = u64::try_from(chunk.len() - pos).unwrap_or(u64::MAX);
                    let take = (*remaining).min(rest);
                    pos += usize::try_from(take).unwrap_or(chunk.len() - pos);
                    *remaining -= take;
                    if *remaining == 0 {
                        self.cursor = Cursor::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                Cursor::Header { buf, have } => {
                    let start = pos;
                    let header_began_here = *have == 0;
                    // Take bytes until the header's full length is known and collected.
                    loop {
                        let need = header_len(&buf[..*have]);
                        if *have >= need {
                            break;
                        }
                        if pos == chunk.len() {
                            return None;
                        }
                        buf[*have] = chunk[pos];
                        *have += 1;
                        pos += 1;
                    }
                    let length = announced_len(&buf[..*have]);
                    if length > self.limit {
                        self.cursor = Cursor::Tripped;
                        return Some(if header_began_here { start } else { 0 });
                    }
                    self.cursor = if length == 0 {
                        Cursor::Header {
                            buf: [0; 14],
                            have: 0,
                        }
                    } else {
                        Cursor::Payload { remaining: length }
                    };
                }
            }
        }
        None
    }
}

/// The full header length given its first bytes (2 until the second byte is known).
fn header_len(head: &[u8]) -> usize {
    let Some(&b1) = head.get(1) else { return 2 };
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length a complete header announces.
fn announced_len(head: &[u8]) -> u64 {
    match head[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.pending_error || matches!(this.cursor, Cursor::Tripped) {
            this.pending_error = false;
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match this.scan(&chunk) {
                None => Poll::Ready(Some(Ok(chunk))),
                Some(0) => Poll::Ready(Some(Err(PayloadError::Overflow))),
                Some(at) => {
                    this.pending_error = true;
                    Poll::Ready(Some(Ok(chunk.slice(..at))))
                }
            },
            // The peer went away (closed mid-stream or reset): an end, not a protocol error.
            Poll::Ready(Some(Err(PayloadError::Incomplete(_) | PayloadError::Io(_)))) => {
                this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// Wraps a request body in a [`FrameGuard`], as the payload type the WebSocket handshake takes.
pub(crate) async fn guarded_payload(
    req: &HttpRequest,
    body: actix_web::web::Payload,
    limit: usize,
) -> Result<actix_web::web::Payload, actix_web::Error> {
    let guard = FrameGuard::new(body.into_inner(), limit);
    let mut payload =
        Payload::from(Box::pin(guard) as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>);
    actix_web::web::Payload::from_request(req, &mut payload).await
}

/// Whether a WebSocket protocol error is a size refusal: the guard's, the codec's, or the
/// fragment aggregator's.
pub(crate) fn is_overflow(err: &actix_ws::ProtocolError) -> bool {
    match err {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(e) => {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<PayloadError>())
                .is_some_and(|p| matches!(p, PayloadError::Overflow))
                // The aggregating stream reports fragments over its limit only by this message.
                || e.to_string().contains("maximum continuation size")
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Socket handle

/// The descriptor of one accepted connection, for as long as that connection lives.
#[derive(Debug, Default)]
struct SocketSlot {
    fd: Mutex<Option<RawFd>>,
}

/// Kept in the connection's data: clears the slot when the connection's data is dropped, which
/// the HTTP dispatcher does before it drops (and closes) the socket itself. Every use of the
/// descriptor holds the slot's lock, so none can race the close or touch a reused number.
#[derive(Debug)]
struct SocketMark(Arc<SocketSlot>);

impl Drop for SocketMark {
    fn drop(&mut self) {
        if let Ok(mut fd) = self.0.fd.lock() {
            *fd = None;
        }
    }
}

/// The server's `on_connect` hook: records each accepted TCP connection's descriptor.
pub(crate) fn on_connect(conn: &dyn std::any::Any, data: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let slot = SocketSlot {
            fd: Mutex::new(Some(tcp.as_raw_fd())),
        };
        data.insert(SocketMark(Arc::new(slot)));
    }
}

/// A handle on the TCP connection under a request (a no-op handle when there is none, e.g. in
/// tests that drive the service without a socket).
#[derive(Clone, Debug, Default)]
pub(crate) struct SocketHandle(Option<Arc<SocketSlot>>);

impl SocketHandle {
    /// The handle of the connection `req` arrived on.
    pub(crate) fn of(req: &HttpRequest) -> Self {
        Self(req.conn_data::<SocketMark>().map(|m| Arc::clone(&m.0)))
    }

    /// Whether the connection is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|s| s.fd.lock().is_ok_and(|fd| fd.is_some()))
    }

    /// Aborts the connection if it is still open: the kernel drops its send queue and answers
    /// the peer with a reset, and the server's next write on it fails, which ends the connection
    /// and releases its descriptor. Returns whether this aborted it: false when there was no
    /// connection, or when it was already set to be reset ([`SocketHandle::reset_on_close`],
    /// counted then).
    pub(crate) fn abort(&self) -> bool {
        self.with_socket(|sock| {
            let counted = matches!(sock.linger(), Ok(Some(d)) if d.is_zero());
            if !counted {
                reset_when_closed(&sock);
            }
            if let Err(e) = sock.shutdown(std::net::Shutdown::Both) {
                tracing::debug!(error = %e, "socket shutdown on abort");
            }
            !counted
        })
        .unwrap_or(false)
    }

    /// For a peer that stopped answering (its heartbeat timed out): whenever the connection is
    /// closed from now on, the kernel drops what the peer has not taken and resets it, instead
    /// of keeping the socket (and its send queue) until the peer reads or the kernel gives up,
    /// minutes later. The close frame still goes out first if the peer takes it. Returns
    /// whether there was a connection (the caller counts it as aborted).
    pub(crate) fn reset_on_close(&self) -> bool {
        self.with_socket(|sock| reset_when_closed(&sock)).is_some()
    }

    /// Runs `f` on the connection's socket if it is still open.
    #[allow(unsafe_code)]
    fn with_socket<R>(&self, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> Option<R> {
        let slot = self.0.as_ref()?;
        let guard = slot.fd.lock().ok()?;
        let fd = (*guard)?;
        // SAFETY: the slot holds `fd` only while the connection owning it is alive, and the
        // lock held here keeps the connection's teardown (which clears the slot first) waiting.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Some(f(socket2::SockRef::from(&borrowed)))
    }
}

/// Sets `sock` to be reset when it closes (`SO_LINGER` 0): the kernel drops its send queue.
fn reset_when_closed(sock: &socket2::SockRef<'_>) {
    if let Err(e) = sock.set_linger(Some(Duration::ZERO)) {
        tracing::warn!(error = %e, "cannot set SO_LINGER 0 on a socket to reset");
    }
}

/// After a close was started on a socket: waits out `grace` for the peer to finish the closing
/// handshake, then aborts the connection if it is still open (a peer that stopped reading never
/// takes the close frame). Counted in `aborted`.
pub(crate) async fn abort_after(handle: SocketHandle, grace: Duration, metrics: &Metrics) {
    let deadline = tokio::time::Instant::now() + grace;
    let step = Duration::from_millis(50).min(grace.max(Duration::from_millis(1)));
    while tokio::time::Instant::now() < deadline {
        if !handle.is_open() {
            return;
        }
        tokio::time::sleep(step).await;
    }
    if handle.abort() {
        metrics.connection_aborted();
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "connection still open after its close; aborted"
        );
    }
}

/// Ends an upgraded socket: sends the close frame, and aborts the connection if it is still open
/// once `grace` has passed since `since` (when the close began; a flush may have used part of
/// it). A peer that does not read never takes the close frame; it cannot hold the connection.
pub(crate) async fn close_within(
    session: actix_ws::Session,
    reason: Option<actix_ws::CloseReason>,
    since: tokio::time::Instant,
    grace: Duration,
    handle: SocketHandle,
    metrics: &Metrics,
) {
    let _ = tokio::time::timeout_at(since + grace, session.close(reason)).await;
    abort_after(handle, grace.saturating_sub(since.elapsed()), metrics).await;
}

// ---------------------------------------------------------------------------------------------
// Ceiling

/// A cap on open realtime connections (WebSocket and Engine.IO sessions together).
#[derive(Debug)]
pub struct Ceiling {
    limit: usize,
    open: AtomicUsize,
    retry_after_secs: u64,
    metrics: Arc<Metrics>,
}

/// A refusal at the ceiling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OverCapacity {
    retry_after_secs: u64,
}

impl OverCapacity {
    /// The answer to send instead of the upgrade: 503 `over_capacity` with `Retry-After`.
    pub(crate) fn response(self) -> HttpResponse {
        let body = serde_json::json!({"error": {
            "code": ErrorCode::OverCapacity,
            "message": "this server holds as many realtime connections as it may; retry later",
        }});
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", self.retry_after_secs.to_string()))
            .json(body)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Admission(Arc<Ceiling>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ceiling {
    /// A ceiling of `limit` connections; refusals tell clients to come back in
    /// `retry_after_secs`.
    pub(crate) fn new(limit: usize, retry_after_secs: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: AtomicUsize::new(0),
            retry_after_secs,
            metrics,
        })
    }

    /// Admits one more connection, or refuses it with a 503 response to send instead.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admission, OverCapacity> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            return Ok(Admission(Arc::clone(self)));
        }
        let refused = self.metrics.connection_refused();
        // One line per 1 000 refusals at most, so a flood does not flood the log too.
        if refused == 1 || refused.is_multiple_of(1000) {
            tracing::warn!(
                limit = self.limit,
                refused,
                "realtime connection refused: MAX_REALTIME_CONNECTIONS reached"
            );
        }
        Err(OverCapacity {
            retry_after_secs: self.retry_after_secs,
        })
    }

    /// Connections admitted and still open.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Where refusals and aborts are counted.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::future::Future;

    /// Whether one `wrote(bytes)` had to wait for a turn (it yields once, or not at all).
    fn yields(turns: &mut WriteTurns, bytes: usize) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut wrote = std::pin::pin!(turns.wrote(bytes));
        match wrote.as_mut().poll(&mut cx) {
            Poll::Ready(()) => false,
            Poll::Pending => {
                assert!(wrote.as_mut().poll(&mut cx).is_ready(), "yields only once");
                true
            }
        }
    }

    #[test]
    fn a_writer_gives_the_dispatcher_a_turn_every_write_turn_bytes() {
        let mut turns = WriteTurns::default();
        let frame = 500;
        let waits: Vec<bool> = (0..14).map(|_| yields(&mut turns, frame)).collect();
        // 3 072 bytes are a turn: the 7th frame (3 500 bytes) yields, then the count restarts.
        let at: Vec<usize> = (0..14).filter(|&i| waits[i]).collect();
        assert_eq!(at, vec![6, 13]);
        // One frame larger than a turn yields at once.
        assert!(yields(&mut WriteTurns::default(), 64 * 1024));
    }

    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | u8::try_from(len).unwrap());
        } else if len <= 0xFFFF {
            f.push(m | 126);
            f.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'a', len));
        f
    }

    async fn run(chunks: Vec<Vec<u8>>, limit: usize) -> (Vec<u8>, bool) {
        let inner = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, PayloadError>(Bytes::from(c))),
        );
        let mut g = FrameGuard::new(inner, limit);
        let mut passed = Vec::new();
        while let Some(item) = g.next().await {
            match item {
                Ok(b) => passed.extend_from_slice(&b),
                Err(PayloadError::Overflow) => return (passed, true),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        (passed, false)
    }

    #[actix_web::test]
    async fn a_peer_going_away_ends_the_stream_after_the_bytes_it_sent() {
        for gone in [
            PayloadError::Incomplete(None),
            PayloadError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            let inner =
                futures_util::stream::iter(vec![Ok(Bytes::from(frame(5, true))), Err(gone)]);
            let mut g = FrameGuard::new(inner, 100);
            assert_eq!(
                g.next().await.unwrap().unwrap(),
                Bytes::from(frame(5, true))
            );
            assert!(g.next().await.is_none());
            assert!(g.next().await.is_none());
        }
    }

    #[actix_web::test]
    async fn frames_within_the_limit_pass_unchanged_whatever_the_chunking() {
        let mut bytes = frame(10, true);
        bytes.extend(frame(300, true));
        bytes.extend(frame(0, true));
        bytes.extend(frame(70_000, true));
        for split in [1, 3, 7, 100, 5000] {
            let chunks: Vec<Vec<u8>> = bytes.chunks(split).map(<[u8]>::to_vec).collect();
            let (passed, over) = run(chunks, 70_000).await;
            assert!(!over, "split {split}");
            assert_eq!(passed, bytes, "split {split}");
        }
    }

    #[actix_web::test]
    async fn an_oversized_header_trips_before_its_payload_with_earlier_frames_delivered() {
        let first = frame(5, true);
        let mut bytes = first.clone();
        // Header only: 2^62 announced, nothing of the payload sent.
        bytes.extend_from_slice(&[0x82, 0xFF]);
        bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
        bytes.extend_from_slice(&[9, 9, 9, 9]);
        let (passed, over) = run(vec![bytes], 1024).await;
        assert!(over);
        assert_eq!(passed, first);
        // A header split over chunks trips too.
        let mut head = vec![0x81, 0x80 | 126];
        head.extend_from_slice(&2000u16.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        let (_, over) = run(
            vec![head[..1].to_vec(), head[1..3].to_vec(), head[3..].to_vec()],
            1024,
        )
        .await;
        assert!(over);
    }

    #[test]
    fn the_ceiling_refuses_over_its_limit_and_frees_places() {
        let metrics = Arc::new(Metrics::new());
        let c = Ceiling::new(2, 5, Arc::clone(&metrics));
        let a = c.admit().unwrap();
        let _b = c.admit().unwrap();
        let refused = c.admit().unwrap_err().response();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers().get("retry-after").unwrap(), "5");
        assert_eq!(c.open(), 2);
        assert!(metrics
            .render(&crate::metrics::Snapshot::default())
            .unwrap()
            .contains("switchboard_connections_refused_total 1"));
        drop(a);
        assert!(c.admit().is_ok());
    }
}
