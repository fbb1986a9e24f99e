//! Process metrics in the Prometheus text exposition format (version 0.0.4), served at
//! `GET /metrics`.
//!
//! The series are `prometheus-client` metrics registered once, under the `switchboard` prefix, in
//! a [`Registry`] that [`Metrics::render`] encodes. Counters and gauges are atomics; a labelled
//! one is first looked up in its family's map under a read lock (the series with a known set of
//! values are all created up front), and the message-ack latency histogram takes a short lock per
//! observation.
//! Values that other parts of the server own (pool usage, registry counts, the cluster link's
//! counters, live calls) are read once per scrape into a registry built for that scrape, so no
//! second copy of them has to be kept in step.
//!
//! Every label is typed: a label set is a struct and a label value an enum (or, for connections,
//! a transport's or dialect's static name), never client input, so the number of series stays
//! bounded. Client-chosen values such as a call's end reason are folded into a catch-all value.

use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The content type of the exposition (the Prometheus text format, version 0.0.4).
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The prefix of every series name.
const PREFIX: &str = "switchboard";

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Declares a label value type: a fieldless enum whose variants are exposed under fixed names.
/// The derive of `EncodeLabelValue` would expose the variant identifiers themselves; the names
/// dashboards know are snake_case (and `socket.io`-like names are not identifiers at all), so
/// the encoding is written here once for every such enum.
macro_rules! label_value {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order they are declared.
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value as exposed.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }

            /// The value exposed as `name`, if there is one (not every label is read back
            /// from a name).
            #[allow(dead_code)]
            pub(crate) fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_value! {
    /// What was rate limited.
    pub(crate) enum Limit {
        /// Inbound frames of one connection (`FRAME_RATE_PER_SEC`).
        Frames => "frames",
        /// Message sends of one user (`MESSAGE_RATE_PER_MIN`).
        Messages => "messages",
        /// Calls started by one user (`CALL_RATE_PER_HOUR`).
        Calls => "calls",
        /// Commands running at once on one connection.
        InFlight => "in_flight",
        /// A REST request answered 429 (OTP cooldown and the limits above reached over REST).
        Http => "http",
    }
}

label_value! {
    /// Which bounded queue refused an item.
    pub(crate) enum Queue {
        /// A connection's outbound queue (`OUTBOUND_QUEUE`): the slow consumer is disconnected.
        Outbound => "outbound",
        /// The group-commit queue (`WRITE_QUEUE`): the send is refused with `unavailable`.
        Write => "write",
    }
}

label_value! {
    /// Why a call ended, as far as the server knows the reason: anything a client made up is
    /// counted as [`EndReason::Other`].
    pub(crate) enum EndReason {
        /// A party hung up.
        Hangup => "hangup",
        /// The callee rejected the call.
        Rejected => "rejected",
        /// The caller cancelled before an answer.
        Cancelled => "cancelled",
        /// Nobody answered in time.
        NoAnswer => "no_answer",
        /// A party's network failed.
        NetworkError => "network_error",
        /// Every participant left.
        EveryoneLeft => "everyone_left",
        /// The callee was busy.
        Busy => "busy",
        /// Two parties called each other at once.
        Glare => "glare",
        /// An administrator ended it.
        Admin => "admin",
        /// The server shut down.
        ServerShutdown => "server_shutdown",
        /// The server restarted.
        ServerRestart => "server_restart",
        /// The call failed.
        Failed => "failed",
        /// The callee declined.
        Declined => "declined",
        /// A reason the server does not know (client-chosen) or none at all.
        Other => "other",
    }
}

label_value! {
    /// How an ended call is persisted (`calls.status`).
    pub(crate) enum CallOutcome {
        /// It was answered and ended.
        Ended => "ended",
        /// The callee rejected it.
        Rejected => "rejected",
        /// Nobody answered.
        Missed => "missed",
        /// The callee was busy.
        Busy => "busy",
        /// The caller cancelled it.
        Cancelled => "cancelled",
        /// It failed; unknown outcomes are counted here too.
        Failed => "failed",
    }
}

label_value! {
    /// States of a live call.
    pub(crate) enum CallState {
        /// Created, the callee not yet reached.
        Initiated => "initiated",
        /// Ringing on the callee's devices.
        Ringing => "ringing",
        /// Answered.
        Ongoing => "ongoing",
    }
}

label_value! {
    /// Outcomes of media uploads.
    pub(crate) enum UploadOutcome {
        /// Stored.
        Stored => "stored",
        /// Over the size limit.
        TooLarge => "too_large",
        /// A content type outside the allow-list.
        UnsupportedMediaType => "unsupported_media_type",
        /// The user's quota is used up.
        QuotaExceeded => "quota_exceeded",
        /// The content did not pass its checks.
        Invalid => "invalid",
        /// The body did not arrive in time.
        Timeout => "timeout",
        /// The store or the database failed; unknown outcomes are counted here too.
        Failed => "failed",
    }
}

label_value! {
    /// Outcomes of Socket.IO connection state recovery attempts.
    pub(crate) enum RecoveryOutcome {
        /// The session was recovered.
        Recovered => "recovered",
        /// No such session (expired or never seen).
        UnknownSession => "unknown_session",
        /// The offset named no event of the session.
        BadOffset => "bad_offset",
        /// More events were missed than are kept.
        TooManyEvents => "too_many_events",
        /// Recovery could not be attempted.
        Unavailable => "unavailable",
        /// The identity did not pass its check again; unknown outcomes are counted here too.
        Refused => "refused",
    }
}

/// Labels of `switchboard_connections`. Both are static names (the transport module's and the
/// dialect table's), so only names compiled into the server can appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    transport: &'static str,
    dialect: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    queue: Queue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: Limit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RecoveryLabels {
    outcome: RecoveryOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UploadLabels {
    outcome: UploadOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallStateLabels {
    state: CallState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallEndLabels {
    outcome: CallOutcome,
    reason: EndReason,
}

/// Values that live elsewhere and are read at scrape time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Users with at least one live session (registry).
    pub online_users: usize,
    /// Conversation actors alive.
    pub conversation_actors: usize,
    /// Pending timers of live calls in the registry.
    pub call_timers: usize,
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
    /// The allocator's figures, when the binary installed a probe for them.
    pub allocator: Option<AllocatorStats>,
}

/// What the process's allocator holds, in bytes (jemalloc's `stats.*`). `allocated` is what
/// live objects use; `resident` what the allocator keeps in physical memory (live objects,
/// its own metadata and freed pages not yet handed back); `retained` address space it keeps
/// mapped but has handed back. A rise of `resident` without one of `allocated` is memory the
/// allocator keeps, not memory the server holds on to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in pages that hold at least one live allocation.
    pub active: u64,
    /// Bytes of physical memory the allocator holds.
    pub resident: u64,
    /// Bytes of address space kept mapped but handed back to the system.
    pub retained: u64,
}

/// Reads the allocator's figures; installed once by the binary that picked the allocator.
static ALLOCATOR_PROBE: std::sync::OnceLock<fn() -> Option<AllocatorStats>> =
    std::sync::OnceLock::new();

/// Installs the function `/metrics` reads the allocator's figures with (the first one wins).
pub fn set_allocator_probe(probe: fn() -> Option<AllocatorStats>) {
    let _ = ALLOCATOR_PROBE.set(probe);
}

/// The allocator's figures now, if a probe is installed and answers.
pub(crate) fn allocator_stats() -> Option<AllocatorStats> {
    ALLOCATOR_PROBE.get().and_then(|probe| probe())
}

/// Every metric of one server.
///
/// The fields are handles onto the metrics in `registry` (a `prometheus-client` metric is a
/// shared pointer to its value): updates go through them, scrapes through the registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Gauge>,
    sessions: Gauge,
    sessions_opened: Counter,
    messages_acked: Counter,
    ack_latency: Histogram,
    fanout_events: Counter,
    fanout_deliveries: Counter,
    queue_drops: Family<QueueLabels, Counter>,
    connections_refused: Counter,
    connections_aborted: Counter,
    socketio_recoveries: Family<RecoveryLabels, Counter>,
    media_uploads: Family<UploadLabels, Counter>,
    media_bytes_uploaded: Counter,
    media_bytes_stored: Gauge,
    media_objects_removed: Counter,
    rate_limited: Family<LimitLabels, Counter>,
    calls_ended: Family<CallEndLabels, Counter>,
    http_requests: Counter,
    http_server_errors: Counter,
    last_seen_written: Counter,
    last_seen_failed: Counter,
    last_seen_dropped: Counter,
    /// Live calls by [`CallState`] (in `CallState::ALL` order). Transitions arrive as pairs of
    /// moves, so a count can dip below zero for an instant; a scrape reports it as zero.
    calls_live: [AtomicI64; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, every value zero.
    pub(crate) fn new() -> Self {
        let metrics = Self {
            registry: Registry::with_prefix(PREFIX),
            connections: Family::default(),
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            messages_acked: Counter::default(),
            ack_latency: Histogram::new(LATENCY_BUCKETS),
            fanout_events: Counter::default(),
            fanout_deliveries: Counter::default(),
            queue_drops: Family::default(),
            connections_refused: Counter::default(),
            connections_aborted: Counter::default(),
            socketio_recoveries: Family::default(),
            media_uploads: Family::default(),
            media_bytes_uploaded: Counter::default(),
            media_bytes_stored: Gauge::default(),
            media_objects_removed: Counter::default(),
            rate_limited: Family::default(),
            calls_ended: Family::default(),
            http_requests: Counter::default(),
            http_server_errors: Counter::default(),
            last_seen_written: Counter::default(),
            last_seen_failed: Counter::default(),
            last_seen_dropped: Counter::default(),
            calls_live: Default::default(),
        };
        // Labelled series with a known set of values are all there from the start, at zero, so
        // that a rate over them never misses the first increment. Connections and call ends
        // (whose label combinations come and go) start with one zero series each, which keeps
        // their families in every scrape.
        metrics.connections.get_or_create_owned(&ConnectionLabels {
            transport: "ws",
            dialect: "canonical",
        });
        for &queue in Queue::ALL {
            metrics
                .queue_drops
                .get_or_create_owned(&QueueLabels { queue });
        }
        for &outcome in RecoveryOutcome::ALL {
            metrics
                .socketio_recoveries
                .get_or_create_owned(&RecoveryLabels { outcome });
        }
        for &outcome in UploadOutcome::ALL {
            metrics
                .media_uploads
                .get_or_create_owned(&UploadLabels { outcome });
        }
        for &limit in Limit::ALL {
            metrics
                .rate_limited
                .get_or_create_owned(&LimitLabels { limit });
        }
        metrics.calls_ended.get_or_create_owned(&CallEndLabels {
            outcome: CallOutcome::Ended,
            reason: EndReason::Hangup,
        });
        metrics.registered()
    }

    /// Registers every metric in `registry`. Counters are registered without their `_total`
    /// suffix: the encoder adds it.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Live realtime connections (sessions) by transport and dialect",
            self.connections.clone(),
        );
        r.register(
            "sessions",
            "Live sessions (all transports)",
            self.sessions.clone(),
        );
        r.register(
            "sessions_opened",
            "Sessions opened since start",
            self.sessions_opened.clone(),
        );
        r.register(
            "messages_acked",
            "Message sends acknowledged after their commit",
            self.messages_acked.clone(),
        );
        r.register(
            "message_ack_latency_seconds",
            "Time from receiving a send to acknowledging its commit",
            self.ack_latency.clone(),
        );
        r.register(
            "fanout_events",
            "Events fanned out to users' devices",
            self.fanout_events.clone(),
        );
        r.register(
            "fanout_deliveries",
            "Deliveries of fanned-out events to sessions",
            self.fanout_deliveries.clone(),
        );
        r.register(
            "queue_drops",
            "Items a bounded queue refused: outbound (the slow consumer is disconnected) or \
             write (the send is refused)",
            self.queue_drops.clone(),
        );
        r.register(
            "connections_refused",
            "Realtime upgrades refused with 503 at MAX_REALTIME_CONNECTIONS",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_aborted",
            "Connections aborted (reset): still open SOCKET_CLOSE_GRACE_MS after their close \
             (a peer that stopped reading), or closed after their heartbeat timed out",
            self.connections_aborted.clone(),
        );
        r.register(
            "socketio_recoveries",
            "Socket.IO connection state recovery attempts, by outcome",
            self.socketio_recoveries.clone(),
        );
        r.register(
            "media_uploads",
            "Media uploads, by outcome (stored or why they were refused)",
            self.media_uploads.clone(),
        );
        r.register(
            "media_uploaded_bytes",
            "Bytes of media stored by uploads (after metadata was stripped)",
            self.media_bytes_uploaded.clone(),
        );
        r.register(
            "media_stored_bytes",
            "Bytes the media store holds (uploads and thumbnails)",
            self.media_bytes_stored.clone(),
        );
        r.register(
            "media_removed",
            "What the media clean-up removed: uploads no message uses (with their thumbnails), \
             objects without a row and unfinished staging files",
            self.media_objects_removed.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            self.rate_limited.clone(),
        );
        r.register(
            "calls_ended",
            "Calls ended, by outcome and end reason",
            self.calls_ended.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered",
            self.http_requests.clone(),
        );
        r.register(
            "http_server_errors",
            "HTTP requests answered with a 5xx status",
            self.http_server_errors.clone(),
        );
        r.register(
            "last_seen_written",
            "Users whose last_seen_at was written after their last connection closed",
            self.last_seen_written.clone(),
        );
        r.register(
            "last_seen_write_failures",
            "Last-seen writes (one UPDATE for a batch of users) that failed; their users are \
             written by a later flush",
            self.last_seen_failed.clone(),
        );
        r.register(
            "last_seen_dropped",
            "Users whose last-seen time was dropped because LAST_SEEN_BUFFER users were waiting",
            self.last_seen_dropped.clone(),
        );
        self
    }

    /// A session came up on `transport` speaking `dialect`.
    pub(crate) fn session_opened(&self, transport: &'static str, dialect: &'static str) {
        self.sessions_opened.inc();
        // The total first: a close (which lowers the pair before the total) then never takes
        // the total below zero.
        self.sessions.inc();
        self.connections
            .get_or_create(&ConnectionLabels { transport, dialect })
            .inc();
    }

    /// A session ended. A pair that is already at zero stays there (and so does the total).
    pub(crate) fn session_closed(&self, transport: &'static str, dialect: &'static str) {
        let closed = self
            .connections
            .get(&ConnectionLabels { transport, dialect })
            .is_some_and(|live| {
                live.inner()
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n > 0).then_some(n - 1)
                    })
                    .is_ok()
            });
        if closed {
            self.sessions.dec();
        }
    }

    /// Live sessions on `transport` speaking `dialect`.
    #[cfg(test)]
    pub(crate) fn connections(&self, transport: &'static str, dialect: &'static str) -> i64 {
        self.connections
            .get(&ConnectionLabels { transport, dialect })
            .map_or(0, |live| live.get())
    }

    /// Live sessions on every transport.
    pub(crate) fn connections_total(&self) -> i64 {
        self.sessions.get()
    }

    /// A message send was acknowledged after its commit, `latency` after it was received.
    pub(crate) fn message_acked(&self, latency: Duration) {
        self.messages_acked.inc();
        self.ack_latency.observe(latency.as_secs_f64());
    }

    /// One event fanned out to `deliveries` sessions.
    pub(crate) fn fanned_out(&self, deliveries: usize) {
        self.fanout_events.inc();
        self.fanout_deliveries
            .inc_by(u64::try_from(deliveries).unwrap_or(u64::MAX));
    }

    /// A bounded queue refused an item.
    pub(crate) fn queue_drop(&self, queue: Queue) {
        self.queue_drops.get_or_create(&QueueLabels { queue }).inc();
    }

    /// A realtime upgrade was refused at `MAX_REALTIME_CONNECTIONS`.
    /// Returns the count so far.
    pub(crate) fn connection_refused(&self) -> u64 {
        self.connections_refused.inc() + 1
    }

    /// A connection was aborted (reset): still open after its close grace, or closed after its
    /// peer stopped answering.
    pub(crate) fn connection_aborted(&self) {
        self.connections_aborted.inc();
    }

    /// A Socket.IO client asked to recover its session; `outcome` names a [`RecoveryOutcome`]
    /// (anything else counts as `refused`).
    pub(crate) fn socketio_recovery(&self, outcome: &str) {
        let outcome = RecoveryOutcome::from_name(outcome).unwrap_or(RecoveryOutcome::Refused);
        self.socketio_recoveries
            .get_or_create(&RecoveryLabels { outcome })
            .inc();
    }

    /// Recovery attempts with an outcome so far.
    pub fn socketio_recoveries(&self, outcome: &str) -> u64 {
        RecoveryOutcome::from_name(outcome)
            .and_then(|outcome| self.socketio_recoveries.get(&RecoveryLabels { outcome }))
            .map_or(0, |n| n.get())
    }

    /// An upload ended with `outcome`, which names an [`UploadOutcome`] (anything else counts as
    /// `failed`); `bytes` were stored when it was.
    pub(crate) fn media_upload(&self, outcome: &str, bytes: u64) {
        let outcome = UploadOutcome::from_name(outcome).unwrap_or(UploadOutcome::Failed);
        self.media_uploads
            .get_or_create(&UploadLabels { outcome })
            .inc();
        if outcome == UploadOutcome::Stored {
            self.media_bytes_uploaded.inc_by(bytes);
            self.media_bytes_stored
                .inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Uploads with an outcome so far.
    pub fn media_uploads(&self, outcome: &str) -> u64 {
        UploadOutcome::from_name(outcome)
            .and_then(|outcome| self.media_uploads.get(&UploadLabels { outcome }))
            .map_or(0, |n| n.get())
    }

    /// The bytes the media store holds (read from the database at start and after each
    /// clean-up, adjusted by uploads in between).
    pub(crate) fn set_media_bytes_stored(&self, bytes: i64) {
        self.media_bytes_stored.set(bytes);
    }

    /// The clean-up removed `n` uploads, orphaned objects or staging files.
    pub(crate) fn media_objects_removed(&self, n: u64) {
        self.media_objects_removed.inc_by(n);
    }

    /// A rate limit refused something.
    pub(crate) fn rate_limited(&self, limit: Limit) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Rate-limit refusals of one kind so far.
    #[cfg(test)]
    pub(crate) fn rate_limited_count(&self, limit: Limit) -> u64 {
        self.rate_limited
            .get(&LimitLabels { limit })
            .map_or(0, |n| n.get())
    }

    /// A live call moved from state `from` (`None`: it was just created) to `to` (`None`: it
    /// ended). States are `initiated`, `ringing` and `ongoing`; others are not counted.
    pub(crate) fn call_state(&self, from: Option<&str>, to: Option<&str>) {
        if let Some(live) = from.and_then(|s| self.live_calls(s)) {
            live.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(live) = to.and_then(|s| self.live_calls(s)) {
            live.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The live-call count of the state named `state`.
    fn live_calls(&self, state: &str) -> Option<&AtomicI64> {
        let state = CallState::from_name(state)?;
        let i = CallState::ALL.iter().position(|s| *s == state)?;
        self.calls_live.get(i)
    }

    /// A call ended with `outcome` (`ended`, `missed`, ...; unknown ones count as `failed`) for
    /// `reason` (client-chosen reasons count as `other`).
    pub(crate) fn call_ended(&self, outcome: &str, reason: Option<&str>) {
        let outcome = CallOutcome::from_name(outcome).unwrap_or(CallOutcome::Failed);
        let reason = reason
            .and_then(EndReason::from_name)
            .unwrap_or(EndReason::Other);
        self.calls_ended
            .get_or_create(&CallEndLabels { outcome, reason })
            .inc();
    }

    /// Live calls in a state.
    #[cfg(test)]
    pub(crate) fn calls_in_state(&self, state: &str) -> i64 {
        self.live_calls(state)
            .map_or(0, |live| live.load(Ordering::Relaxed))
    }

    /// One HTTP request answered with `status`.
    pub(crate) fn http_request(&self, status: u16) {
        self.http_requests.inc();
        if status >= 500 {
            self.http_server_errors.inc();
        }
        if status == 429 {
            self.rate_limited(Limit::Http);
        }
    }

    /// Last-seen times of `users` users were written.
    pub(crate) fn last_seen_written(&self, users: usize) {
        self.last_seen_written
            .inc_by(u64::try_from(users).unwrap_or(u64::MAX));
    }

    /// A last-seen write failed (its users wait for the next flush).
    pub(crate) fn last_seen_failed(&self) {
        self.last_seen_failed.inc();
    }

    /// Last-seen times of `users` users were dropped: the buffer was full.
    pub(crate) fn last_seen_dropped(&self, users: usize) {
        self.last_seen_dropped
            .inc_by(u64::try_from(users).unwrap_or(u64::MAX));
    }

    /// Last-seen writes that failed so far.
    pub fn last_seen_failures(&self) -> u64 {
        self.last_seen_failed.get()
    }

    /// The exposition text: the registered metrics, then those read at scrape time from `snap`
    /// and from the live-call counts.
    ///
    /// # Errors
    ///
    /// A formatting error of the encoder; writing into a `String` itself cannot fail.
    pub(crate) fn render(&self, snap: &Snapshot) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_text::encode(&mut out, &self.registry)?;
        prometheus_text::encode(&mut out, &self.scrape_registry(snap))?;
        Ok(out)
    }

    /// A registry of the values read at scrape time. It is built for one scrape and dropped
    /// after it: the values belong to other parts of the server, and the cluster series exist
    /// only in cluster mode.
    fn scrape_registry(&self, snap: &Snapshot) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "uptime_seconds",
            "Seconds since the process started",
            ConstGauge::new(snap.uptime_secs),
        );
        r.register(
            "online_users",
            "Users with at least one live session",
            ConstGauge::new(count(snap.online_users)),
        );
        r.register(
            "conversation_actors",
            "Conversation actors alive",
            ConstGauge::new(count(snap.conversation_actors)),
        );
        r.register(
            "call_timers",
            "Pending ring and reconnect-grace timers of live calls",
            ConstGauge::new(count(snap.call_timers)),
        );
        let calls = Family::<CallStateLabels, Gauge>::default();
        for (&state, live) in CallState::ALL.iter().zip(&self.calls_live) {
            calls
                .get_or_create(&CallStateLabels { state })
                .set(live.load(Ordering::Relaxed).max(0));
        }
        r.register("calls", "Live calls by state", calls);
        r.register(
            "db_pool_connections_in_use",
            "Pool connections checked out",
            ConstGauge::new(i64::from(snap.db_in_use)),
        );
        r.register(
            "db_pool_connections_idle",
            "Pool connections open and idle",
            ConstGauge::new(i64::from(snap.db_idle)),
        );
        r.register(
            "db_pool_connections_max",
            "Pool size (DB_POOL_SIZE)",
            ConstGauge::new(i64::from(snap.db_max)),
        );
        r.register(
            "db_pool_waiting",
            "Database operations waiting for a slot",
            ConstGauge::new(snap.db_waiting),
        );
        r.register(
            "db_errors",
            "Database operations that failed (unavailable or internal errors)",
            ConstCounter::new(snap.db_errors),
        );
        if let Some(c) = &snap.cluster {
            register_cluster(&mut r, c);
        }
        if let Some(a) = &snap.allocator {
            register_allocator(&mut r, a);
        }
        r
    }
}

/// The `switchboard_allocator_*` series (when the binary installed a probe).
fn register_allocator(r: &mut Registry, a: &AllocatorStats) {
    let bytes = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    r.register(
        "allocator_allocated_bytes",
        "Bytes in live heap allocations",
        bytes(a.allocated),
    );
    r.register(
        "allocator_active_bytes",
        "Bytes in the allocator's pages that hold live allocations",
        bytes(a.active),
    );
    r.register(
        "allocator_resident_bytes",
        "Bytes of physical memory the allocator holds (live, metadata and freed pages not yet \
         returned)",
        bytes(a.resident),
    );
    r.register(
        "allocator_retained_bytes",
        "Bytes of address space the allocator keeps mapped after returning them to the system",
        bytes(a.retained),
    );
}

/// The `switchboard_cluster_*` series (cluster mode only).
fn register_cluster(r: &mut Registry, c: &crate::realtime::cluster::ClusterCounts) {
    r.register(
        "cluster_nodes",
        "Live nodes of the cluster seen at the last heartbeat (this one included)",
        ConstGauge::new(count(c.nodes)),
    );
    r.register(
        "cluster_redis_up",
        "1 while Redis answers, 0 while it does not",
        ConstGauge::new(i64::from(c.redis_up)),
    );
    r.register(
        "cluster_published",
        "Events published to Redis for the other nodes",
        ConstCounter::new(c.published),
    );
    r.register(
        "cluster_received",
        "Events received from the other nodes",
        ConstCounter::new(c.received),
    );
    r.register(
        "cluster_frames_published",
        "Redis messages the published events went out in (one per frame and node it is for; \
         CLUSTER_PUBLISH_INTERVAL_MS makes them fewer and larger under load)",
        ConstCounter::new(c.frames),
    );
    r.register(
        "cluster_dropped",
        "Events whose cross-node delivery was dropped (CLUSTER_QUEUE full, Redis away, or this \
         node fell behind the bus, where each lost bus message counts once though it may have \
         held several events); their clients catch up with sync",
        ConstCounter::new(c.dropped),
    );
    r.register(
        "cluster_gap_fills",
        "Message seqs read from PostgreSQL after waiting CLUSTER_GAP_WAIT_MS for another node's \
         delivery",
        ConstCounter::new(c.gap_fills),
    );
    r.register(
        "cluster_nodes_reaped",
        "Dead nodes whose devices this node took offline",
        ConstCounter::new(c.nodes_reaped),
    );
    r.register(
        "cluster_sends_forwarded",
        "Sends forwarded to the node that writes their conversation (CLUSTER_OWNED_WRITES)",
        ConstCounter::new(c.forwarded),
    );
    r.register(
        "cluster_forward_fallbacks",
        "Forwarded sends that got no answer within CLUSTER_FORWARD_TIMEOUT_MS and were written \
         by this node",
        ConstCounter::new(c.forward_fallbacks),
    );
}

/// A count as a gauge value.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn render(m: &Metrics, snap: &Snapshot) -> String {
        m.render(snap).unwrap()
    }

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
        let text = render(&m, &Snapshot::default());
        let name = "switchboard_message_ack_latency_seconds";
        assert_eq!(
            value(&text, &format!("{name}_bucket{{le=\"0.0005\"}}")),
            1.0
        );
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"0.005\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"1\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"10\"}}")), 2.0);
        assert_eq!(value(&text, &format!("{name}_bucket{{le=\"+Inf\"}}")), 3.0);
        assert_eq!(value(&text, &format!("{name}_count")), 3.0);
        assert!((value(&text, &format!("{name}_sum")) - 60.0033).abs() < 1e-6);
        assert_eq!(value(&text, "switchboard_messages_acked_total"), 3.0);
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .count();
        assert_eq!(buckets, LATENCY_BUCKETS.len() + 1);
    }

    #[test]
    fn counters_are_typed_under_their_total_name() {
        let text = render(&Metrics::new(), &Snapshot::default());
        assert!(text.contains("# TYPE switchboard_messages_acked_total counter\n"));
        assert!(text.contains("# HELP switchboard_messages_acked_total Message sends"));
        assert!(text.contains("# TYPE switchboard_db_errors_total counter\n"));
        assert!(text.contains("# TYPE switchboard_calls gauge\n"));
        assert!(!text.contains("_total_total"));
        assert!(!text.contains("# EOF"));
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
        m.call_ended("vanished", None);
        let text = render(&m, &Snapshot::default());
        assert_eq!(value(&text, "switchboard_calls{state=\"ringing\"}"), 0.0);
        assert_eq!(value(&text, "switchboard_calls{state=\"initiated\"}"), 1.0);
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
        assert_eq!(
            value(
                &text,
                "switchboard_calls_ended_total{outcome=\"failed\",reason=\"other\"}"
            ),
            1.0
        );
    }

    #[test]
    fn a_live_call_count_below_zero_is_reported_as_zero() {
        let m = Metrics::new();
        m.call_state(Some("ongoing"), None);
        assert_eq!(m.calls_in_state("ongoing"), -1);
        let text = render(&m, &Snapshot::default());
        assert_eq!(value(&text, "switchboard_calls{state=\"ongoing\"}"), 0.0);
    }

    #[test]
    fn connections_are_labelled_by_transport_and_dialect() {
        let m = Metrics::new();
        m.session_opened("ws", "canonical");
        m.session_opened("socket.io", "canonical");
        m.session_opened("ws", "canonical");
        m.session_closed("ws", "canonical");
        m.session_closed("socket.io", "lonestar");
        let text = render(&m, &Snapshot::default());
        assert_eq!(
            value(
                &text,
                "switchboard_connections{transport=\"ws\",dialect=\"canonical\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "switchboard_connections{transport=\"socket.io\",dialect=\"canonical\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "switchboard_sessions"), 2.0);
        assert_eq!(value(&text, "switchboard_sessions_opened_total"), 3.0);
        assert_eq!(m.connections("ws", "canonical"), 1);
        assert_eq!(m.connections_total(), 2);
        m.session_closed("ws", "canonical");
        m.session_closed("ws", "canonical");
        assert_eq!(m.connections("ws", "canonical"), 0);
        assert_eq!(m.connections_total(), 1);
    }

    #[test]
    fn every_known_label_value_is_exposed_from_the_start() {
        let text = render(&Metrics::new(), &Snapshot::default());
        for limit in Limit::ALL {
            let series = format!(
                "switchboard_rate_limited_total{{limit=\"{}\"}}",
                limit.as_str()
            );
            assert_eq!(value(&text, &series), 0.0);
        }
        for queue in Queue::ALL {
            let series = format!(
                "switchboard_queue_drops_total{{queue=\"{}\"}}",
                queue.as_str()
            );
            assert_eq!(value(&text, &series), 0.0);
        }
        for outcome in RecoveryOutcome::ALL {
            let series = format!(
                "switchboard_socketio_recoveries_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(value(&text, &series), 0.0);
        }
        for outcome in UploadOutcome::ALL {
            let series = format!(
                "switchboard_media_uploads_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(value(&text, &series), 0.0);
        }
        for state in CallState::ALL {
            let series = format!("switchboard_calls{{state=\"{}\"}}", state.as_str());
            assert_eq!(value(&text, &series), 0.0);
        }
        assert_eq!(
            value(
                &text,
                "switchboard_connections{transport=\"ws\",dialect=\"canonical\"}"
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                "switchboard_calls_ended_total{outcome=\"ended\",reason=\"hangup\"}"
            ),
            0.0
        );
        assert!(!text.contains("switchboard_cluster_"));
    }

    #[test]
    fn unknown_outcomes_fall_into_their_catch_all() {
        let m = Metrics::new();
        m.socketio_recovery("whatever");
        m.media_upload("whatever", 10);
        m.media_upload("stored", 10);
        assert_eq!(m.socketio_recoveries("refused"), 1);
        assert_eq!(m.socketio_recoveries("whatever"), 0);
        assert_eq!(m.media_uploads("failed"), 1);
        assert_eq!(m.media_uploads("stored"), 1);
        m.http_request(429);
        m.rate_limited(Limit::Frames);
        assert_eq!(m.rate_limited_count(Limit::Http), 1);
        assert_eq!(m.rate_limited_count(Limit::Frames), 1);
        assert_eq!(m.rate_limited_count(Limit::Calls), 0);
        let text = render(&m, &Snapshot::default());
        assert_eq!(value(&text, "switchboard_media_uploaded_bytes_total"), 10.0);
        assert_eq!(value(&text, "switchboard_media_stored_bytes"), 10.0);
    }

    #[test]
    fn last_seen_counters_are_exported() {
        let m = Metrics::new();
        m.last_seen_written(500);
        m.last_seen_failed();
        m.last_seen_dropped(3);
        let text = render(&m, &Snapshot::default());
        assert_eq!(value(&text, "switchboard_last_seen_written_total"), 500.0);
        assert_eq!(
            value(&text, "switchboard_last_seen_write_failures_total"),
            1.0
        );
        assert_eq!(value(&text, "switchboard_last_seen_dropped_total"), 3.0);
        assert_eq!(m.last_seen_failures(), 1);
    }

    #[test]
    fn scrape_time_values_come_from_the_snapshot() {
        let snap = Snapshot {
            online_users: 2,
            db_max: 10,
            db_errors: 4,
            uptime_secs: 1.5,
            cluster: Some(crate::realtime::cluster::ClusterCounts {
                nodes: 3,
                redis_up: true,
                nodes_reaped: 1,
                ..Default::default()
            }),
            allocator: Some(AllocatorStats {
                allocated: 1 << 20,
                active: 2 << 20,
                resident: 3 << 20,
                retained: 4 << 20,
            }),
            ..Default::default()
        };
        let text = render(&Metrics::new(), &snap);
        assert_eq!(value(&text, "switchboard_online_users"), 2.0);
        assert_eq!(value(&text, "switchboard_db_pool_connections_max"), 10.0);
        assert_eq!(value(&text, "switchboard_db_errors_total"), 4.0);
        assert_eq!(value(&text, "switchboard_uptime_seconds"), 1.5);
        assert_eq!(value(&text, "switchboard_cluster_nodes"), 3.0);
        assert_eq!(value(&text, "switchboard_cluster_redis_up"), 1.0);
        assert!(text.contains("switchboard_cluster_nodes_reaped_total 1\n"));
        assert_eq!(
            value(&text, "switchboard_allocator_allocated_bytes"),
            1_048_576.0
        );
        assert_eq!(
            value(&text, "switchboard_allocator_resident_bytes"),
            3_145_728.0
        );
        assert_eq!(
            value(&text, "switchboard_allocator_retained_bytes"),
            4_194_304.0
        );
    }
}
