//! The result of a run: one struct, printed as text or as one JSON object; and the latency
//! histograms behind it (`hdrhistogram`, microseconds, one per client thread, merged at the end).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A latency histogram in microseconds.
pub type Histogram = hdrhistogram::Histogram<u64>;

/// The largest value a histogram tracks, in µs (one hour); larger samples are clamped to it.
pub const HIGHEST_TRACKABLE_US: u64 = 3_600_000_000;

/// An empty histogram: 1 µs to one hour, 3 significant digits (exact to 2 048 µs, then within
/// 0.1 %).
pub fn histogram() -> Result<Histogram, String> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_US, 3)
        .map_err(|e| format!("cannot create a histogram: {e:?}"))
}

/// Adds every sample of `from` to `into`.
pub fn merge_into(into: &mut Histogram, from: &Histogram) -> Result<(), String> {
    into.add(from)
        .map_err(|e| format!("cannot merge histograms: {e:?}"))
}

/// Latency summary in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
}

impl Latency {
    /// Summarises a histogram of microseconds. A percentile is the highest value equivalent to
    /// the recorded ones in its bucket, never above the largest sample.
    pub fn from_micros(h: &Histogram) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        let max = h.max();
        Self {
            count: h.len(),
            p50: Some(ms(h.value_at_quantile(0.5).min(max))),
            p99: Some(ms(h.value_at_quantile(0.99).min(max))),
            max: Some(ms(max)),
            mean: Some(h.mean() / 1000.0),
        }
    }
}

/// Server resident memory (VmRSS, KiB) at several moments.
#[derive(Debug, Default, Serialize)]
pub struct Rss {
    /// Before any socket connected.
    pub before_kib: Option<u64>,
    /// Once every socket connected and joined.
    pub after_connect_kib: Option<u64>,
    /// `--settle` seconds after every socket connected (before sending starts).
    pub settled_kib: Option<u64>,
    /// At the end of the send window.
    pub end_kib: Option<u64>,
    /// `--after-close` seconds after every client socket closed.
    pub after_close_kib: Option<u64>,
}

/// One `--report-every` interval of the send window.
#[derive(Debug, Default, Serialize)]
pub struct Interval {
    /// End of the interval, seconds since the window opened.
    pub t_secs: f64,
    /// Length of the interval, seconds.
    pub secs: f64,
    /// `message:send` frames written in the interval.
    pub sent: u64,
    /// Durable acks received in the interval.
    pub acks: u64,
    /// `acks / secs`.
    pub acks_per_sec: f64,
    /// Pushes received in the interval.
    pub deliveries: u64,
    /// Errors in the interval.
    pub errors: u64,
    /// Sends unanswered at the end of the interval.
    pub unanswered: i64,
    /// Send → durable ack, for acks received in the interval.
    pub ack_latency_ms: Latency,
    /// Send → `message:new`, for pushes received in the interval.
    pub latency_ms: Latency,
    /// Server RSS at the end of the interval, KiB.
    pub rss_kib: Option<u64>,
}

/// First versus last `window_secs` of the intervals (a soak's drift).
#[derive(Debug, Default, Serialize)]
pub struct HeadTail {
    /// Requested window, seconds.
    pub window_secs: f64,
    /// Intervals in each window.
    pub intervals: usize,
    /// Whether the two windows share intervals (the run is shorter than two windows).
    pub overlap: bool,
    /// Ack latency p99 over the first window, ms.
    pub head_ack_p99_ms: Option<f64>,
    /// Ack latency p99 over the last window, ms.
    pub tail_ack_p99_ms: Option<f64>,
    /// `tail_ack_p99_ms / head_ack_p99_ms`.
    pub ack_p99_tail_over_head: Option<f64>,
    /// Server RSS at the end of the first interval, KiB.
    pub rss_first_kib: Option<u64>,
    /// Server RSS at the end of the last interval, KiB.
    pub rss_last_kib: Option<u64>,
    /// `(rss_last − rss_first) / rss_first`, percent.
    pub rss_growth_pct: Option<f64>,
}

/// What the `calls` scenario measured.
#[derive(Debug, Default, Serialize)]
pub struct Calls {
    /// Caller/callee pairs calling at once.
    pub callers: usize,
    /// Calls asked for (`--calls`).
    pub requested: u64,
    /// Calls that rang the callee and were ended.
    pub completed: u64,
    /// Calls refused, not delivered or not ended in time (see `errors`).
    pub failed: u64,
    /// Time from the first `call:initiate` to the last call's end, seconds.
    pub secs: f64,
    /// `completed / secs`.
    pub calls_per_sec: f64,
    /// `call:initiate` written → `call:incoming` at the callee.
    pub setup_ms: Latency,
    /// `call:initiate` written → the caller's ack.
    pub ack_ms: Latency,
    /// `call:end` written → its ack at the caller and the callee's notice, both.
    pub end_ms: Latency,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `messages` or `calls`.
    pub scenario: String,
    /// `ws` or `socketio`.
    pub target: String,
    /// The server address.
    pub url: String,
    /// Active clients.
    pub clients: usize,
    /// Idle clients.
    pub idle: usize,
    /// Conversations.
    pub conversations: usize,
    /// Smallest and largest conversation.
    pub members_per_conversation: [u32; 2],
    /// Length of the send window, seconds.
    pub duration_secs: f64,
    /// Messages per second per active client (0: closed loop).
    pub rate: f64,
    /// Most outstanding sends per client.
    pub inflight: u32,
    /// Message text length in bytes.
    pub message_bytes: usize,
    /// Client threads.
    pub threads: usize,
    /// Sockets up (connected, authenticated, joined).
    pub connected: u64,
    /// Sockets that failed to come up.
    pub connect_failures: u64,
    /// Those failures by reason.
    pub connect_failure_reasons: BTreeMap<String, u64>,
    /// Time to bring every socket up, seconds.
    pub connect_secs: f64,
    /// `message:send` frames written.
    pub sent: u64,
    /// Durable acks received within the window.
    pub acks: u64,
    /// Durable acks received after the window (in the drain).
    pub acks_late: u64,
    /// `acks / duration_secs`.
    pub acks_per_sec: f64,
    /// `message:new` pushes received carrying a bench send time.
    pub deliveries: u64,
    /// Σ (members − 1) over durably acked messages.
    pub expected_deliveries: u64,
    /// `deliveries / duration_secs`.
    pub deliveries_per_sec: f64,
    /// Send → `message:new` at another member.
    pub latency_ms: Latency,
    /// Send → durable ack at the sender.
    pub ack_latency_ms: Latency,
    /// Errors by code (server codes, plus `closed_<code>`, `disconnected`, ... for lost sockets).
    pub errors: BTreeMap<String, u64>,
    /// Total of `errors`.
    pub error_total: u64,
    /// Scheduled sends (rate mode) never made: held back by `inflight` until the end of the
    /// drain. Their latency is missing from the figures; it was at least the rest of the run.
    pub skipped_sends: u64,
    /// Scheduled sends (rate mode) made late because `inflight` sends were outstanding when
    /// they were due; like every rate-mode send, their latency counts from the scheduled time.
    pub deferred_sends: u64,
    /// Sends never answered by the end of the drain.
    pub unanswered: i64,
    /// Server memory, when `--server-pid` was given.
    pub rss: Rss,
    /// `(after_connect − before) / connected`, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// Seconds waited after connecting before `rss.settled_kib` was sampled (`--settle`).
    pub settle_secs: f64,
    /// `(settled − before) / connected`, KiB.
    pub rss_per_connection_settled_kib: Option<f64>,
    /// Messages inserted into the bench conversations before the run (`--seed-messages`).
    pub seeded_messages: u64,
    /// Per-interval figures (`--report-every`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<Interval>,
    /// First versus last window of the intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_tail: Option<HeadTail>,
    /// The `calls` scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Calls>,
    /// What `--uploaders` measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads: Option<super::uploads::Uploads>,
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"))
}

fn mib(v: Option<u64>) -> String {
    v.map_or_else(
        || "-".to_owned(),
        |v| format!("{:.1} MiB", v as f64 / 1024.0),
    )
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} KiB"))
}

fn latency(l: &Latency) -> String {
    format!("p50 {}  p99 {}  max {}", ms(l.p50), ms(l.p99), ms(l.max))
}

impl Report {
    /// The report as aligned text lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let [lo, hi] = self.members_per_conversation;
        let members = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}-{hi}")
        };
        let mut lines = vec![
            ("target", format!("{} {}", self.target, self.url)),
            (
                "connections",
                format!(
                    "{} up in {:.2} s, {} failed ({})",
                    self.connected,
                    self.connect_secs,
                    self.connect_failures,
                    counts(&self.connect_failure_reasons)
                ),
            ),
        ];
        if let Some(calls) = &self.calls {
            lines.splice(
                1..1,
                [(
                    "calls",
                    format!(
                        "{} caller/callee pairs + {} idle; {} calls asked for",
                        calls.callers, self.idle, calls.requested
                    ),
                )],
            );
            lines.extend([
                (
                    "calls made",
                    format!(
                        "{} completed, {} failed in {:.2} s ({:.1} calls/s)",
                        calls.completed, calls.failed, calls.secs, calls.calls_per_sec
                    ),
                ),
                ("call set-up", latency(&calls.setup_ms)),
                ("call ack", latency(&calls.ack_ms)),
                ("call end", latency(&calls.end_ms)),
            ]);
        } else {
            let rate = if self.rate > 0.0 {
                format!(
                    "{}/s per client (open loop), at most {} outstanding",
                    self.rate, self.inflight
                )
            } else {
                format!(
                    "as fast as acks allow (closed loop), {} outstanding per client",
                    self.inflight
                )
            };
            lines.splice(
                1..1,
                [
                    (
                        "clients",
                        format!(
                            "{} active + {} idle; {} conversations of {} members; {} threads",
                            self.clients, self.idle, self.conversations, members, self.threads
                        ),
                    ),
                    (
                        "load",
                        format!(
                            "{:.1} s, {rate}, {} byte messages{}",
                            self.duration_secs,
                            self.message_bytes,
                            if self.seeded_messages > 0 {
                                format!("; {} messages seeded first", self.seeded_messages)
                            } else {
                                String::new()
                            }
                        ),
                    ),
                ],
            );
            lines.extend([
                (
                    "durable acks",
                    format!(
                        "{} ({:.1}/s) of {} sent; {} late, {} unanswered, {} deferred, {} skipped",
                        self.acks,
                        self.acks_per_sec,
                        self.sent,
                        self.acks_late,
                        self.unanswered,
                        self.deferred_sends,
                        self.skipped_sends
                    ),
                ),
                (
                    "deliveries",
                    format!(
                        "{} ({:.1}/s) of {} expected",
                        self.deliveries, self.deliveries_per_sec, self.expected_deliveries
                    ),
                ),
                ("delivery latency", latency(&self.latency_ms)),
                ("ack latency", latency(&self.ack_latency_ms)),
            ]);
        }
        lines.extend([
            (
                "errors",
                format!("{} ({})", self.error_total, counts(&self.errors)),
            ),
            (
                "server RSS",
                format!(
                    "before {}, after connect {}, {}end {}{}",
                    mib(self.rss.before_kib),
                    mib(self.rss.after_connect_kib),
                    if self.settle_secs > 0.0 {
                        format!("settled {}, ", mib(self.rss.settled_kib))
                    } else {
                        String::new()
                    },
                    mib(self.rss.end_kib),
                    match self.rss.after_close_kib {
                        Some(_) => format!(", after close {}", mib(self.rss.after_close_kib)),
                        None => String::new(),
                    },
                ),
            ),
            (
                "RSS/connection",
                if self.settle_secs > 0.0 {
                    format!(
                        "{} after connect, {} settled ({:.1} s later)",
                        kib(self.rss_per_connection_kib),
                        kib(self.rss_per_connection_settled_kib),
                        self.settle_secs
                    )
                } else {
                    format!("{} after connect", kib(self.rss_per_connection_kib))
                },
            ),
        ]);
        if let Some(ht) = &self.head_tail {
            lines.push((
                "drift",
                format!(
                    "ack p99 first {:.0} s {} -> last {:.0} s {} ({}x{}); RSS {} -> {} ({})",
                    ht.window_secs,
                    ms(ht.head_ack_p99_ms),
                    ht.window_secs,
                    ms(ht.tail_ack_p99_ms),
                    ht.ack_p99_tail_over_head
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
                    if ht.overlap { ", windows overlap" } else { "" },
                    mib(ht.rss_first_kib),
                    mib(ht.rss_last_kib),
                    ht.rss_growth_pct
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:+.1} %")),
                ),
            ));
        }
        if let Some(u) = &self.uploads {
            lines.push((
                "uploads",
                format!(
                    "{} {} uploaders x {} bytes: {} stored, {} failed, {:.1} MB/s; {}",
                    u.uploaders,
                    u.kind,
                    u.bytes_each,
                    u.completed,
                    u.failed,
                    u.mb_per_sec,
                    latency(&u.latency_ms)
                ),
            ));
        }
        for (label, value) in lines {
            let _ = writeln!(out, "{label:<17} {value}");
        }
        out
    }
}

impl Interval {
    /// Column titles for [`Interval::line`].
    pub const HEADER: &'static str =
        "  t (s)    acks  acks/s  ack p50   ack p99  unanswered  errors  server RSS";

    /// One aligned line.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        format!(
            "{:>7.0} {:>7} {:>7.0} {:>8} {:>9} {:>11} {:>7}  {}",
            self.t_secs,
            self.acks,
            self.acks_per_sec,
            ms(self.ack_latency_ms.p50),
            ms(self.ack_latency_ms.p99),
            self.unanswered,
            self.errors,
            mib(self.rss_kib)
        )
    }
}

/// Writes one progress line on stderr (stdout is kept for the report).
#[allow(clippy::print_stderr)]
pub fn eprint_line(line: &str) {
    eprintln!("{line}");
}

/// VmRSS of process `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_and_limits_are_readable() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(open_files_limit().unwrap() > 0);
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn percentiles_are_close_and_merge_is_exact() {
        let mut a = histogram().unwrap();
        let mut b = histogram().unwrap();
        let mut all = histogram().unwrap();
        // 1 ms .. 1000 ms in µs, split over two "threads".
        for i in 1..=1000u64 {
            let v = i * 1000;
            if i % 3 == 0 {
                a.record(v).unwrap()
            } else {
                b.record(v).unwrap()
            }
            all.record(v).unwrap();
        }
        let mut merged = histogram().unwrap();
        merge_into(&mut merged, &a).unwrap();
        merge_into(&mut merged, &b).unwrap();
        merge_into(&mut merged, &histogram().unwrap()).unwrap();
        let (m, l) = (Latency::from_micros(&merged), Latency::from_micros(&all));
        assert_eq!(m.count, 1000);
        assert_eq!((m.p50, m.p99, m.max), (l.p50, l.p99, l.max));
        let p50 = m.p50.unwrap();
        let p99 = m.p99.unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.002, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.002, "{p99}");
        // The largest sample's bucket bound: within 0.1 %.
        let max = m.max.unwrap();
        assert!((1000.0..1001.0).contains(&max), "{max}");
    }

    #[test]
    fn small_values_are_exact_and_huge_ones_clamped() {
        let mut h = histogram().unwrap();
        for v in 1..=100 {
            h.record(v).unwrap();
        }
        let l = Latency::from_micros(&h);
        assert_eq!((l.p50, l.p99, l.max), (Some(0.05), Some(0.099), Some(0.1)));
        h.saturating_record(u64::MAX);
        assert!(h.max() >= HIGHEST_TRACKABLE_US);
        let empty = Latency::from_micros(&histogram().unwrap());
        assert_eq!((empty.count, empty.p50), (0, None));
    }

    #[test]
    fn calls_and_drift_reports_print() {
        let mut h = histogram().unwrap();
        h.record(2000).unwrap();
        let report = Report {
            scenario: "calls".into(),
            calls: Some(Calls {
                callers: 50,
                requested: 100,
                completed: 99,
                failed: 1,
                setup_ms: Latency::from_micros(&h),
                ..Calls::default()
            }),
            head_tail: Some(HeadTail {
                window_secs: 300.0,
                head_ack_p99_ms: Some(2.0),
                tail_ack_p99_ms: Some(3.0),
                ack_p99_tail_over_head: Some(1.5),
                rss_first_kib: Some(1024),
                rss_last_kib: Some(2048),
                rss_growth_pct: Some(100.0),
                ..HeadTail::default()
            }),
            ..Report::default()
        };
        let text = report.text();
        assert!(text.contains("99 completed, 1 failed"), "{text}");
        assert!(text.contains("call set-up       p50 2.00 ms"), "{text}");
        assert!(text.contains("(1.50x)"), "{text}");
        assert!(text.contains("+100.0 %"), "{text}");
        assert!(!text.contains("durable acks"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["calls"]["setup_ms"]["p50"], 2.0);
        assert!(json.get("intervals").is_none());
        let line = Interval {
            t_secs: 60.0,
            acks: 5,
            ..Interval::default()
        }
        .line();
        assert!(line.trim_start().starts_with("60"), "{line}");
    }

    #[test]
    fn text_report_names_every_measure() {
        let mut h = histogram().unwrap();
        h.record(1500).unwrap();
        let report = Report {
            target: "ws".into(),
            latency_ms: Latency::from_micros(&h),
            ..Report::default()
        };
        let text = report.text();
        for label in ["durable acks", "delivery latency", "server RSS", "errors"] {
            assert!(text.contains(label), "{text}");
        }
        assert!(text.contains("p50 1.50 ms"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["latency_ms"]["p50"], 1.5);
    }
}
