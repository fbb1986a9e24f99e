//! `switchboard-bench`: a load generator that drives either Switchboard's `/ws` endpoint or a
//! Socket.IO server (the reference peers) with the same scenario, so both can be compared. It is
//! a binary of its own, built beside the server and not linked into it; it uses the library
//! only for the Socket.IO packet codec.
//!
//! `messages` scenario: N active clients spread over M conversations (client i in conversation
//! i % M) send messages for a fixed time, open loop (`--rate` per client, latency from the
//! scheduled send time) or closed loop (`--rate 0`); K idle clients only hold a socket. The
//! report counts durable acks, measures delivery latency (send → `message:new` at another member,
//! from a send time carried in `clientMessageId`), counts errors by code, and samples the
//! server's RSS (after connecting, after `--settle`, at the end, and every `--report-every`).
//!
//! `calls` scenario: `--callers` caller/callee pairs make `--calls` calls in all, one at a time
//! per pair, and the report gives the call set-up latency (`call:initiate` → `call:incoming` at
//! the callee).
//!
//! Every client lives in this process: one actix system per thread, one task per socket (per
//! pair for calls), a shared monotonic epoch for timestamps, and per-thread `hdrhistogram`s
//! merged at the end.

pub mod calls;
pub mod client;
pub mod protocol;
pub mod report;
pub mod setup;
pub mod uploads;

use clap::Parser;
use client::{Counters, IntervalStats, Phase, Shared, ThreadStats, Work};
pub use protocol::Target;
use report::{HeadTail, Interval, Latency, Report, Rss};
use setup::Shape;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// What the bench does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Active clients send messages to their conversations (`--clients`, `--conversations`,
    /// `--rate`, ...).
    Messages,
    /// Caller/callee pairs make calls (`--callers`, `--calls`).
    Calls,
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Calls => "calls",
        }
    }
}

/// Load generator: connect clients to Switchboard's /ws or to a Socket.IO server, send
/// messages (or make calls) for a fixed time, and report durable acks/s, delivery latency,
/// errors and server memory per connection.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "switchboard-bench", version, after_long_help = AFTER_HELP)]
pub struct BenchArgs {
    /// What to run: `messages` (send messages for --duration seconds) or `calls` (make --calls
    /// calls from --callers callers, each to its own callee).
    #[arg(long, value_enum, default_value = "messages")]
    pub scenario: Scenario,
    /// Protocol of the server under test.
    #[arg(long, value_enum, default_value = "ws")]
    pub target: Target,
    /// Server address: `ws://HOST:PORT/ws` for `ws`, `http://HOST:PORT` for `socketio`.
    /// Several, comma-separated: the nodes of a cluster; each conversation's members are
    /// spread over them in turn.
    #[arg(long)]
    pub url: String,
    /// Active clients (they send). Messages scenario.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Conversations; client i is a member of conversation i % M (M = N/2 gives 1:1
    /// conversations, N/10 groups of 10). Messages scenario.
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// Extra clients that connect and stay idle (members of no conversation). `--clients 0
    /// --idle K` measures memory per idle authenticated connection.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Length of the send window in seconds (calls scenario: the longest time the calls may
    /// take).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Messages per second per active client: open loop, every latency counted from the
    /// scheduled send time (no coordinated omission). 0: closed loop, each client sends as fast
    /// as acks allow with --inflight outstanding.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Most unanswered sends per client (default 1 with `--rate 0`, else 100). With a rate, a
    /// send due while this many are outstanding is held back (counted as deferred) and goes out
    /// when a reply frees a slot, its latency still counted from when it was due; one still held
    /// back at the end of the drain is counted as skipped.
    #[arg(long)]
    pub inflight: Option<u32>,
    /// Message text length in bytes.
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// Most connection set-ups in progress at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one connection set-up (connect, handshake, join).
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Client threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// PostgreSQL URL of the Switchboard server under test (`ws` target, or `--own-socketio`:
    /// users and conversations are created there).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With `--target socketio`: the server is Switchboard (its `/socket.io/` endpoint, with
    /// users and conversations created through `--database-url`), not a peer.
    #[arg(long)]
    pub own_socketio: bool,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Process id of the server, to sample its RSS from /proc/PID/status.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Longest wait for outstanding replies and pushes after the window, seconds (open loop:
    /// sends held back by --inflight still go out in it).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds to wait after every socket is up before sampling the server's RSS again
    /// (`settled`; memory per connection is reported both ways) and starting the run.
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
    /// Seconds to wait after every client socket closed before sampling the server's RSS once
    /// more (`after_close`: is the memory of closed connections given back?); 0: not sampled.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub after_close: f64,
    /// Every this many seconds of the send window, print one line (acks, ack p50/p99, server
    /// RSS, unanswered sends) on stderr and keep it in the report's `intervals`; 0: off.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub report_every: f64,
    /// With --report-every: compare the ack p99 of the first and the last this many seconds of
    /// intervals, and the RSS growth from the first interval to the last (`head_tail`).
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub compare_window: f64,
    /// `ws` target: insert this many messages into the run's conversations before connecting
    /// (spread evenly, so rounded up to a multiple of the conversations; seqs consistent with
    /// the conversations), for a database with history.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed_messages: u64,
    /// Calls scenario: caller/callee pairs calling at once (1: sequential calls).
    #[arg(long, default_value_t = 1)]
    pub callers: usize,
    /// Calls scenario: calls to make in all, shared by the callers.
    #[arg(long, default_value_t = 200)]
    pub calls: u64,
    /// Calls scenario: longest wait, seconds, for a call's ack and `call:incoming`, and again for
    /// its end.
    #[arg(long, default_value_t = 10.0)]
    pub call_timeout: f64,
    /// Messages scenario, Switchboard only: this many threads upload files to `POST /api/media`
    /// back to back during the send window (upload throughput, and its effect on delivery).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub uploaders: usize,
    /// What `--uploaders` upload: `audio` (WAV, streamed to the store) or `image` (JPEG,
    /// stripped and thumbnailed).
    #[arg(long, value_enum, default_value_t = uploads::UploadKind::Audio)]
    pub upload_kind: uploads::UploadKind,
    /// Size of each upload in bytes (images: about).
    #[arg(long, default_value_t = 2 << 20, value_name = "BYTES")]
    pub upload_bytes: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<std::path::PathBuf>,
}

const AFTER_HELP: &str = "\
Examples:
  open loop, groups of 10:  --clients 1000 --conversations 100 --rate 1
  closed loop, 1:1:         --clients 1000 --conversations 500 --rate 0
  idle memory:              --clients 0 --idle 10000 --settle 5 --duration 1
  call set-up:              --scenario calls --callers 50 --calls 1000
  soak:                     --rate 2 --duration 1800 --report-every 60 --seed-messages 5000000

The ws target needs --database-url (users and conversations are created there) and a server
whose rate limits allow the load (MESSAGE_RATE_PER_MIN, FRAME_RATE_PER_SEC, CALL_RATE_PER_HOUR,
CALL_BURST). scripts/bench.sh runs every comparison case against the reference peers.";

impl BenchArgs {
    fn check(&self) -> Result<(), String> {
        if !(self.duration.is_finite() && self.duration > 0.0) {
            return Err("--duration must be positive".into());
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err("--rate must be 0 or positive".into());
        }
        if !(self.drain.is_finite() && self.drain >= 0.0) {
            return Err("--drain must be 0 or positive".into());
        }
        if !(self.settle.is_finite() && self.settle >= 0.0) {
            return Err("--settle must be 0 or positive".into());
        }
        if self.uploaders > 0 && !(self.target == Target::Ws || self.own_socketio) {
            return Err("--uploaders needs Switchboard (the peers have no uploads)".into());
        }
        if !(self.report_every.is_finite() && self.report_every >= 0.0) {
            return Err("--report-every must be 0 or positive".into());
        }
        if !(self.compare_window.is_finite() && self.compare_window > 0.0) {
            return Err("--compare-window must be positive".into());
        }
        match self.scenario {
            Scenario::Messages => {
                if self.clients > 0 && self.conversations == 0 {
                    return Err("--conversations must be at least 1".into());
                }
                if self.clients + self.idle == 0 {
                    return Err("nothing to do: --clients and --idle are both 0".into());
                }
            }
            Scenario::Calls => {
                if self.callers == 0 || self.calls == 0 {
                    return Err("--scenario calls needs --callers and --calls of at least 1".into());
                }
                if !(self.call_timeout.is_finite() && self.call_timeout > 0.0) {
                    return Err("--call-timeout must be positive".into());
                }
                if self.seed_messages > 0 {
                    return Err("--seed-messages applies to the messages scenario".into());
                }
            }
        }
        if self.seed_messages > 0 && self.target != Target::Ws {
            return Err("--seed-messages needs --target ws (the server's database)".into());
        }
        if self.inflight == Some(0) {
            return Err("--inflight must be at least 1".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if self.jwt_secret.is_empty() {
            return Err("--jwt-secret (or JWT_SECRET) is required".into());
        }
        if self.target == Target::Ws && self.database_url.as_deref().unwrap_or("").is_empty() {
            return Err(
                "--target ws needs --database-url (or DATABASE_URL): the server's database, \
                 where the bench creates its users and conversations"
                    .into(),
            );
        }
        Ok(())
    }

    fn inflight(&self) -> u32 {
        self.inflight
            .unwrap_or(if self.rate > 0.0 { 100 } else { 1 })
    }

    /// Who connects: for calls, pair i is client i (caller) and client i + callers (callee),
    /// the two members of conversation i.
    fn shape(&self) -> Shape {
        let (clients, conversations) = match self.scenario {
            Scenario::Messages => (self.clients, self.conversations.max(1)),
            Scenario::Calls => (self.callers * 2, self.callers),
        };
        Shape {
            clients,
            idle: self.idle,
            conversations,
            token_ttl_secs: (self.duration as u64)
                .saturating_add(self.connect_timeout)
                .saturating_add(self.settle as u64)
                .saturating_add(3600),
        }
    }
}

fn wait_until<F: FnMut() -> bool>(deadline: Instant, mut done: F) -> bool {
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

fn ns_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Parses the options and runs the bench; a failure exits with status 2 and its reason.
fn main() -> ExitCode {
    let args = BenchArgs::parse();
    switchboard::telemetry::init(switchboard::config::LogFormat::Text, "info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

#[allow(clippy::print_stderr)]
fn fail(message: &str) -> ExitCode {
    eprintln!("switchboard-bench: {message}");
    ExitCode::from(2)
}

/// Runs the bench, writes its JSON report where asked and prints it.
pub fn run(args: BenchArgs) -> Result<(), String> {
    args.check()?;
    let report = measure(&args)?;
    if let Some(path) = &args.json_file {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    print_report(&report, args.json)
}

/// Runs the bench and returns its report.
pub fn measure(args: &BenchArgs) -> Result<Report, String> {
    let epoch = Instant::now();
    let shape = args.shape();
    let mut seeded_messages = 0;
    let specs = if args.target == Target::Ws || args.own_socketio {
        {
            let url = args.database_url.as_deref().unwrap_or_default();
            let (seeded, specs) = setup::switchboard(&shape, url, &args.jwt_secret)?;
            tracing::info!(
                prefix = %seeded.prefix,
                users = seeded.users.len(),
                conversations = seeded.conversations.len(),
                "created bench users and conversations"
            );
            if args.seed_messages > 0 {
                seeded_messages = setup::seed_messages(url, &seeded, &shape, args.seed_messages)?;
            }
            specs
        }
    } else {
        setup::peer(&shape, &args.jwt_secret)?
    };
    let total = specs.len();
    if let Some(limit) = report::open_files_limit() {
        if limit < total as u64 + 64 {
            tracing::warn!(
                limit,
                sockets = total,
                "the open-files limit is below the number of sockets; raise it (ulimit -n)"
            );
        }
    }
    let units = match args.scenario {
        Scenario::Messages => total,
        Scenario::Calls => args.callers + args.idle,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, units.max(1));
    let inflight = args.inflight();

    let rss_of = || args.server_pid.and_then(report::rss_kib);
    let mut rss = Rss {
        before_kib: rss_of(),
        ..Rss::default()
    };

    let intervals = if args.report_every > 0.0 && args.scenario == Scenario::Messages {
        (0..threads)
            .map(|_| IntervalStats::new().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let shared = Arc::new(Shared {
        epoch,
        target: args.target,
        url: args.url.clone(),
        conversations: shape.conversations,
        rate: args.rate,
        inflight,
        message_bytes: args.message_bytes,
        active: shape.clients,
        connect_limit: Semaphore::new(args.connect_concurrency),
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        counters: Counters::default(),
        phase: phase_rx,
        intervals,
        calls: args.calls,
        call_timeout: Duration::from_secs_f64(args.call_timeout),
    });

    let upload_tokens: Vec<String> = specs
        .iter()
        .cycle()
        .take(if specs.is_empty() { 0 } else { args.uploaders })
        .map(|s| s.token.clone())
        .collect();
    let work = distribute(args, &shape, specs, threads);
    let mut handles = Vec::with_capacity(threads);
    for (i, work) in work.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || client::run_thread(shared, i, work))
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        handles.push(handle);
    }

    let c = &shared.counters;
    tracing::info!(
        scenario = args.scenario.name(),
        target = args.target.name(),
        sockets = total,
        threads,
        "connecting"
    );
    let connect_started = Instant::now();
    let mut last_log = Instant::now();
    wait_until(Instant::now() + Duration::from_secs(24 * 3600), || {
        let up = c.connected.load(Ordering::Relaxed);
        let failed = c.connect_failed.load(Ordering::Relaxed);
        if last_log.elapsed() >= Duration::from_secs(2) {
            tracing::info!(up, failed, of = total, "connecting");
            last_log = Instant::now();
        }
        (up + failed) as usize >= total
    });
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connected = c.connected.load(Ordering::Relaxed);
    rss.after_connect_kib = rss_of();
    tracing::info!(
        up = connected,
        failed = c.connect_failed.load(Ordering::Relaxed),
        secs = connect_secs,
        "connected"
    );
    if args.settle > 0.0 {
        tracing::info!(secs = args.settle, "settling");
        std::thread::sleep(Duration::from_secs_f64(args.settle));
        rss.settled_kib = rss_of();
    }

    // Run.
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(args.duration);
    phase_tx.send_replace(Phase::Run {
        start_ns: ns_since(epoch, start),
        end_ns: ns_since(epoch, end),
    });
    let mut run = RunLog::new(args, start);
    let uploaders = start_uploads(args, upload_tokens, start, end)?;
    match args.scenario {
        Scenario::Messages => {
            tracing::info!(secs = args.duration, "sending");
            if args.report_every > 0.0 {
                report::eprint_line(Interval::HEADER);
            }
            wait_until(end, || run.tick(&shared, &rss_of).is_none());
            if let Some(e) = run.error.take() {
                return Err(e);
            }
        }
        Scenario::Calls => {
            let pairs = args.callers as u64;
            tracing::info!(calls = args.calls, callers = args.callers, "calling");
            let mut last_log = Instant::now();
            wait_until(end, || {
                let done = c.calls_done.load(Ordering::Relaxed);
                let failed = c.calls_failed.load(Ordering::Relaxed);
                if last_log.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(done, failed, of = args.calls, "progress");
                    last_log = Instant::now();
                }
                done + failed >= args.calls || c.pairs_finished.load(Ordering::Relaxed) >= pairs
            });
        }
    }
    let run_secs = start.elapsed().as_secs_f64();
    rss.end_kib = rss_of();
    let uploads = match uploaders {
        Some(handles) => {
            let mut parts = Vec::with_capacity(handles.len());
            for handle in handles {
                parts.push(
                    handle
                        .join()
                        .map_err(|_| "an upload thread panicked".to_owned())??,
                );
            }
            Some(uploads::summarize(
                parts,
                args.upload_kind,
                args.upload_bytes,
                args.duration,
            )?)
        }
        None => None,
    };
    // Calls: from the start to the end of the last call (not to when the coordinator noticed).
    let calls_secs = match c.calls_last_end_ns.load(Ordering::Relaxed) {
        0 => run_secs,
        last => last.saturating_sub(ns_since(epoch, start)) as f64 / 1e9,
    };

    // Drain: wait for replies to what is outstanding and for pushes to stop arriving.
    phase_tx.send_replace(Phase::Drain);
    let mut last = (u64::MAX, Instant::now());
    wait_until(Instant::now() + Duration::from_secs_f64(args.drain), || {
        let deliveries = c.deliveries.load(Ordering::Relaxed);
        if deliveries != last.0 {
            last = (deliveries, Instant::now());
        }
        c.outstanding.load(Ordering::Relaxed) + c.held.load(Ordering::Relaxed) <= 0
            && last.1.elapsed() >= Duration::from_millis(300)
    });
    let unanswered = c.outstanding.load(Ordering::Relaxed);
    phase_tx.send_replace(Phase::Stop);

    let mut stats = ThreadStats::new()?;
    for handle in handles {
        let part = handle
            .join()
            .map_err(|_| "a client thread panicked".to_owned())??;
        stats.merge(&part)?;
    }
    if args.after_close > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(args.after_close));
        rss.after_close_kib = rss_of();
    }

    let acks = c.acks.load(Ordering::Relaxed);
    let deliveries = c.deliveries.load(Ordering::Relaxed);
    let per_connection = |at: Option<u64>| match (rss.before_kib, at) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) / connected as f64)
        }
        _ => None,
    };
    let rss_per_connection_kib = per_connection(rss.after_connect_kib);
    let rss_per_connection_settled_kib = per_connection(rss.settled_kib);
    let members = if shape.clients == 0 {
        [0, 0]
    } else {
        [shape.members(shape.conversations - 1), shape.members(0)]
    };
    let calls = (args.scenario == Scenario::Calls).then(|| {
        let completed = c.calls_done.load(Ordering::Relaxed);
        report::Calls {
            callers: args.callers,
            requested: args.calls,
            completed,
            failed: c.calls_failed.load(Ordering::Relaxed),
            secs: calls_secs,
            calls_per_sec: completed as f64 / calls_secs.max(1e-9),
            setup_ms: Latency::from_micros(&stats.call_setup),
            ack_ms: Latency::from_micros(&stats.call_ack),
            end_ms: Latency::from_micros(&stats.call_end),
        }
    });
    let head_tail = run.head_tail(args.compare_window)?;
    Ok(Report {
        scenario: args.scenario.name().to_owned(),
        target: args.target.name().to_owned(),
        url: args.url.clone(),
        clients: shape.clients,
        idle: args.idle,
        conversations: shape.conversations,
        members_per_conversation: members,
        duration_secs: args.duration,
        rate: args.rate,
        inflight,
        message_bytes: args.message_bytes,
        threads,
        connected,
        connect_failures: c.connect_failed.load(Ordering::Relaxed),
        connect_failure_reasons: stats.connect_failures,
        connect_secs,
        sent: c.sent.load(Ordering::Relaxed),
        acks,
        acks_late: c.acks_late.load(Ordering::Relaxed),
        acks_per_sec: acks as f64 / args.duration,
        deliveries,
        expected_deliveries: c.expected_deliveries.load(Ordering::Relaxed),
        deliveries_per_sec: deliveries as f64 / args.duration,
        latency_ms: Latency::from_micros(&stats.delivery),
        ack_latency_ms: Latency::from_micros(&stats.ack),
        error_total: stats.errors.values().sum(),
        errors: stats.errors,
        skipped_sends: c.skipped.load(Ordering::Relaxed),
        deferred_sends: c.deferred.load(Ordering::Relaxed),
        unanswered,
        rss,
        rss_per_connection_kib,
        settle_secs: args.settle,
        rss_per_connection_settled_kib,
        seeded_messages,
        intervals: run.intervals,
        head_tail,
        calls,
        uploads,
    })
}

type UploadThreads = Vec<std::thread::JoinHandle<Result<uploads::Part, String>>>;

/// Starts `--uploaders` threads for the send window, one token each.
fn start_uploads(
    args: &BenchArgs,
    tokens: Vec<String>,
    start: Instant,
    end: Instant,
) -> Result<Option<UploadThreads>, String> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let addr = args
        .url
        .split(',')
        .next()
        .unwrap_or_default()
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("cannot read HOST:PORT from --url {}", args.url))?
        .to_owned();
    let body = Arc::new(uploads::file(args.upload_kind, args.upload_bytes)?);
    tracing::info!(
        uploaders = tokens.len(),
        bytes = body.len(),
        %addr,
        "uploading during the run"
    );
    let mut handles = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.into_iter().enumerate() {
        let (addr, body) = (addr.clone(), Arc::clone(&body));
        handles.push(
            std::thread::Builder::new()
                .name(format!("upload-{i}"))
                .spawn(move || uploads::run(&addr, &token, &body, start, end))
                .map_err(|e| format!("cannot start an upload thread: {e}"))?,
        );
    }
    Ok(Some(handles))
}

/// Splits the clients over the threads: single clients interleaved so every conversation has
/// members on every thread; calls pairs (caller i with callee i + callers) round-robin.
fn distribute(
    args: &BenchArgs,
    shape: &Shape,
    specs: Vec<setup::ClientSpec>,
    threads: usize,
) -> Vec<Work> {
    let mut work: Vec<Work> = (0..threads).map(|_| Work::default()).collect();
    match args.scenario {
        Scenario::Messages => {
            for spec in specs {
                if let Some(w) = work.get_mut(spec.index % threads) {
                    w.clients.push(spec);
                }
            }
        }
        Scenario::Calls => {
            let callers = args.callers;
            let mut specs = specs.into_iter();
            let caller_specs: Vec<_> = specs.by_ref().take(callers).collect();
            let callee_specs: Vec<_> = specs.by_ref().take(shape.clients - callers).collect();
            for (i, (caller, callee)) in caller_specs.into_iter().zip(callee_specs).enumerate() {
                if let Some(w) = work.get_mut(i % threads) {
                    w.pairs.push(calls::Pair { caller, callee });
                }
            }
            for (i, spec) in specs.enumerate() {
                if let Some(w) = work.get_mut(i % threads) {
                    w.clients.push(spec);
                }
            }
        }
    }
    work
}

/// The coordinator's view of the send window: counter snapshots and `--report-every`
/// intervals.
struct RunLog {
    every: Option<Duration>,
    start: Instant,
    next: Instant,
    last: Snapshot,
    intervals: Vec<Interval>,
    /// Each interval's ack histogram, for the head/tail comparison.
    acks: Vec<report::Histogram>,
    last_progress: Instant,
    error: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct Snapshot {
    sent: u64,
    acks: u64,
    deliveries: u64,
    errors: u64,
}

impl Snapshot {
    fn of(c: &Counters) -> Self {
        Self {
            sent: c.sent.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            deliveries: c.deliveries.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}

impl RunLog {
    fn new(args: &BenchArgs, start: Instant) -> Self {
        let every = (args.report_every > 0.0 && args.scenario == Scenario::Messages)
            .then(|| Duration::from_secs_f64(args.report_every));
        Self {
            every,
            start,
            next: start + every.unwrap_or_default(),
            last: Snapshot::default(),
            intervals: Vec::new(),
            acks: Vec::new(),
            last_progress: Instant::now(),
            error: None,
        }
    }

    /// Called while the window is open; `None` stops the wait (an error was kept).
    fn tick(&mut self, shared: &Shared, rss_of: &dyn Fn() -> Option<u64>) -> Option<()> {
        let c = &shared.counters;
        if self.every.is_none() && self.last_progress.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                sent = c.sent.load(Ordering::Relaxed),
                acks = c.acks.load(Ordering::Relaxed),
                deliveries = c.deliveries.load(Ordering::Relaxed),
                errors = c.errors.load(Ordering::Relaxed),
                "progress"
            );
            self.last_progress = Instant::now();
        }
        let Some(every) = self.every else {
            return Some(());
        };
        if Instant::now() < self.next {
            return Some(());
        }
        if let Err(e) = self.collect(shared, rss_of, every) {
            self.error = Some(e);
            return None;
        }
        self.next += every;
        Some(())
    }

    fn collect(
        &mut self,
        shared: &Shared,
        rss_of: &dyn Fn() -> Option<u64>,
        every: Duration,
    ) -> Result<(), String> {
        let now = Snapshot::of(&shared.counters);
        let mut ack = report::histogram()?;
        let mut delivery = report::histogram()?;
        for slot in &shared.intervals {
            let part = {
                let mut guard = slot
                    .lock()
                    .map_err(|_| "a client thread panicked".to_owned())?;
                std::mem::replace(&mut *guard, IntervalStats::new()?)
            };
            report::merge_into(&mut ack, &part.ack)?;
            report::merge_into(&mut delivery, &part.delivery)?;
        }
        let secs = every.as_secs_f64();
        let acks = now.acks - self.last.acks;
        let interval = Interval {
            t_secs: self.start.elapsed().as_secs_f64(),
            secs,
            sent: now.sent - self.last.sent,
            acks,
            acks_per_sec: acks as f64 / secs,
            deliveries: now.deliveries - self.last.deliveries,
            errors: now.errors - self.last.errors,
            unanswered: shared.counters.outstanding.load(Ordering::Relaxed),
            ack_latency_ms: Latency::from_micros(&ack),
            latency_ms: Latency::from_micros(&delivery),
            rss_kib: rss_of(),
        };
        report::eprint_line(&interval.line());
        self.intervals.push(interval);
        self.acks.push(ack);
        self.last = now;
        Ok(())
    }

    /// First versus last `window_secs` of intervals; `None` without intervals.
    fn head_tail(&self, window_secs: f64) -> Result<Option<HeadTail>, String> {
        let Some(every) = self.every else {
            return Ok(None);
        };
        let n = self.acks.len();
        if n == 0 {
            return Ok(None);
        }
        let k = ((window_secs / every.as_secs_f64()).round() as usize).clamp(1, n);
        let p99 = |hs: &[report::Histogram]| -> Result<Option<f64>, String> {
            let mut all = report::histogram()?;
            for h in hs {
                report::merge_into(&mut all, h)?;
            }
            Ok(Latency::from_micros(&all).p99)
        };
        let head = p99(self.acks.get(..k).unwrap_or_default())?;
        let tail = p99(self.acks.get(n - k..).unwrap_or_default())?;
        let rss_first = self.intervals.first().and_then(|i| i.rss_kib);
        let rss_last = self.intervals.last().and_then(|i| i.rss_kib);
        Ok(Some(HeadTail {
            window_secs: k as f64 * every.as_secs_f64(),
            intervals: k,
            overlap: 2 * k > n,
            head_ack_p99_ms: head,
            tail_ack_p99_ms: tail,
            ack_p99_tail_over_head: match (head, tail) {
                (Some(h), Some(t)) if h > 0.0 => Some(t / h),
                _ => None,
            },
            rss_first_kib: rss_first,
            rss_last_kib: rss_last,
            rss_growth_pct: match (rss_first, rss_last) {
                (Some(f), Some(l)) if f > 0 => Some((l as f64 - f as f64) * 100.0 / f as f64),
                _ => None,
            },
        }))
    }
}

/// Writes the report on stdout.
#[allow(clippy::print_stdout)]
pub fn print_report(report: &Report, json: bool) -> Result<(), String> {
    if json {
        let line = serde_json::to_string(report).map_err(|e| e.to_string())?;
        println!("{line}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
