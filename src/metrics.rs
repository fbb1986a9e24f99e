//! Process metrics in the Prometheus text exposition format (version 0.0.4), served at
//! `GET /metrics`.
//!
//! Hot paths only touch atomics: counters and histogram buckets are `AtomicU64`s. Gauges keyed by
//! a label set that changes only when a session or call starts or ends (connections by transport
//! and dialect, calls by state) sit behind a mutex taken on those events and at scrape time.
//! Label values are static names or come from a fixed list, never from client input, so the
//! number of series stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0u64;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// What was rate limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Inbound frames of one connection (`FRAME_RATE_PER_SEC`).
    Frames,
    /// Message sends of one user (`MESSAGE_RATE_PER_MIN`).
    Messages,
    /// Calls started by one user (`CALL_RATE_PER_HOUR`).
    Calls,
    /// Commands running at once on one connection.
    InFlight,
    /// A REST request answered 429 (OTP cooldown and the limits above reached over REST).
    Http,
}

impl Limit {
    const ALL: [Self; 5] = [
        Self::Frames,
        Self::Messages,
        Self::Calls,
        Self::InFlight,
        Self::Http,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Frames => "frames",
            Self::Messages => "messages",
            Self::Calls => "calls",
            Self::InFlight => "in_flight",
            Self::Http => "http",
        }
    }
}

/// Which bounded queue refused an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// A connection's outbound queue (`OUTBOUND_QUEUE`): the slow consumer is disconnected.
    Outbound,
    /// The group-commit queue (`WRITE_QUEUE`): the send is refused with `unavailable`.
    Write,
}

/// End reasons that get their own label value; anything else (client-chosen reasons) is
/// counted as `other`.
pub const KNOWN_END_REASONS: [&str; 13] = [
    "hangup",
    "rejected",
    "cancelled",
    "no_answer",
    "network_error",
    "everyone_left",
    "busy",
    "glare",
    "admin",
    "server_shutdown",
    "server_restart",
    "failed",
    "declined",
];

/// Call outcomes as persisted (`calls.status` of an ended call).
const OUTCOMES: [&str; 6] = ["ended", "rejected", "missed", "busy", "cancelled", "failed"];

/// States of a live call.
pub const LIVE_CALL_STATES: [&str; 3] = ["initiated", "ringing", "ongoing"];

/// Every metric of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Mutex<BTreeMap<(&'static str, &'static str), i64>>,
    sessions_opened: AtomicU64,
    messages_acked: AtomicU64,
    ack_latency: Histogram,
    fanout_events: AtomicU64,
    fanout_deliveries: AtomicU64,
    outbound_drops: AtomicU64,
    write_drops: AtomicU64,
    rate_limited: [AtomicU64; 5],
    calls_live: [AtomicI64; 3],
    calls_ended: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    http_requests: AtomicU64,
    http_server_errors: AtomicU64,
    shutdown_calls_ended: AtomicU64,
    connections_refused: AtomicU64,
    connections_aborted: AtomicU64,
    last_seen_written: AtomicU64,
    last_seen_failed: AtomicU64,
    last_seen_dropped: AtomicU64,
    socketio_recoveries: [AtomicU64; RECOVERY_OUTCOMES.len()],
    media_uploads: [AtomicU64; UPLOAD_OUTCOMES.len()],
    media_bytes_uploaded: AtomicU64,
    media_bytes_stored: AtomicI64,
    media_objects_removed: AtomicU64,
}

/// Outcomes of media uploads (`failed`: the store or the database failed).
pub const UPLOAD_OUTCOMES: [&str; 7] = [
    "stored",
    "too_large",
    "unsupported_media_type",
    "quota_exceeded",
    "invalid",
    "timeout",
    "failed",
];

/// Outcomes of Socket.IO connection state recovery attempts (`refused`: the identity did not
/// pass its check again).
pub const RECOVERY_OUTCOMES: [&str; 6] = [
    "recovered",
    "unknown_session",
    "bad_offset",
    "too_many_events",
    "unavailable",
    "refused",
];

/// Values that live elsewhere and are read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Users with at least one live session (registry).
    pub online_users: usize,
    /// Conversation actors alive.
    pub conversation_actors: usize,
    /// Pool connections checked out.
    pub db_in_use: u32,
    /// Pool connections idle.
    pub db_idle: u32,
    /// Pool size (`DB_POOL_SIZE`).
    pub db_max: u32,
    /// Callers waiting for a database slot.
    pub db_waiting: i64,
    /// Database operations that failed (internal or unavailable).
    pub db_errors: u64,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// The cluster link's counters (cluster mode only).
    pub cluster: Option<crate::realtime::cluster::ClusterCounts>,
}

impl Metrics {
    /// Fresh metrics, every value zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session came up on `transport` speaking `dialect`.
    pub fn session_opened(&self, transport: &'static str, dialect: &'static str) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.connections);
        *map.entry((transport, dialect)).or_default() += 1;
    }

    /// A session ended.
    pub fn session_closed(&self, transport: &'static str, dialect: &'static str) {
        let mut map = lock(&self.connections);
        if let Some(n) = map.get_mut(&(transport, dialect)) {
            *n = (*n - 1).max(0);
        }
    }

    /// Live sessions on `transport` speaking `dialect`.
    pub fn connections(&self, transport: &'static str, dialect: &'static str) -> i64 {
        lock(&self.connections)
            .get(&(transport, dialect))
            .copied()
            .unwrap_or(0)
    }

    /// Live sessions on every transport.
    pub fn connections_total(&self) -> i64 {
        lock(&self.connections).values().sum()
    }

    /// A message send was acknowledged after its commit, `latency` after it was received.
    pub fn message_acked(&self, latency: Duration) {
        self.messages_acked.fetch_add(1, Ordering::Relaxed);
        self.ack_latency.observe(latency);
    }

    /// Messages acknowledged so far.
    pub fn messages_acked(&self) -> u64 {
        self.messages_acked.load(Ordering::Relaxed)
    }

    /// One event fanned out to `deliveries` sessions.
    pub fn fanned_out(&self, deliveries: usize) {
        self.fanout_events.fetch_add(1, Ordering::Relaxed);
        self.fanout_deliveries
            .fetch_add(deliveries as u64, Ordering::Relaxed);
    }

    /// A bounded queue refused an item.
    pub fn queue_drop(&self, queue: Queue) {
        match queue {
            Queue::Outbound => &self.outbound_drops,
            Queue::Write => &self.write_drops,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A realtime upgrade was refused at `MAX_REALTIME_CONNECTIONS`.
    /// Returns the count so far.
    pub fn connection_refused(&self) -> u64 {
        self.connections_refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A connection still open after its close grace was aborted.
    pub fn connection_aborted(&self) {
        self.connections_aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections aborted after their close grace so far.
    pub fn connections_aborted(&self) -> u64 {
        self.connections_aborted.load(Ordering::Relaxed)
    }

    /// A Socket.IO client asked to recover its session; `outcome` is one of
    /// [`RECOVERY_OUTCOMES`] (anything else counts as `refused`).
    pub fn socketio_recovery(&self, outcome: &str) {
        let i = RECOVERY_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(RECOVERY_OUTCOMES.len() - 1);
        self.socketio_recoveries[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Recovery attempts with an outcome so far.
    pub fn socketio_recoveries(&self, outcome: &str) -> u64 {
        RECOVERY_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.socketio_recoveries[i].load(Ordering::Relaxed))
    }

    /// An upload ended with `outcome`, one of [`UPLOAD_OUTCOMES`] (anything else counts as
    /// `failed`); `bytes` were stored when it was.
    pub fn media_upload(&self, outcome: &str, bytes: u64) {
        let i = UPLOAD_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(UPLOAD_OUTCOMES.len() - 1);
        self.media_uploads[i].fetch_add(1, Ordering::Relaxed);
        if outcome == "stored" {
            self.media_bytes_uploaded
                .fetch_add(bytes, Ordering::Relaxed);
            self.media_bytes_stored
                .fetch_add(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
    }

    /// Uploads with an outcome so far.
    pub fn media_uploads(&self, outcome: &str) -> u64 {
        UPLOAD_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.media_uploads[i].load(Ordering::Relaxed))
    }

    /// The bytes the media store holds (read from the database at start and after each
    /// clean-up, adjusted by uploads in between).
    pub fn set_media_bytes_stored(&self, bytes: i64) {
        self.media_bytes_stored.store(bytes, Ordering::Relaxed);
    }

    /// The clean-up removed `n` uploads, orphaned objects or staging files.
    pub fn media_objects_removed(&self, n: u64) {
        self.media_objects_removed.fetch_add(n, Ordering::Relaxed);
    }

    /// A rate limit refused something.
    pub fn rate_limited(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            self.rate_limited[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rate-limit refusals of one kind so far.
    pub fn rate_limited_count(&self, limit: Limit) -> u64 {
        Limit::ALL
            .iter()
            .position(|l| *l == limit)
            .map_or(0, |i| self.rate_limited[i].load(Ordering::Relaxed))
    }

    /// A live call moved from state `from` (`None`: it was just created) to `to` (`None`: it
    /// ended). States are `initiated`, `ringing` and `ongoing`.
    pub fn call_state(&self, from: Option<&str>, to: Option<&str>) {
        if let Some(i) = from.and_then(|s| LIVE_CALL_STATES.iter().position(|x| *x == s)) {
            self.calls_live[i].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(i) = to.and_then(|s| LIVE_CALL_STATES.iter().position(|x| *x == s)) {
            self.calls_live[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call ended with `outcome` (`ended`, `missed`, ...) for `reason`.
    pub fn call_ended(&self, outcome: &str, reason: Option<&str>) {
        let outcome = OUTCOMES
            .iter()
            .find(|o| **o == outcome)
            .copied()
            .unwrap_or("failed");
        let reason = reason
            .and_then(|r| KNOWN_END_REASONS.iter().find(|k| **k == r).copied())
            .unwrap_or("other");
        *lock(&self.calls_ended)
            .entry((outcome, reason))
            .or_default() += 1;
        if reason == "server_shutdown" {
            self.shutdown_calls_ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Live calls in a state.
    pub fn calls_in_state(&self, state: &str) -> i64 {
        LIVE_CALL_STATES
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.calls_live[i].load(Ordering::Relaxed))
    }

    /// One HTTP request answered with `status`.
    pub fn http_request(&self, status: u16) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.http_server_errors.fetch_add(1, Ordering::Relaxed);
        }
        if status == 429 {
            self.rate_limited(Limit::Http);
        }
    }

    /// Last-seen times of `users` users were written.
    pub fn last_seen_written(&self, users: usize) {
        self.last_seen_written
            .fetch_add(users as u64, Ordering::Relaxed);
    }

    /// A last-seen write failed (its users wait for the next flush).
    pub fn last_seen_failed(&self) {
        self.last_seen_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Last-seen times of `users` users were dropped: the buffer was full.
    pub fn last_seen_dropped(&self, users: usize) {
        self.last_seen_dropped
            .fetch_add(users as u64, Ordering::Relaxed);
    }

    /// Last-seen writes that failed so far.
    pub fn last_seen_failures(&self) -> u64 {
        self.last_seen_failed.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "switchboard_uptime_seconds",
            "gauge",
            "Seconds since the process started.",
        );
        let _ = writeln!(out, "switchboard_uptime_seconds {}", snap.uptime_secs);

        header(
            &mut out,
            "switchboard_connections",
            "gauge",
            "Live realtime connections (sessions) by transport and dialect.",
        );
        let connections = lock(&self.connections).clone();
        if connections.is_empty() {
            let _ = writeln!(
                out,
                "switchboard_connections{{transport=\"ws\",dialect=\"canonical\"}} 0"
            );
        }
        let mut sessions = 0;
        for ((transport, dialect), n) in &connections {
            sessions += n;
            let _ = writeln!(
                out,
                "switchboard_connections{{transport=\"{}\",dialect=\"{}\"}} {n}",
                escape(transport),
                escape(dialect)
            );
        }
        gauge(
            &mut out,
            "switchboard_sessions",
            "Live sessions (all transports).",
            sessions,
        );
        counter(
            &mut out,
            "switchboard_sessions_opened_total",
            "Sessions opened since start.",
            self.sessions_opened.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "switchboard_online_users",
            "Users with at least one live session.",
            snap.online_users as i64,
        );
        gauge(
            &mut out,
            "switchboard_conversation_actors",
            "Conversation actors alive.",
            snap.conversation_actors as i64,
        );
        counter(
            &mut out,
            "switchboard_messages_acked_total",
            "Message sends acknowledged after their commit.",
            self.messages_acked.load(Ordering::Relaxed),
        );
        self.ack_latency.render(
            &mut out,
            "switchboard_message_ack_latency_seconds",
            "Time from receiving a send to acknowledging its commit.",
        );
        counter(
            &mut out,
            "switchboard_fanout_events_total",
            "Events fanned out to users' devices.",
            self.fanout_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_fanout_deliveries_total",
            "Deliveries of fanned-out events to sessions.",
            self.fanout_deliveries.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "switchboard_queue_drops_total",
            "counter",
            "Items a bounded queue refused: outbound (the slow consumer is disconnected) or \
             write (the send is refused).",
        );
        let _ = writeln!(
            out,
            "switchboard_queue_drops_total{{queue=\"outbound\"}} {}",
            self.outbound_drops.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "switchboard_queue_drops_total{{queue=\"write\"}} {}",
            self.write_drops.load(Ordering::Relaxed)
        );

        counter(
            &mut out,
            "switchboard_connections_refused_total",
            "Realtime upgrades refused with 503 at MAX_REALTIME_CONNECTIONS.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_connections_aborted_total",
            "Connections aborted because they were still open SOCKET_CLOSE_GRACE_MS after \
             their close (a peer that stopped reading).",
            self.connections_aborted.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "switchboard_socketio_recoveries_total",
            "counter",
            "Socket.IO connection state recovery attempts, by outcome.",
        );
        for (outcome, n) in RECOVERY_OUTCOMES.iter().zip(&self.socketio_recoveries) {
            let _ = writeln!(
                out,
                "switchboard_socketio_recoveries_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "switchboard_media_uploads_total",
            "counter",
            "Media uploads, by outcome (stored or why they were refused).",
        );
        for (outcome, n) in UPLOAD_OUTCOMES.iter().zip(&self.media_uploads) {
            let _ = writeln!(
                out,
                "switchboard_media_uploads_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "switchboard_media_uploaded_bytes_total",
            "Bytes of media stored by uploads (after metadata was stripped).",
            self.media_bytes_uploaded.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "switchboard_media_stored_bytes",
            "gauge",
            "Bytes the media store holds (uploads and thumbnails).",
        );
        let _ = writeln!(
            out,
            "switchboard_media_stored_bytes {}",
            self.media_bytes_stored.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "switchboard_media_removed_total",
            "What the media clean-up removed: uploads no message uses (with their thumbnails), \
             objects without a row and unfinished staging files.",
            self.media_objects_removed.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "switchboard_rate_limited_total",
            "counter",
            "Requests refused by a rate limit, by limit.",
        );
        for (limit, n) in Limit::ALL.iter().zip(&self.rate_limited) {
            let _ = writeln!(
                out,
                "switchboard_rate_limited_total{{limit=\"{}\"}} {}",
                limit.name(),
                n.load(Ordering::Relaxed)
            );
        }

        header(
            &mut out,
            "switchboard_calls",
            "gauge",
            "Live calls by state.",
        );
        for (state, n) in LIVE_CALL_STATES.iter().zip(&self.calls_live) {
            let _ = writeln!(
                out,
                "switchboard_calls{{state=\"{state}\"}} {}",
                n.load(Ordering::Relaxed).max(0)
            );
        }
        header(
            &mut out,
            "switchboard_calls_ended_total",
            "counter",
            "Calls ended, by outcome and end reason.",
        );
        let ended = lock(&self.calls_ended).clone();
        if ended.is_empty() {
            let _ = writeln!(
                out,
                "switchboard_calls_ended_total{{outcome=\"ended\",reason=\"hangup\"}} 0"
            );
        }
        for ((outcome, reason), n) in &ended {
            let _ = writeln!(
                out,
                "switchboard_calls_ended_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
            );
        }

        gauge(
            &mut out,
            "switchboard_db_pool_connections_in_use",
            "Pool connections checked out.",
            i64::from(snap.db_in_use),
        );
        gauge(
            &mut out,
            "switchboard_db_pool_connections_idle",
            "Pool connections open and idle.",
            i64::from(snap.db_idle),
        );
        gauge(
            &mut out,
            "switchboard_db_pool_connections_max",
            "Pool size (DB_POOL_SIZE).",
            i64::from(snap.db_max),
        );
        gauge(
            &mut out,
            "switchboard_db_pool_waiting",
            "Database operations waiting for a slot.",
            snap.db_waiting,
        );
        counter(
            &mut out,
            "switchboard_db_errors_total",
            "Database operations that failed (unavailable or internal errors).",
            snap.db_errors,
        );
        counter(
            &mut out,
            "switchboard_http_requests_total",
            "HTTP requests answered.",
            self.http_requests.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_http_server_errors_total",
            "HTTP requests answered with a 5xx status.",
            self.http_server_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_last_seen_written_total",
            "Users whose last_seen_at was written after their last connection closed.",
            self.last_seen_written.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_last_seen_write_failures_total",
            "Last-seen writes (one UPDATE for a batch of users) that failed; their users are \
             written by a later flush.",
            self.last_seen_failed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "switchboard_last_seen_dropped_total",
            "Users whose last-seen time was dropped because LAST_SEEN_BUFFER users were waiting.",
            self.last_seen_dropped.load(Ordering::Relaxed),
        );
        if let Some(cluster) = &snap.cluster {
            render_cluster(&mut out, cluster);
        }
        out
    }
}

/// The `switchboard_cluster_*` series (cluster mode only).
fn render_cluster(out: &mut String, c: &crate::realtime::cluster::ClusterCounts) {
    gauge(
        out,
        "switchboard_cluster_nodes",
        "Live nodes of the cluster seen at the last heartbeat (this one included).",
        i64::try_from(c.nodes).unwrap_or(i64::MAX),
    );
    gauge(
        out,
        "switchboard_cluster_redis_up",
        "1 while Redis answers, 0 while it does not.",
        i64::from(c.redis_up),
    );
    counter(
        out,
        "switchboard_cluster_published_total",
        "Events published to Redis for the other nodes.",
        c.published,
    );
    counter(
        out,
        "switchboard_cluster_received_total",
        "Events received from the other nodes.",
        c.received,
    );
    counter(
        out,
        "switchboard_cluster_dropped_total",
        "Events whose cross-node delivery was dropped (CLUSTER_QUEUE full, Redis away, or this \
         node fell behind the bus, where each lost bus message counts once though it may have \
         held several events); their clients catch up with sync.",
        c.dropped,
    );
    counter(
        out,
        "switchboard_cluster_gap_fills_total",
        "Message seqs read from PostgreSQL after waiting CLUSTER_GAP_WAIT_MS for another node's \
         delivery.",
        c.gap_fills,
    );
    counter(
        out,
        "switchboard_cluster_nodes_reaped_total",
        "Dead nodes whose devices this node took offline.",
        c.nodes_reaped,
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a label value (`\`, `"` and line feeds).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let m = Metrics::new();
        m.message_acked(Duration::from_micros(300));
        m.message_acked(Duration::from_millis(3));
        m.message_acked(Duration::from_secs(60));
        let text = m.render(&Snapshot::default());
        let name = "switchboard_message_ack_latency_seconds";
        assert_eq!(
            value(&text, &format!("{name}_bucket{{le=\"0.0005\"}}")),
            1.0
        );
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"0.005\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"10\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")), 3.0);
        assert_eq!(value(&text, &format!("{name}_count")), 3.0);
        assert!((value(&text, &format!("{name}_sum")) - 60.0033).abs() < 1e-6);
        assert_eq!(value(&text, "switchboard_messages_acked_total"), 3.0);
    }

    #[test]
    fn call_gauges_follow_transitions_and_unknown_reasons_become_other() {
        let m = Metrics::new();
        m.call_state(None, Some("initiated"));
        m.call_state(Some("initiated"), Some("ringing"));
        m.call_state(None, Some("initiated"));
        assert_eq!(m.calls_in_state("ringing"), 1);
        assert_eq!(m.calls_in_state("initiated"), 1);
        m.call_state(Some("ringing"), None);
        m.call_ended("missed", Some("no_answer"));
        m.call_ended("ended", Some("my cat sat on the phone"));
        let text = m.render(&Snapshot::default());
        assert_eq!(value(&text, "switchboard_calls{state=\"ringing\"}"), 0.0);
        assert_eq!(
            value(
                &text,
                "switchboard_calls_ended_total{outcome=\"missed\",reason=\"no_answer\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "switchboard_calls_ended_total{outcome=\"ended\",reason=\"other\"}"
            ),
            1.0
        );
    }

    #[test]
    fn connections_are_labelled_by_transport_and_dialect() {
        let m = Metrics::new();
        m.session_opened("ws", "canonical");
        m.session_opened("socket.io", "canonical");
        m.session_opened("ws", "canonical");
        m.session_closed("ws", "canonical");
        let text = m.render(&Snapshot::default());
        assert_eq!(
            value(
                &text,
                "switchboard_connections{transport=\"ws\",dialect=\"canonical\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "switchboard_sessions"), 2.0);
        assert_eq!(value(&text, "switchboard_sessions_opened_total"), 3.0);
    }

    #[test]
    fn last_seen_counters_are_exported() {
        let m = Metrics::new();
        m.last_seen_written(500);
        m.last_seen_failed();
        m.last_seen_dropped(3);
        let text = m.render(&Snapshot::default());
        assert_eq!(value(&text, "switchboard_last_seen_written_total"), 500.0);
        assert_eq!(
            value(&text, "switchboard_last_seen_write_failures_total"),
            1.0
        );
        assert_eq!(value(&text, "switchboard_last_seen_dropped_total"), 3.0);
        assert_eq!(m.last_seen_failures(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
