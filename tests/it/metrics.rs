//! `GET /metrics`: the exposition parses as Prometheus text format (checked line by line by a
//! strict parser below), and counters move with traffic over `/ws`.
//!
//! The parser is written here because it has to refuse what a scraper would choke on or misread
//! (a sample before its family's TYPE, a repeated series, buckets that are not cumulative, a bad
//! escape); the published parsers of this format skip lines they cannot read instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{code, TestServer, WsClient};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One parsed sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value `{s}`: {e}")),
    }
}

/// Parses `{a="x",b="y"}` (the braces included) and returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label value")?;
            match c {
                '\\' => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => return Err(format!("bad escape \\{other}")),
                },
                '"' => break i,
                '\n' => return Err("raw line feed in label value".into()),
                c => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by commas".into());
        }
    }
}

/// A strict reading of the text exposition format 0.0.4: every line is a comment (`# HELP`,
/// `# TYPE` or free text), a sample, or empty; every sample belongs to a family whose TYPE came
/// first; no series appears twice; histogram buckets are cumulative and end with `+Inf` equal
/// to `_count`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: `{line}`", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| at("TYPE without name".into()))?;
                    let kind = parts.next().ok_or_else(|| at("TYPE without type".into()))?;
                    if !is_metric_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type `{kind}`")));
                    }
                    if samples
                        .iter()
                        .any(|s: &Sample| family(&s.name, &types) == name)
                    {
                        return Err(at("TYPE after samples of its family".into()));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("second TYPE line".into()));
                    }
                }
                Some("HELP") => {
                    let name = parts.next().ok_or_else(|| at("HELP without name".into()))?;
                    if !is_metric_name(name) || !helps.insert(name.to_owned()) {
                        return Err(at("bad or repeated HELP".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("value must follow one space".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let fam = family(name, &types);
        let kind = types
            .get(fam)
            .ok_or_else(|| at(format!("sample before the TYPE of `{fam}`")))?;
        match (kind.as_str(), name.strip_prefix(fam).unwrap_or("")) {
            ("histogram", "_bucket") if labels.contains_key("le") => {}
            ("histogram", "_sum" | "_count") => {}
            ("histogram", _) => return Err(at("histogram sample without le/_sum/_count".into())),
            ("counter", _) if value < 0.0 => return Err(at("negative counter".into())),
            (_, "") => {}
            _ => return Err(at("sample name does not match its family".into())),
        }
        if !seen.insert(format!("{name}{labels:?}")) {
            return Err(at("series repeated".into()));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets, +Inf == _count.
    for (fam, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{fam}_bucket"))
            .collect();
        let mut last = 0.0;
        let mut last_le = f64::NEG_INFINITY;
        for b in &buckets {
            let le = parse_value(&b.labels["le"])?;
            if le <= last_le || b.value < last {
                return Err(format!("{fam}: buckets not cumulative"));
            }
            last_le = le;
            last = b.value;
        }
        let count = samples
            .iter()
            .find(|s| s.name == format!("{fam}_count"))
            .ok_or(format!("{fam}_count missing"))?;
        if last_le != f64::INFINITY || last != count.value {
            return Err(format!("{fam}: +Inf bucket missing or not equal to _count"));
        }
    }
    Ok(samples)
}

/// The family a sample name belongs to (histogram suffixes stripped when the base is typed).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|k| k == "histogram") {
                return base;
            }
        }
    }
    name
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map_or(0.0, |s| s.value)
}

async fn scrape(s: &TestServer, token: Option<&str>) -> (u16, String, String) {
    let mut req = s.client.get(s.url("/metrics"));
    if let Some(t) = token {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.body().await.unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

#[test]
fn the_strict_parser_refuses_malformed_expositions() {
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "sample before TYPE");
    assert!(parse_exposition("# TYPE a counter\na{x=\"1} 1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na  1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na 1\na 2\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na -1\n").is_err());
    assert!(parse_exposition(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n"
    )
    .is_err());
    let ok = parse_exposition("# TYPE g gauge\ng{a=\"x\\\"y\",b=\"\\\\\"} +Inf 123\n").unwrap();
    assert_eq!(ok[0].labels["a"], "x\"y");
}

#[actix_web::test]
async fn metrics_parse_as_prometheus_text_and_counters_move_with_traffic() {
    let s = TestServer::start().await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = {
        let mut conn = s.db.conn();
        switchboard::db::conversations::create_group(&mut conn, alice, "team", &[bob], None)
            .unwrap()
            .id
    };

    let (status, ctype, before) = scrape(&s, None).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let before = parse_exposition(&before).unwrap_or_else(|e| panic!("{e}\n{before}"));
    for family in [
        "switchboard_connections",
        "switchboard_sessions",
        "switchboard_messages_acked_total",
        "switchboard_message_ack_latency_seconds_count",
        "switchboard_fanout_deliveries_total",
        "switchboard_queue_drops_total",
        "switchboard_calls",
        "switchboard_calls_ended_total",
        "switchboard_rate_limited_total",
        "switchboard_db_pool_connections_in_use",
        "switchboard_db_pool_waiting",
        "switchboard_db_errors_total",
    ] {
        assert!(
            before.iter().any(|x| x.name == family),
            "{family} is exported"
        );
    }
    assert_eq!(value(&before, "switchboard_messages_acked_total", &[]), 0.0);

    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    for c in [&mut a, &mut b] {
        c.request(
            "conversation:join",
            json!({"conversationId": conv.to_string()}),
        )
        .await
        .unwrap();
    }
    for i in 0..5 {
        a.request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": format!("m{i}")}),
        )
        .await
        .unwrap();
        b.expect_event("message:new").await;
    }
    // A call between them, left ringing: it shows in the live-call gauge.
    let ack = a
        .request("call:initiate", json!({"to": bob.to_string()}))
        .await
        .unwrap();
    let call_id = ack["callId"].as_str().unwrap().to_owned();
    b.expect_event("call:incoming").await;

    let (_, _, mid) = scrape(&s, None).await;
    let mid = parse_exposition(&mid).unwrap_or_else(|e| panic!("{e}\n{mid}"));
    let ws = [("transport", "ws"), ("dialect", "canonical")];
    assert_eq!(value(&mid, "switchboard_connections", &ws), 2.0);
    assert_eq!(value(&mid, "switchboard_sessions", &[]), 2.0);
    assert_eq!(value(&mid, "switchboard_online_users", &[]), 2.0);
    assert_eq!(value(&mid, "switchboard_messages_acked_total", &[]), 5.0);
    assert_eq!(
        value(&mid, "switchboard_message_ack_latency_seconds_count", &[]),
        5.0
    );
    assert!(value(&mid, "switchboard_message_ack_latency_seconds_sum", &[]) > 0.0);
    assert!(
        value(&mid, "switchboard_fanout_deliveries_total", &[])
            >= value(&before, "switchboard_fanout_deliveries_total", &[]) + 5.0
    );
    assert_eq!(
        value(&mid, "switchboard_calls", &[("state", "ringing")]),
        1.0
    );
    assert!(
        value(&mid, "switchboard_http_requests_total", &[])
            > value(&before, "switchboard_http_requests_total", &[])
    );

    a.request("call:end", json!({"callId": call_id}))
        .await
        .unwrap();
    b.expect_event("call:cancelled").await;
    drop(a);
    drop(b);
    // The sessions notice the closed sockets, the call actor its end.
    let mut after = Vec::new();
    for _ in 0..50 {
        let (_, _, text) = scrape(&s, None).await;
        after = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        if value(&after, "switchboard_sessions", &[]) == 0.0
            && value(&after, "switchboard_calls", &[("state", "ringing")]) == 0.0
        {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(value(&after, "switchboard_sessions", &[]), 0.0);
    assert_eq!(value(&after, "switchboard_sessions_opened_total", &[]), 2.0);
    assert_eq!(
        value(&after, "switchboard_calls", &[("state", "ringing")]),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "switchboard_calls_ended_total",
            &[("outcome", "cancelled"), ("reason", "cancelled")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn rate_limit_hits_are_counted() {
    let s = TestServer::start_with(|c| {
        c.message_burst = 1;
        c.message_rate_per_min = 1;
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = {
        let mut conn = s.db.conn();
        switchboard::db::conversations::create_group(&mut conn, alice, "team", &[bob], None)
            .unwrap()
            .id
    };
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let send = json!({"conversationId": conv.to_string(), "content": "x"});
    a.request("message:send", send.clone()).await.unwrap();
    let err = a.request("message:send", send).await.unwrap_err();
    assert_eq!(err["code"], "rate_limited");
    let (_, _, text) = scrape(&s, None).await;
    let m = parse_exposition(&text).unwrap();
    assert_eq!(
        value(
            &m,
            "switchboard_rate_limited_total",
            &[("limit", "messages")]
        ),
        1.0
    );
}

#[actix_web::test]
async fn a_metrics_token_is_required_when_configured() {
    let s = TestServer::start_with(|c| {
        c.metrics_token = switchboard::config::Secret::new("scrape-me-please");
    })
    .await;
    let (status, body) = s.get("/metrics", None).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"));
    let (status, body) = s.get("/metrics", Some("wrong")).await;
    assert_eq!((status, code(&body)), (401, "invalid_token"));
    let (status, _, text) = scrape(&s, Some("scrape-me-please")).await;
    assert_eq!(status, 200);
    parse_exposition(&text).unwrap();
}
