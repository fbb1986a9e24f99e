//! `switchboard bench`: a load generator that drives either Switchboard's `/ws` endpoint or a
//! Socket.IO server (the reference peer) with the same scenario, so both can be compared.
//!
//! N active clients spread over M conversations (client i in conversation i % M) send messages
//! for a fixed time; K idle clients only hold a socket. The report counts durable acks, measures
//! delivery latency (send → `message:new` at another member, from a send time carried in
//! `clientMessageId`), counts errors by code, and samples the server's RSS.
//!
//! Every client lives in this process: one actix system per thread, one task per socket, a
//! shared monotonic epoch for timestamps.

pub mod client;
pub mod histogram;
pub mod protocol;
pub mod report;
pub mod setup;

use client::{Counters, Phase, Shared, ThreadStats};
pub use protocol::Target;
use report::{Latency, Report, Rss};
use setup::Shape;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Options of `switchboard bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Protocol of the server under test.
    #[arg(long, value_enum, default_value = "ws")]
    pub target: Target,
    /// Server address: `ws://HOST:PORT/ws` for `ws`, `http://HOST:PORT` for `socketio`.
    #[arg(long)]
    pub url: String,
    /// Active clients (they send).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Conversations; client i is a member of conversation i % M.
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// Extra clients that connect and stay idle (members of no conversation).
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Length of the send window in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Messages per second per active client; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Most unanswered sends per client (default 1 with `--rate 0`, else 100; with a rate,
    /// ticks that find this many outstanding are skipped and counted).
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
    /// PostgreSQL URL of the Switchboard server under test (`ws` target: users and
    /// conversations are created there).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Process id of the server, to sample its RSS from /proc/PID/status.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Longest wait for outstanding replies and pushes after the window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<std::path::PathBuf>,
}

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
        if self.clients > 0 && self.conversations == 0 {
            return Err("--conversations must be at least 1".into());
        }
        if self.clients + self.idle == 0 {
            return Err("nothing to do: --clients and --idle are both 0".into());
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

/// Runs the bench and prints its report.
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
    let shape = Shape {
        clients: args.clients,
        idle: args.idle,
        conversations: args.conversations.max(1),
        token_ttl_secs: (args.duration as u64)
            .saturating_add(args.connect_timeout)
            .saturating_add(3600),
    };
    let specs = match args.target {
        Target::Ws => {
            let url = args.database_url.as_deref().unwrap_or_default();
            let (seeded, specs) = setup::switchboard(&shape, url, &args.jwt_secret)?;
            tracing::info!(
                prefix = %seeded.prefix,
                users = seeded.users.len(),
                conversations = seeded.conversations.len(),
                "created bench users and conversations"
            );
            specs
        }
        Target::Socketio => setup::peer(&shape, &args.jwt_secret)?,
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
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, total.max(1));
    let inflight = args.inflight();

    let rss_of = || args.server_pid.and_then(report::rss_kib);
    let mut rss = Rss {
        before_kib: rss_of(),
        ..Rss::default()
    };

    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let shared = Arc::new(Shared {
        epoch,
        target: args.target,
        url: args.url.clone(),
        rate: args.rate,
        inflight,
        message_bytes: args.message_bytes,
        active: args.clients,
        connect_limit: Semaphore::new(args.connect_concurrency),
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        counters: Counters::default(),
        phase: phase_rx,
    });

    // Interleave clients over threads so every conversation has members on every thread.
    let mut buckets: Vec<Vec<setup::ClientSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for spec in specs {
        if let Some(bucket) = buckets.get_mut(spec.index % threads) {
            bucket.push(spec);
        }
    }
    let mut handles = Vec::with_capacity(threads);
    for (i, bucket) in buckets.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || client::run_thread(shared, bucket))
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        handles.push(handle);
    }

    let c = &shared.counters;
    tracing::info!(
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

    // Send window.
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(args.duration);
    phase_tx.send_replace(Phase::Run {
        start_ns: ns_since(epoch, start),
        end_ns: ns_since(epoch, end),
    });
    tracing::info!(secs = args.duration, "sending");
    let mut last_log = Instant::now();
    wait_until(end, || {
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                sent = c.sent.load(Ordering::Relaxed),
                acks = c.acks.load(Ordering::Relaxed),
                deliveries = c.deliveries.load(Ordering::Relaxed),
                errors = c.errors.load(Ordering::Relaxed),
                "progress"
            );
            last_log = Instant::now();
        }
        false
    });
    rss.end_kib = rss_of();

    // Drain: wait for replies to what is outstanding and for pushes to stop arriving.
    phase_tx.send_replace(Phase::Drain);
    let mut last = (u64::MAX, Instant::now());
    wait_until(Instant::now() + Duration::from_secs_f64(args.drain), || {
        let deliveries = c.deliveries.load(Ordering::Relaxed);
        if deliveries != last.0 {
            last = (deliveries, Instant::now());
        }
        c.outstanding.load(Ordering::Relaxed) <= 0 && last.1.elapsed() >= Duration::from_millis(300)
    });
    let unanswered = c.outstanding.load(Ordering::Relaxed);
    phase_tx.send_replace(Phase::Stop);

    let mut stats = ThreadStats::default();
    for handle in handles {
        let part = handle
            .join()
            .map_err(|_| "a client thread panicked".to_owned())??;
        merge(&mut stats, part);
    }

    let acks = c.acks.load(Ordering::Relaxed);
    let deliveries = c.deliveries.load(Ordering::Relaxed);
    let rss_per_connection_kib = match (rss.before_kib, rss.after_connect_kib) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) / connected as f64)
        }
        _ => None,
    };
    let members = if args.clients == 0 {
        [0, 0]
    } else {
        let m = args.conversations.max(1);
        [shape.members(m - 1), shape.members(0)]
    };
    Ok(Report {
        target: args.target.name().to_owned(),
        url: args.url.clone(),
        clients: args.clients,
        idle: args.idle,
        conversations: args.conversations,
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
        unanswered,
        rss,
        rss_per_connection_kib,
    })
}

fn merge(into: &mut ThreadStats, part: ThreadStats) {
    into.delivery.merge(&part.delivery);
    into.ack.merge(&part.ack);
    for (k, v) in part.errors {
        *into.errors.entry(k).or_default() += v;
    }
    for (k, v) in part.connect_failures {
        *into.connect_failures.entry(k).or_default() += v;
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
