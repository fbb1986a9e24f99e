//! The sockets: one actix system per thread, one task per client. A client connects (and for
//! Socket.IO performs the namespace handshake), joins its conversation, then sends messages while
//! the run lasts and records what comes back.
//!
//! Open loop (`--rate` > 0): each client sends on a fixed schedule, and every latency counts from
//! the time the send was *scheduled*, not from when the frame was written: a client (or a thread)
//! that falls behind, or a send held back because `inflight` sends are outstanding, adds its delay
//! to the measured latency instead of hiding it (no coordinated omission). Closed loop
//! (`--rate 0`): the next send follows the previous ack, and latency counts from the write.

use super::calls::{self, Pair};
use super::protocol::{self, Inbound, Target};
use super::report::{self, Histogram};
use super::setup::{ClientSpec, Role};
use awc::error::WsProtocolError;
use awc::ws::{Frame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Scheduled sends never made (see `Report::skipped_sends`).
    pub skipped: AtomicU64,
    /// Scheduled sends held back right now (rate mode, `inflight` outstanding).
    pub held: AtomicI64,
    /// Scheduled sends made late because `inflight` sends were outstanding.
    pub deferred: AtomicU64,
    /// Calls scenario: call numbers handed out (may pass `--calls`; the excess is not made).
    pub calls_claimed: AtomicU64,
    /// Calls scenario: calls that rang the callee and were ended.
    pub calls_done: AtomicU64,
    /// Calls scenario: calls that failed.
    pub calls_failed: AtomicU64,
    /// Calls scenario: pairs that have stopped calling (or never connected).
    pub pairs_finished: AtomicU64,
    /// Calls scenario: when the latest call ended (ns since the epoch).
    pub calls_last_end_ns: AtomicU64,
}

/// What the threads measured since the coordinator last collected (`--report-every`).
#[derive(Debug)]
pub struct IntervalStats {
    /// Send → durable ack, µs.
    pub ack: Histogram,
    /// Send → `message:new`, µs.
    pub delivery: Histogram,
}

impl IntervalStats {
    /// Empty histograms.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            ack: report::histogram()?,
            delivery: report::histogram()?,
        })
    }
}

/// Settings and shared state of a run, read by every client.
#[derive(Debug)]
pub struct Shared {
    /// Monotonic time origin; send times are nanoseconds since it.
    pub epoch: Instant,
    /// Protocol.
    pub target: Target,
    /// `--url`: one server, or the nodes of a cluster (comma-separated).
    pub url: String,
    /// Conversations of the run (clients of one conversation are spread over the nodes).
    pub conversations: usize,
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
    /// One per client thread when `--report-every` is set (else empty): the thread records
    /// into its own, the coordinator swaps them out at each interval.
    pub intervals: Vec<Mutex<IntervalStats>>,
    /// Calls scenario: calls to make in all.
    pub calls: u64,
    /// Calls scenario: longest wait for a call's ack, `call:incoming` or end.
    pub call_timeout: Duration,
}

impl Shared {
    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }
}

/// What one thread measured (histograms in µs). Threads record into their own; the
/// coordinator merges them at the end.
#[derive(Debug)]
pub struct ThreadStats {
    /// Send → `message:new` at another member.
    pub delivery: Histogram,
    /// Send → durable ack.
    pub ack: Histogram,
    /// Calls: `call:initiate` → `call:incoming` at the callee.
    pub call_setup: Histogram,
    /// Calls: `call:initiate` → the caller's ack.
    pub call_ack: Histogram,
    /// Calls: `call:end` → its ack and the callee's notice, both.
    pub call_end: Histogram,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// Connection failures by reason.
    pub connect_failures: BTreeMap<String, u64>,
}

impl ThreadStats {
    /// Empty statistics.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            delivery: report::histogram()?,
            ack: report::histogram()?,
            call_setup: report::histogram()?,
            call_ack: report::histogram()?,
            call_end: report::histogram()?,
            errors: BTreeMap::new(),
            connect_failures: BTreeMap::new(),
        })
    }

    /// Adds `part` to these.
    pub fn merge(&mut self, part: &ThreadStats) -> Result<(), String> {
        report::merge_into(&mut self.delivery, &part.delivery)?;
        report::merge_into(&mut self.ack, &part.ack)?;
        report::merge_into(&mut self.call_setup, &part.call_setup)?;
        report::merge_into(&mut self.call_ack, &part.call_ack)?;
        report::merge_into(&mut self.call_end, &part.call_end)?;
        for (k, v) in &part.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &part.connect_failures {
            *self.connect_failures.entry(k.clone()).or_default() += v;
        }
        Ok(())
    }

    pub(super) fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }
}

pub(super) struct Ctx {
    pub(super) shared: Arc<Shared>,
    http: awc::Client,
    pub(super) stats: RefCell<ThreadStats>,
    /// This thread's slot in `Shared::intervals`.
    thread: usize,
}

impl Ctx {
    /// Records a durable ack's latency (µs) in the run's and the interval's histograms.
    fn record_ack(&self, us: u64) {
        self.stats.borrow_mut().ack.saturating_record(us);
        if let Some(Ok(mut iv)) = self.shared.intervals.get(self.thread).map(Mutex::lock) {
            iv.ack.saturating_record(us);
        }
    }

    /// Records a delivery's latency (µs) in the run's and the interval's histograms.
    fn record_delivery(&self, us: u64) {
        self.stats.borrow_mut().delivery.saturating_record(us);
        if let Some(Ok(mut iv)) = self.shared.intervals.get(self.thread).map(Mutex::lock) {
            iv.delivery.saturating_record(us);
        }
    }

    /// Counts an error by code.
    pub(super) fn error(&self, code: &str) {
        self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.stats.borrow_mut().error(code);
    }
}

/// What one thread runs: single clients (the messages scenario and idle sockets) and
/// caller/callee pairs (the calls scenario).
#[derive(Debug, Default)]
pub struct Work {
    /// Clients that each run on their own.
    pub clients: Vec<ClientSpec>,
    /// Calls scenario: pairs that run together.
    pub pairs: Vec<Pair>,
}

/// Runs `work` on the current thread (number `thread`) in a new actix system until the phase
/// reaches [`Phase::Stop`]; returns what it measured.
pub fn run_thread(shared: Arc<Shared>, thread: usize, work: Work) -> Result<ThreadStats, String> {
    let stats = ThreadStats::new()?;
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
            stats: RefCell::new(stats),
            thread,
        });
        let mut phase = ctx.shared.phase.clone();
        let mut tasks: Vec<_> = work
            .clients
            .into_iter()
            .map(|spec| actix_rt::spawn(client(Rc::clone(&ctx), spec)))
            .collect();
        tasks.extend(
            work.pairs
                .into_iter()
                .map(|pair| actix_rt::spawn(calls::pair(Rc::clone(&ctx), pair))),
        );
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
        let mut stats = ctx.stats.replace(ThreadStats::new()?);
        if abandoned > 0 {
            *stats.errors.entry("stuck_at_stop".to_owned()).or_default() += abandoned;
        }
        Ok(stats)
    })
}

/// A frame as the client loop sees it.
pub(super) enum Recv {
    Text(String),
    Ping(Vec<u8>),
    Closed(Option<u16>),
    Ignore,
}

pub(super) fn classify(frame: Option<Result<Frame, WsProtocolError>>) -> Result<Recv, String> {
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

pub(super) fn closed_reason(code: Option<u16>) -> String {
    code.map_or_else(|| "closed".to_owned(), |c| format!("closed_{c}"))
}

pub(super) async fn send_text<S>(io: &mut S, text: String) -> Result<(), String>
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

pub(super) fn socket_url(target: Target, base: &str, token: &str) -> String {
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

/// A connected socket.
pub(super) trait Socket:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin
{
}

impl Shared {
    /// The server client `index` connects to: with several `--url`s (a cluster's nodes), the
    /// members of a conversation (clients `c`, `c + M`, `c + 2M`, ...) take the nodes in turn,
    /// so every conversation spans nodes.
    pub fn node_url(&self, index: usize) -> &str {
        let nodes: Vec<&str> = self.url.split(',').collect();
        let turn = index / self.conversations.max(1);
        nodes[turn % nodes.len()]
    }
}

/// Connects, authenticates and joins; returns the socket and the next request id.
async fn set_up(ctx: &Ctx, spec: &ClientSpec) -> Result<(impl Socket, u64), String> {
    let target = ctx.shared.target;
    let url = socket_url(target, ctx.shared.node_url(spec.index), &spec.token);
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

/// Sets `spec` up within the connect limits, counting it as connected or failed; returns the
/// socket and the next request id.
pub(super) async fn connect(ctx: &Ctx, spec: &ClientSpec) -> Option<(impl Socket, u64)> {
    let shared = &ctx.shared;
    let counters = &shared.counters;
    let permit = shared.connect_limit.acquire().await.ok()?;
    let setup = tokio::time::timeout(shared.connect_timeout, set_up(ctx, spec)).await;
    drop(permit);
    match setup {
        Ok(Ok(v)) => {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            Some(v)
        }
        Ok(Err(reason)) => {
            counters.connect_failed.fetch_add(1, Ordering::Relaxed);
            *ctx.stats
                .borrow_mut()
                .connect_failures
                .entry(short_reason(&reason))
                .or_default() += 1;
            tracing::debug!(client = spec.index, %reason, "connection failed");
            None
        }
        Err(_) => {
            counters.connect_failed.fetch_add(1, Ordering::Relaxed);
            *ctx.stats
                .borrow_mut()
                .connect_failures
                .entry("timeout".to_owned())
                .or_default() += 1;
            None
        }
    }
}

async fn client(ctx: Rc<Ctx>, spec: ClientSpec) {
    let Some((io, next_id)) = connect(&ctx, &spec).await else {
        return;
    };
    if let Err(reason) = run(&ctx, &spec, io, next_id).await {
        ctx.error(&short_reason(&reason));
        tracing::debug!(client = spec.index, %reason, "client stopped");
    }
}

/// Error reasons become report keys: keep the kind, drop per-connection detail.
pub(super) fn short_reason(reason: &str) -> String {
    let cut = reason.find(['(', '\n']).unwrap_or(reason.len());
    let s = reason.get(..cut).unwrap_or(reason).trim();
    let s: String = s.chars().take(80).collect();
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

/// Open-loop schedule of one client: send times every `interval` ns from a start until the end
/// of the window. A send is always stamped with its scheduled time; one due while the client
/// may not send (`inflight` outstanding) is held back, in order, until [`Schedule::release`].
#[derive(Debug)]
struct Schedule {
    interval: u64,
    end: u64,
    next: Option<u64>,
    held: VecDeque<u64>,
}

impl Schedule {
    fn new(first: u64, interval: u64, end: u64) -> Self {
        Self {
            interval: interval.max(1),
            end,
            next: Some(first).filter(|t| *t < end),
            held: VecDeque::new(),
        }
    }

    /// When the next send is due.
    fn due(&self) -> Option<u64> {
        self.next
    }

    /// The due send's time has come: returns the time to stamp a send with now, or `None`
    /// when it is held back (`can_send` false, or earlier ones are still held).
    fn fire(&mut self, can_send: bool) -> Option<u64> {
        let tick = self.next?;
        self.next = tick.checked_add(self.interval).filter(|t| *t < self.end);
        if can_send && self.held.is_empty() {
            Some(tick)
        } else {
            self.held.push_back(tick);
            None
        }
    }

    /// The oldest held-back send, to go out now (stamped with its scheduled time).
    fn release(&mut self) -> Option<u64> {
        self.held.pop_front()
    }

    /// Drops the held-back sends; returns how many there were.
    fn drop_held(&mut self) -> u64 {
        let n = self.held.len() as u64;
        self.held.clear();
        n
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
    // Rate mode: the schedule, once the window is known. Sends held back because `inflight`
    // sends were outstanding when they were due go out, stamped with their scheduled time, as
    // soon as a reply frees a slot (in the drain too), so the wait shows in their latency; those
    // still held when the sockets close are counted as skipped. A client that falls behind
    // fires its overdue sends at once, even in the drain.
    let mut schedule: Option<Schedule> = None;
    // The run window, once the coordinator has announced it.
    let mut window: Option<(u64, u64)> = None;
    // Closed loop: whether this client still has sending to do (active, run not over).
    let mut sending = false;
    let mut seq = 0u64;

    loop {
        match phase {
            Phase::Run { start_ns, end_ns } if window.is_none() => {
                window = Some((start_ns, end_ns));
                sending = conversation.is_some();
                if let Some(iv) = interval_ns.filter(|_| sending) {
                    // Spread first sends over one interval so clients do not fire together.
                    let frac = spec.index as f64 / shared.active.max(1) as f64;
                    let first = start_ns + (iv as f64 * frac) as u64;
                    schedule = Some(Schedule::new(first, iv, end_ns));
                }
            }
            Phase::Drain => sending = false,
            Phase::Stop => {
                if let Some(n) = schedule.as_mut().map(Schedule::drop_held) {
                    counters.skipped.fetch_add(n, Ordering::Relaxed);
                    counters
                        .held
                        .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
                }
                if let Err(e) = io.send(Message::Close(None)).await {
                    tracing::debug!(client = spec.index, error = %e, "close frame not sent");
                }
                return Ok(());
            }
            _ => {}
        }

        // Held-back scheduled sends go out as replies free slots.
        if let (Some(conv), Some(sched)) = (conversation, schedule.as_mut()) {
            while pending.len() < inflight {
                let Some(tick) = sched.release() else {
                    break;
                };
                counters.held.fetch_sub(1, Ordering::Relaxed);
                send_one(
                    ctx,
                    spec,
                    io,
                    conv,
                    &padding,
                    pending,
                    &mut next_id,
                    &mut seq,
                    tick,
                )
                .await?;
            }
        }

        // When to wake up without a frame: the next rate tick, or (closed loop) the start or
        // the end of the run.
        let mut wake_at = None;
        if interval_ns.is_some() {
            wake_at = schedule.as_ref().and_then(Schedule::due);
        } else if let (true, Some(conv), Some((start_ns, end_ns))) = (sending, conversation, window)
        {
            let now = shared.now_ns();
            if now >= end_ns {
                sending = false;
            } else if now < start_ns {
                wake_at = Some(start_ns);
            } else {
                while pending.len() < inflight {
                    let now = shared.now_ns();
                    send_one(
                        ctx,
                        spec,
                        io,
                        conv,
                        &padding,
                        pending,
                        &mut next_id,
                        &mut seq,
                        now,
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
                // Rate mode: send on a fixed schedule, each send stamped with its scheduled time.
                if let (Some(sched), Some(conv)) = (schedule.as_mut(), conversation) {
                    match sched.fire(pending.len() < inflight) {
                        Some(tick) => {
                            send_one(
                                ctx,
                                spec,
                                io,
                                conv,
                                &padding,
                                pending,
                                &mut next_id,
                                &mut seq,
                                tick,
                            )
                            .await?;
                        }
                        None => {
                            counters.deferred.fetch_add(1, Ordering::Relaxed);
                            counters.held.fetch_add(1, Ordering::Relaxed);
                        }
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

pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes one `message:send`. `sent_ns` is the time its latency counts from: the scheduled
/// time in rate mode, the time of writing in closed loop.
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
    sent_ns: u64,
) -> Result<(), String>
where
    S: Sink<Message, Error = WsProtocolError> + Unpin,
{
    let shared = &ctx.shared;
    let id = *next_id;
    *next_id += 1;
    *seq += 1;
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
                ctx.record_ack(now.saturating_sub(p.sent_ns) / 1000);
            } else {
                ctx.error("ack_not_durable");
            }
        }
        Inbound::Error { id, code } => {
            if id.and_then(|id| pending.remove(&id)).is_some() {
                counters.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            ctx.error(&code);
        }
        Inbound::MessageNew { client_message_id } => {
            if let Some(sent) = client_message_id.as_deref().and_then(protocol::sent_ns) {
                let now = shared.now_ns();
                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                ctx.record_delivery(now.saturating_sub(sent) / 1000);
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
    fn open_loop_sends_are_stamped_with_their_scheduled_time() {
        // Every 10 ns from 100 until 150: 100, 110, 120, 130, 140.
        let mut s = Schedule::new(100, 10, 150);
        assert_eq!(s.due(), Some(100));
        assert_eq!(s.fire(true), Some(100));
        // Due while the client may not send: held back, and so is the next one (order kept)
        // even if a slot is free by then.
        assert_eq!(s.fire(false), None);
        assert_eq!(s.fire(true), None);
        // Fired late (the client fell behind): still stamped with the scheduled time.
        assert_eq!(s.due(), Some(130));
        assert_eq!(s.release(), Some(110));
        assert_eq!(s.release(), Some(120));
        assert_eq!(s.release(), None);
        assert_eq!(s.fire(true), Some(130));
        assert_eq!(s.fire(false), None);
        assert_eq!(s.due(), None);
        assert_eq!(s.drop_held(), 1);
        assert_eq!(s.release(), None);
        assert_eq!(Schedule::new(150, 10, 150).due(), None);
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
