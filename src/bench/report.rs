//! The result of a run: one struct, printed as text or as one JSON object.

use super::histogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    /// Summarises a histogram of microseconds.
    pub fn from_micros(h: &Histogram) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.count(),
            p50: h.quantile(0.5).map(ms),
            p99: h.quantile(0.99).map(ms),
            max: h.max().map(ms),
            mean: h.mean().map(|m| m / 1000.0),
        }
    }
}

/// Server resident memory (VmRSS, KiB) at three moments.
#[derive(Debug, Default, Serialize)]
pub struct Rss {
    /// Before any socket connected.
    pub before_kib: Option<u64>,
    /// Once every socket connected and joined.
    pub after_connect_kib: Option<u64>,
    /// At the end of the send window.
    pub end_kib: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
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
    /// Rate ticks skipped because `inflight` sends were outstanding.
    pub skipped_sends: u64,
    /// Sends never answered by the end of the drain.
    pub unanswered: i64,
    /// Server memory, when `--server-pid` was given.
    pub rss: Rss,
    /// `(after_connect − before) / connected`, KiB.
    pub rss_per_connection_kib: Option<f64>,
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

impl Report {
    /// The report as aligned text lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let rate = if self.rate > 0.0 {
            format!(
                "{}/s per client, at most {} outstanding",
                self.rate, self.inflight
            )
        } else {
            format!(
                "as fast as acks allow, {} outstanding per client",
                self.inflight
            )
        };
        let [lo, hi] = self.members_per_conversation;
        let members = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}-{hi}")
        };
        let lines = [
            ("target", format!("{} {}", self.target, self.url)),
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
                    "{:.1} s, {rate}, {} byte messages",
                    self.duration_secs, self.message_bytes
                ),
            ),
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
            (
                "durable acks",
                format!(
                    "{} ({:.1}/s) of {} sent; {} late, {} unanswered, {} skipped ticks",
                    self.acks,
                    self.acks_per_sec,
                    self.sent,
                    self.acks_late,
                    self.unanswered,
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
            (
                "delivery latency",
                format!(
                    "p50 {}  p99 {}  max {}",
                    ms(self.latency_ms.p50),
                    ms(self.latency_ms.p99),
                    ms(self.latency_ms.max)
                ),
            ),
            (
                "ack latency",
                format!(
                    "p50 {}  p99 {}  max {}",
                    ms(self.ack_latency_ms.p50),
                    ms(self.ack_latency_ms.p99),
                    ms(self.ack_latency_ms.max)
                ),
            ),
            (
                "errors",
                format!("{} ({})", self.error_total, counts(&self.errors)),
            ),
            (
                "server RSS",
                format!(
                    "before {}, after connect {}, end {}; per connection {}",
                    mib(self.rss.before_kib),
                    mib(self.rss.after_connect_kib),
                    mib(self.rss.end_kib),
                    self.rss_per_connection_kib
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} KiB"))
                ),
            ),
        ];
        for (label, value) in lines {
            let _ = writeln!(out, "{label:<17} {value}");
        }
        out
    }
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
    fn text_report_names_every_measure() {
        let mut h = Histogram::new();
        h.record(1500);
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
