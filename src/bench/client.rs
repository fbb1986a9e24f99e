//! The sockets: one actix system per thread, one task per client. A client connects (and for
//! Socket.IO performs the namespace handshake), joins its conversation, then sends messages while
//! the run lasts and records what comes back.

use super::histogram::Histogram;
use super::protocol::{self, Inbound, Target};
use super::setup::{ClientSpec, Role};
use awc::error::WsProtocolError;
use awc::ws::{Frame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// How long clients may take to close their sockets once told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the run is; the coordinator moves it forward, every client watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Clients connect and join.
    Connect,
    /// Clients send from `start_ns` until `end_ns` (nanoseconds since the bench epoch).
    Run {
        /// First send time.
        start_ns: u64,
        /// No sends at or after this time.
        end_ns: u64,
    },
    /// No more sends; replies and pushes still count.
    Drain,
    /// Close the sockets.
    Stop,
}

/// Counters every thread updates; the coordinator reads them to follow progress.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sockets connected, authenticated and joined.
    pub connected: AtomicU64,
    /// Sockets that did not get that far.
    pub connect_failed: AtomicU64,
    /// `message:send` frames written.
    pub sent: AtomicU64,
    /// Durable acks received before the end of the run.
    pub acks: AtomicU64,
    /// Durable acks received after the end of the run (while draining).
    pub acks_late: AtomicU64,
    /// Errors and refusals (all codes).
    pub errors: AtomicU64,
    /// `message:new` pushes carrying a bench send time.
    pub deliveries: AtomicU64,
    /// Pushes the durable acks promise: Σ (members − 1) over acked messages.
    pub expected_deliveries: AtomicU64,
    /// Sends not yet answered.
    pub outstanding: AtomicI64,
    /// Rate ticks skipped because `inflight` sends were already outstanding.
    pub skipped: AtomicU64,
}

/// Settings and shared state of a run, read by every client.
#[derive(Debug)]
pub struct Shared {
    /// Monotonic time origin; send times are nanoseconds since it.
    pub epoch: Instant,
    /// Protocol.
    pub target: Target,
    /// `--url`.
    pub url: String,
    /// Messages per second per active client; 0 = closed loop.
    pub rate: f64,
    /// Most sends outstanding per client.
    pub inflight: u32,
    /// Message text length.
    pub message_bytes: usize,
    /// Active clients (spreads the first send of each over one rate interval).
    pub active: usize,
    /// Bounds concurrent connection set-ups.
    pub connect_limit: Semaphore,
    /// Time allowed for one connection set-up (connect, handshake, join).
    pub connect_timeout: Duration,
    /// Progress counters.
    pub counters: Counters,
    /// The phase, as published by the coordinator.
    pub phase: watch::Receiver<Phase>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }
}

/// What one thread measured.
#[derive(Debug, Default)]
pub struct ThreadStats {
    /// Send → `message:new` at another member, in µs.
    pub delivery: Histogram,
    /// Send → durable ack, in µs.
    pub ack: Histogram,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Connection failures by reason.
    pub connect_failures: BTreeMap<String, u64>,
}

impl ThreadStats {
    fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }
}

struct Ctx {
    shared: Arc<Shared>,
    http: awc::Client,
    stats: RefCell<ThreadStats>,
}

/// Runs `specs` on the current thread in a new actix system until the phase reaches
/// [`Phase::Stop`]; returns what they measured.
pub fn run_thread(shared: Arc<Shared>, specs: Vec<ClientSpec>) -> Result<ThreadStats, String> {
    let system = actix_rt::System::new();
    system.block_on(async move {
        let connector = awc::Connector::new()
            .limit(0)
            .timeout(shared.connect_timeout);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(shared.connect_timeout)
            .finish();
        let ctx = Rc::new(Ctx {
            shared,
            http,
            stats: RefCell::new(ThreadStats::default()),
        });
        let mut phase = ctx.shared.phase.clone();
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|spec| actix_rt::spawn(client(Rc::clone(&ctx), spec)))
            .collect();
        // Once told to stop, clients get a grace period to close; one stuck writing to a server
        // that stopped reading is then abandoned rather than holding up the report.
        while *phase.borrow_and_update() != Phase::Stop {
            if phase.changed().await.is_err() {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while tasks.iter().any(|t| !t.is_finished()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut abandoned = 0u64;
        for task in tasks {
            if !task.is_finished() {
                task.abort();
                abandoned += 1;
            }
            match task.await {
                Ok(()) => {}
                Err(e) if e.is_cancelled() => {}
                Err(e) => return Err(format!("a client task failed: {e}")),
            }
        }
        let mut stats = ctx.stats.take();
        if abandoned > 0 {
            *stats.errors.entry("stuck_at_stop".to_owned()).or_default() += abandoned;
        }
        Ok(stats)
    })
}

/// A frame as the client loop sees it.
enum Recv {
    Text(String),
    Ping(Vec<u8>),
    Closed(Option<u16>),
    Ignore,
}

fn classify(frame: Option<Result<Frame, WsProtocolError>>) -> Result<Recv, String> {
    match frame {
        None => Ok(Recv::Closed(None)),
        Some(Err(e)) => Err(format!("protocol: {e}")),
        Some(Ok(frame)) => Ok(match frame {
            Frame::Text(bytes) => Recv::Text(
                String::from_utf8(bytes.to_vec()).map_err(|_| "text frame is not UTF-8")?,
            ),
            Frame::Ping(bytes) => Recv::Ping(bytes.to_vec()),
            Frame::Close(reason) => Recv::Closed(reason.map(|r| u16::from(r.code))),
            Frame::Pong(_) => Recv::Ignore,
            Frame::Binary(_) => Recv::Ignore,
            Frame::Continuation(_) => return Err("fragmented frames are not supported".into()),
        }),
    }
}

fn closed_reason(code: Option<u16>) -> String {
    code.map_or_else(|| "closed".to_owned(), |c| format!("closed_{c}"))
}

async fn send_text<S>(io: &mut S, text: String) -> Result<(), String>
where
    S: Sink<Message, Error = WsProtocolError> + Unpin,
{
    io.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Decodes a text frame for the target.
fn decode(target: Target, text: &str) -> Result<Inbound<'_>, String> {
    match target {
        Target::Ws => protocol::ws_decode(text),
        Target::Socketio => protocol::sio_inbound(text),
    }
}

fn encode_join(target: Target, id: u64, conversation: &str) -> Result<String, String> {
    let payload = protocol::Join {
        conversation_id: conversation,
    };
    match target {
        Target::Ws => protocol::ws_encode("conversation:join", id, &payload),
        Target::Socketio => protocol::sio_emit("conversation:join", id, &payload),
    }
}

fn encode_send(target: Target, id: u64, payload: &protocol::Send<'_>) -> Result<String, String> {
    match target {
        Target::Ws => protocol::ws_encode("message:send", id, payload),
        Target::Socketio => protocol::sio_emit("message:send", id, payload),
    }
}

fn socket_url(target: Target, base: &str, token: &str) -> String {
    match target {
        Target::Ws => {
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}token={token}")
        }
        Target::Socketio => {
            let base = base.trim_end_matches('/');
            let base = base
                .strip_suffix("/socket.io")
                .unwrap_or(base)
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1);
            format!("{base}/socket.io/?EIO=4&transport=websocket")
        }
    }
}

/// Reads frames until `done` accepts one, answering pings on the way. `done` returns
/// `Some(Ok(()))` to stop, `Some(Err(reason))` to fail, `None` to keep reading.
async fn wait_for<S, F>(io: &mut S, target: Target, mut done: F) -> Result<(), String>
where
    S: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin,
    F: FnMut(&Inbound<'_>) -> Option<Result<(), String>>,
{
    loop {
        match classify(io.next().await)? {
            Recv::Text(text) => {
                let inbound = decode(target, &text)?;
                if inbound == Inbound::Ping {
                    send_text(io, protocol::EIO_PONG.to_owned()).await?;
                    continue;
                }
                if let Some(result) = done(&inbound) {
                    return result;
                }
            }
            Recv::Ping(data) => io
                .send(Message::Pong(data.into()))
                .await
                .map_err(|e| format!("send: {e}"))?,
            Recv::Closed(code) => return Err(closed_reason(code)),
            Recv::Ignore => {}
        }
    }
}

/// Connects, authenticates and joins; returns the socket and the next request id.
async fn set_up(
    ctx: &Ctx,
    spec: &ClientSpec,
) -> Result<
    (
        impl Stream<Item = Result<Frame, WsProtocolError>>
            + Sink<Message, Error = WsProtocolError>
            + Unpin,
        u64,
    ),
    String,
> {
    let target = ctx.shared.target;
    let url = socket_url(target, &ctx.shared.url, &spec.token);
    let (_, mut io) = ctx
        .http
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map_err(|e| match e {
            awc::error::WsClientError::InvalidResponseStatus(s) => format!("http_{}", s.as_u16()),
            awc::error::WsClientError::SendRequest(e) => format!("connect: {e}"),
            other => format!("handshake: {other}"),
        })?;
    if target == Target::Socketio {
        wait_for(&mut io, target, |m| (*m == Inbound::Open).then_some(Ok(()))).await?;
        send_text(&mut io, protocol::sio_connect(&spec.token)?).await?;
        wait_for(&mut io, target, |m| match m {
            Inbound::Connected => Some(Ok(())),
            Inbound::ConnectError(reason) => Some(Err(format!("refused: {reason}"))),
            Inbound::Disconnect => Some(Err("disconnected".into())),
            _ => None,
        })
        .await?;
    }
    let id = 1;
    match &spec.role {
        Role::Active { conversation, .. } => {
            send_text(&mut io, encode_join(target, id, conversation)?).await?;
            wait_for(&mut io, target, |m| match m {
                Inbound::Ack { id: got, .. } if *got == id => Some(Ok(())),
                Inbound::Error {
                    id: Some(got),
                    code,
                } if *got == id => Some(Err(format!("join: {code}"))),
                Inbound::Disconnect => Some(Err("disconnected".into())),
                _ => None,
            })
            .await?;
        }
        // `/ws` authenticates after the upgrade (a bad token closes with 4001): one round trip
        // proves an idle socket is really in. Any reply will do.
        Role::Idle if target == Target::Ws => {
            send_text(
                &mut io,
                protocol::ws_encode("ping", id, &protocol::Empty {})?,
            )
            .await?;
            wait_for(&mut io, target, |m| match m {
                Inbound::Ack { id: got, .. } | Inbound::Error { id: Some(got), .. }
                    if *got == id =>
                {
                    Some(Ok(()))
                }
                _ => None,
            })
            .await?;
        }
        Role::Idle => {}
    }
    Ok((io, id + 1))
}

async fn client(ctx: Rc<Ctx>, spec: ClientSpec) {
    let shared = &ctx.shared;
    let counters = &shared.counters;
    let Ok(permit) = shared.connect_limit.acquire().await else {
        return;
    };
    let setup = tokio::time::timeout(shared.connect_timeout, set_up(&ctx, &spec)).await;
    drop(permit);
    let (io, next_id) = match setup {
        Ok(Ok(v)) => v,
        Ok(Err(reason)) => {
            counters.connect_failed.fetch_add(1, Ordering::Relaxed);
            *ctx.stats
                .borrow_mut()
                .connect_failures
                .entry(short_reason(&reason))
                .or_default() += 1;
            tracing::debug!(client = spec.index, %reason, "connection failed");
            return;
        }
        Err(_) => {
            counters.connect_failed.fetch_add(1, Ordering::Relaxed);
            *ctx.stats
                .borrow_mut()
                .connect_failures
                .entry("timeout".to_owned())
                .or_default() += 1;
            return;
        }
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    if let Err(reason) = run(&ctx, &spec, io, next_id).await {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        ctx.stats.borrow_mut().error(&short_reason(&reason));
        tracing::debug!(client = spec.index, %reason, "client stopped");
    }
}

/// Error reasons become report keys: keep the kind, drop per-connection detail.
fn short_reason(reason: &str) -> String {
    let cut = reason.find(['(', '\n']).unwrap_or(reason.len());
    let s = reason.get(..cut).unwrap_or(reason).trim();
    let s: String = s.chars().take(80).collect();
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

/// A sent message waiting for its reply.
struct Pending {
    sent_ns: u64,
}

enum Wake {
    Frame(Option<Result<Frame, WsProtocolError>>),
    Phase(bool),
    Tick,
}

/// The measuring loop of one connected client.
async fn run<S>(ctx: &Ctx, spec: &ClientSpec, mut io: S, next_id: u64) -> Result<(), String>
where
    S: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin,
{
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let result = measure(ctx, spec, &mut io, next_id, &mut pending).await;
    // Whatever was still unanswered will not be answered any more.
    ctx.shared
        .counters
        .outstanding
        .fetch_sub(pending.len() as i64, Ordering::Relaxed);
    result
}

async fn measure<S>(
    ctx: &Ctx,
    spec: &ClientSpec,
    io: &mut S,
    mut next_id: u64,
    pending: &mut HashMap<u64, Pending>,
) -> Result<(), String>
where
    S: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin,
{
    let shared = &ctx.shared;
    let counters = &shared.counters;
    let target = shared.target;
    let mut phase_rx = shared.phase.clone();
    let mut phase = *phase_rx.borrow_and_update();
    let (conversation, members) = match &spec.role {
        Role::Active {
            conversation,
            members,
        } => (Some(conversation.as_str()), u64::from(*members)),
        Role::Idle => (None, 0),
    };
    let interval_ns = if shared.rate > 0.0 {
        Some(((1e9 / shared.rate) as u64).max(1))
    } else {
        None
    };
    let inflight = shared.inflight as usize;
    let padding = "x".repeat(shared.message_bytes);
    // The run window, once the coordinator has announced it.
    let mut window: Option<(u64, u64)> = None;
    // Whether this client still has sending to do (active, run not over, not draining).
    let mut sending = false;
    // Rate mode: the next scheduled send.
    let mut next_tick: Option<u64> = None;
    let mut seq = 0u64;

    loop {
        match phase {
            Phase::Run { start_ns, end_ns } if window.is_none() => {
                window = Some((start_ns, end_ns));
                sending = conversation.is_some();
                if let Some(iv) = interval_ns.filter(|_| sending) {
                    // Spread first sends over one interval so clients do not fire together.
                    let frac = spec.index as f64 / shared.active.max(1) as f64;
                    next_tick = Some(start_ns + (iv as f64 * frac) as u64);
                }
            }
            Phase::Drain => {
                sending = false;
                next_tick = None;
            }
            Phase::Stop => {
                let _ = io.send(Message::Close(None)).await;
                return Ok(());
            }
            _ => {}
        }

        // When to wake up without a frame: the next rate tick, or (closed loop) the start or
        // the end of the run.
        let mut wake_at = None;
        if let (true, Some(conv), Some((start_ns, end_ns))) = (sending, conversation, window) {
            let now = shared.now_ns();
            if now >= end_ns {
                sending = false;
                next_tick = None;
            } else if interval_ns.is_some() {
                wake_at = next_tick;
            } else if now < start_ns {
                wake_at = Some(start_ns);
            } else {
                while pending.len() < inflight {
                    send_one(
                        ctx,
                        spec,
                        io,
                        conv,
                        &padding,
                        pending,
                        &mut next_id,
                        &mut seq,
                    )
                    .await?;
                }
                wake_at = Some(end_ns);
            }
        }

        let wake = tokio::select! {
            frame = io.next() => Wake::Frame(frame),
            changed = phase_rx.changed() => Wake::Phase(changed.is_ok()),
            () = sleep_until(wake_at.map(|t| shared.at(t))), if wake_at.is_some() => Wake::Tick,
        };

        match wake {
            Wake::Phase(true) => phase = *phase_rx.borrow_and_update(),
            Wake::Phase(false) => phase = Phase::Stop,
            Wake::Tick => {
                // Rate mode: send on a fixed schedule; ticks that fell behind fire at once.
                if let (Some(iv), Some(tick), Some(conv), Some((_, end_ns))) =
                    (interval_ns, next_tick, conversation, window)
                {
                    if shared.now_ns() < end_ns {
                        if pending.len() < inflight {
                            send_one(
                                ctx,
                                spec,
                                io,
                                conv,
                                &padding,
                                pending,
                                &mut next_id,
                                &mut seq,
                            )
                            .await?;
                        } else {
                            counters.skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    next_tick = Some(tick + iv).filter(|t| *t < end_ns);
                    if next_tick.is_none() {
                        sending = false;
                    }
                }
                // Closed loop: the top of the loop sends or stops.
            }
            Wake::Frame(frame) => match classify(frame)? {
                Recv::Text(text) => {
                    let inbound = decode(target, &text)?;
                    handle(ctx, io, inbound, pending, members, window).await?;
                }
                Recv::Ping(data) => io
                    .send(Message::Pong(data.into()))
                    .await
                    .map_err(|e| format!("send: {e}"))?,
                Recv::Closed(code) => return Err(closed_reason(code)),
                Recv::Ignore => {}
            },
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_one<S>(
    ctx: &Ctx,
    spec: &ClientSpec,
    io: &mut S,
    conversation: &str,
    padding: &str,
    pending: &mut HashMap<u64, Pending>,
    next_id: &mut u64,
    seq: &mut u64,
) -> Result<(), String>
where
    S: Sink<Message, Error = WsProtocolError> + Unpin,
{
    let shared = &ctx.shared;
    let id = *next_id;
    *next_id += 1;
    *seq += 1;
    let sent_ns = shared.now_ns();
    let cmid = protocol::client_message_id(sent_ns, spec.index, *seq);
    let payload = protocol::Send {
        conversation_id: conversation,
        content: padding,
        client_message_id: &cmid,
    };
    let frame = encode_send(shared.target, id, &payload)?;
    pending.insert(id, Pending { sent_ns });
    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
    shared.counters.outstanding.fetch_add(1, Ordering::Relaxed);
    send_text(io, frame).await
}

async fn handle<S>(
    ctx: &Ctx,
    io: &mut S,
    inbound: Inbound<'_>,
    pending: &mut HashMap<u64, Pending>,
    members: u64,
    run_window: Option<(u64, u64)>,
) -> Result<(), String>
where
    S: Sink<Message, Error = WsProtocolError> + Unpin,
{
    let shared = &ctx.shared;
    let counters = &shared.counters;
    match inbound {
        Inbound::Ack { id, durable } => {
            let Some(p) = pending.remove(&id) else {
                return Ok(());
            };
            counters.outstanding.fetch_sub(1, Ordering::Relaxed);
            if durable {
                let now = shared.now_ns();
                let in_window = run_window.is_some_and(|(_, end)| now < end);
                if in_window {
                    counters.acks.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.acks_late.fetch_add(1, Ordering::Relaxed);
                }
                counters
                    .expected_deliveries
                    .fetch_add(members.saturating_sub(1), Ordering::Relaxed);
                ctx.stats
                    .borrow_mut()
                    .ack
                    .record(now.saturating_sub(p.sent_ns) / 1000);
            } else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                ctx.stats.borrow_mut().error("ack_not_durable");
            }
        }
        Inbound::Error { id, code } => {
            if id.and_then(|id| pending.remove(&id)).is_some() {
                counters.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            counters.errors.fetch_add(1, Ordering::Relaxed);
            ctx.stats.borrow_mut().error(&code);
        }
        Inbound::MessageNew { client_message_id } => {
            if let Some(sent) = client_message_id.as_deref().and_then(protocol::sent_ns) {
                let now = shared.now_ns();
                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                ctx.stats
                    .borrow_mut()
                    .delivery
                    .record(now.saturating_sub(sent) / 1000);
            }
        }
        Inbound::Ping => send_text(io, protocol::EIO_PONG.to_owned()).await?,
        Inbound::Disconnect => return Err("disconnected".into()),
        Inbound::ConnectError(reason) => {
            return Err(format!("refused: {reason}"));
        }
        Inbound::Open | Inbound::Connected | Inbound::Other => {}
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_target() {
        assert_eq!(
            socket_url(Target::Ws, "ws://127.0.0.1:8080/ws", "T"),
            "ws://127.0.0.1:8080/ws?token=T"
        );
        assert_eq!(
            socket_url(Target::Ws, "ws://h/ws?x=1", "T"),
            "ws://h/ws?x=1&token=T"
        );
        for base in [
            "http://127.0.0.1:3900",
            "http://127.0.0.1:3900/",
            "ws://127.0.0.1:3900/socket.io/",
        ] {
            assert_eq!(
                socket_url(Target::Socketio, base, "T"),
                "ws://127.0.0.1:3900/socket.io/?EIO=4&transport=websocket"
            );
        }
    }

    #[test]
    fn reasons_are_short() {
        assert_eq!(short_reason("closed_4001"), "closed_4001");
        assert_eq!(
            short_reason("connect: Failed to connect to host: Connection refused (os error 111)"),
            "connect: Failed to connect to host: Connection refused"
        );
        assert_eq!(short_reason(""), "unknown");
    }
}
