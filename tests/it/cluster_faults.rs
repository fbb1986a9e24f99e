//! Cluster mode under faults. Redis killed (SIGKILL) and started again under message load: sends
//! are still acknowledged after their commit while it is away, nothing acknowledged is lost, and
//! delivery across nodes resumes in seq order once it is back. A node killed under load: its
//! users go offline on the survivor within the heartbeat TTL, and its clients reconnect there and
//! find every message they had acknowledged. A node cut off from Redis (which keeps its data):
//! for a moment, the presence changes of its users meanwhile are right on every node once it
//! reaches Redis again; for longer than `NODE_TTL_MS`, the others take its users offline and
//! hear them online again once it is back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use crate::common::{RedisSpace, TestServer, WsClient, SECRET};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener as AsyncListener, TcpStream};
use tokio::sync::mpsc;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn group(s: &TestServer, creator: i64, members: &[i64]) -> i64 {
    let mut conn = s.db.conn();
    switchboard::db::conversations::create_group(&mut conn, creator, "team", members, None)
        .unwrap()
        .id
}

/// The seqs of a conversation's stored messages, in order.
fn stored_seqs(s: &TestServer, conv: i64) -> Vec<i64> {
    #[derive(QueryableByName)]
    struct Seq {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
    }
    diesel::sql_query(format!(
        "SELECT seq FROM messages WHERE conversation_id = {conv} ORDER BY seq"
    ))
    .load::<Seq>(&mut s.db.conn())
    .unwrap()
    .into_iter()
    .map(|r| r.seq)
    .collect()
}

/// A redis-server of one test's own (no persistence), on a port of its own; killed when
/// dropped.
struct Redis {
    bin: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts one (`REDIS_SERVER_BIN`, else `redis-server` from `PATH`) on a free port.
    async fn start() -> Self {
        let bin = std::env::var("REDIS_SERVER_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "redis-server".to_owned());
        let port = free_addr().port();
        let dir = std::env::temp_dir().join(format!("sb-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            bin,
            port,
            dir,
            child: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers PING.
    fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        stream.write_all(b"PING\r\n").is_ok()
            && stream
                .read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Starts the server (again, empty) on its port and waits until it answers.
    async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin));
        self.child = Some(child);
        let started = Instant::now();
        while !self.pings() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {}:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, every connection cut.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `node`'s `/health` shows Redis `state` (`up` or `down`); answers when.
async fn wait_for_redis(node: &TestServer, state: &str, within: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let (_, body) = node.get("/health", None).await;
        if body["cluster"]["redis"] == state {
            return Instant::now();
        }
        assert!(
            started.elapsed() < within,
            "/health did not show Redis {state} within {within:?}: {body}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client read by a task of its own, so that every frame's arrival time is when it came,
/// whatever the test is doing meanwhile.
struct Tap {
    frames: mpsc::UnboundedReceiver<(Instant, Value)>,
    stop: Arc<AtomicBool>,
    task: actix_web::rt::task::JoinHandle<WsClient>,
    /// Frames read here that were not `message:new`.
    others: Vec<(Instant, Value)>,
}

impl Tap {
    fn new(mut client: WsClient) -> Self {
        let (tx, frames) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let task = actix_web::rt::spawn(async move {
            while !stopping.load(Ordering::SeqCst) {
                if let Some(frame) = client.next_frame(Duration::from_millis(100)).await {
                    let _ = tx.send((Instant::now(), frame));
                }
            }
            client
        });
        Self {
            frames,
            stop,
            task,
            others: Vec::new(),
        }
    }

    /// The next frame read, if one comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(Instant, Value)> {
        tokio::time::timeout(wait, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    /// Each `message:new` seq of `conv` with its arrival time, until seq `last` came or
    /// `within` passed.
    async fn messages_until(
        &mut self,
        conv: i64,
        last: i64,
        within: Duration,
    ) -> Vec<(Instant, i64)> {
        let deadline = Instant::now() + within;
        let conv = conv.to_string();
        let mut seqs: Vec<(Instant, i64)> = Vec::new();
        while seqs.last().is_none_or(|(_, s)| *s < last) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((at, frame)) = self.next(left).await else {
                break;
            };
            if frame["event"] == "message:new"
                && frame["payload"]["conversationId"] == conv.as_str()
            {
                seqs.push((at, frame["payload"]["seq"].as_i64().unwrap()));
            } else {
                self.others.push((at, frame));
            }
        }
        seqs
    }

    /// Stops reading; answers the client.
    async fn finish(self) -> WsClient {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// One acknowledged send.
#[derive(Debug, Clone, Copy)]
struct Ack {
    sent: Instant,
    acked: Instant,
    seq: i64,
}

/// Sends one message every `every`, each after the last one's ack, until `stop`; panics on
/// a refused send.
async fn send_steadily(
    mut c: WsClient,
    conv: i64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let ack = c
            .request(
                "message:send",
                json!({"conversationId": conv.to_string(), "content": format!("m{n}")}),
            )
            .await
            .unwrap_or_else(|e| panic!("send {n} refused: {e}"));
        acks.push(Ack {
            sent,
            acked: Instant::now(),
            seq: ack["seq"].as_i64().unwrap(),
        });
        n += 1;
        actix_web::rt::time::sleep(every.saturating_sub(sent.elapsed())).await;
    }
    c.close().await;
    acks
}

/// Whether `seqs` only ever goes up (no reorder, no duplicate).
fn strictly_increasing(seqs: &[i64]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

#[actix_web::test]
async fn redis_stopped_and_restarted_under_load_loses_nothing_acknowledged() {
    let mut redis = Redis::start().await;
    let space = RedisSpace::on(&redis.url());
    let a = TestServer::start_with(|c| space.join(c, "a")).await;
    let b = a.node(|c| space.join(c, "b")).await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    let sender = a.create_user("Sam", "sam@example.com", None, &[]);
    let reader = a.create_user("Rita", "rita@example.com", None, &[]);
    let member = a.create_user("Mo", "mo@example.com", None, &[]);
    let conv = group(&a, sender, &[reader, member]);

    // The reader on node b; the sender's second device and another member on node a.
    let mut taps = Vec::new();
    for (node, user) in [(&b, reader), (&a, sender), (&a, member)] {
        let mut c = WsClient::connect(node, &node.token_for(user)).await;
        c.request("ping", json!({})).await.unwrap();
        taps.push(Tap::new(c));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sending = actix_web::rt::spawn(send_steadily(
        WsClient::connect(&a, &a.token_for(sender)).await,
        conv,
        Duration::from_millis(20),
        Arc::clone(&stop),
    ));
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;

    // Redis dies: both nodes notice, sends go on being acknowledged.
    redis.kill();
    let killed = Instant::now();
    let down_a = wait_for_redis(&a, "down", Duration::from_secs(5)).await;
    let down_b = wait_for_redis(&b, "down", Duration::from_secs(5)).await;
    actix_web::rt::time::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed())).await;

    // Redis comes back (empty): both nodes reconnect by themselves.
    redis.restart().await;
    let restarted = Instant::now();
    let up_a = wait_for_redis(&a, "up", Duration::from_secs(10)).await;
    let up_b = wait_for_redis(&b, "up", Duration::from_secs(10)).await;
    let up = up_a.max(up_b);
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let acks = sending.await.unwrap();

    // Every send was acknowledged, also while Redis was away, each within a bound.
    let seqs: Vec<i64> = acks.iter().map(|a| a.seq).collect();
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<i64>>(),
        "one sender: seqs 1.."
    );
    let while_down = acks
        .iter()
        .filter(|a| a.sent > killed && a.acked < restarted)
        .count();
    assert!(
        while_down >= 20,
        "only {while_down} sends acknowledged in the {:?} Redis was away",
        restarted - killed
    );
    let slowest = acks.iter().map(|a| a.acked - a.sent).max().unwrap();
    assert!(slowest < Duration::from_secs(2), "an ack took {slowest:?}");
    // ... and is stored.
    let stored: HashSet<i64> = stored_seqs(&a, conv).into_iter().collect();
    let lost: Vec<i64> = seqs
        .iter()
        .copied()
        .filter(|s| !stored.contains(s))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");

    // Node a's own sessions got every message live, in order, Redis or not.
    let mut taps = taps.into_iter();
    let mut reader_tap = taps.next().unwrap();
    for (name, mut tap) in [
        ("sender's second device", taps.next().unwrap()),
        ("member", taps.next().unwrap()),
    ] {
        let got: Vec<i64> = tap
            .messages_until(conv, last, Duration::from_secs(10))
            .await
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(got, seqs, "{name} on node a");
        tap.finish().await;
    }

    // The reader on node b: in order, without duplicates, and live again after Redis came back.
    let received = reader_tap
        .messages_until(conv, last, Duration::from_secs(10))
        .await;
    let got: Vec<i64> = received.iter().map(|(_, s)| *s).collect();
    assert!(
        strictly_increasing(&got),
        "reader on node b saw a seq out of order or twice: {got:?}"
    );
    assert_eq!(got.last(), Some(&last), "reader got the last message");
    let arrival = |seq: i64| received.iter().find(|(_, s)| *s == seq).map(|(t, _)| *t);
    let after_recovery: Vec<&Ack> = acks.iter().filter(|a| a.sent > up).collect();
    let live_after: Vec<Duration> = after_recovery
        .iter()
        .filter_map(|ack| Some(arrival(ack.seq)?.saturating_duration_since(ack.acked)))
        .collect();
    assert!(
        live_after.iter().any(|d| *d < Duration::from_millis(500)),
        "delivery to node b did not resume: {} sends after recovery, delays {live_after:?}",
        after_recovery.len()
    );
    let last_delay = arrival(last)
        .unwrap()
        .saturating_duration_since(acks.last().unwrap().acked);
    assert!(
        last_delay < Duration::from_secs(2),
        "the last message reached node b {last_delay:?} after its ack"
    );
    let complete = got == seqs;
    let outage: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.acked > killed && a.acked < restarted)
        .collect();
    let outage_first_arrival = outage
        .iter()
        .filter_map(|a| arrival(a.seq))
        .min()
        .map(|t| t.saturating_duration_since(restarted));

    // `sync` gives the reader every acknowledged message.
    let mut rc = reader_tap.finish().await;
    let out = rc
        .request(
            "sync",
            json!({"conversations": [{"conversationId": conv.to_string(), "seq": 0}]}),
        )
        .await
        .unwrap();
    let synced: Vec<i64> = out["conversations"][0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(synced, seqs, "sync answers every acknowledged message");

    // Publishes were dropped (and counted) while Redis was away.
    let dropped = a.metric("switchboard_cluster_dropped_total").await;
    assert!(dropped > 0, "node a dropped nothing while Redis was away");
    let gap_fills = b.metric("switchboard_cluster_gap_fills_total").await;
    eprintln!(
        "redis fault: {} acks ({while_down} while Redis was down, slowest ack {slowest:?}); \
         /health down {:?} (a) {:?} (b) after the kill, up {:?} (a) {:?} (b) after the restart; \
         reader on b got {} of {last} seqs ({}); the first outage seq reached it \
         {outage_first_arrival:?} after the restart, the last seq {last_delay:?} after its ack; \
         node a dropped {dropped} publishes, node b read {gap_fills} seqs from the database",
        acks.len(),
        down_a - killed,
        down_b - killed,
        up_a - restarted,
        up_b - restarted,
        got.len(),
        if complete {
            "all of them: the outage's through the gap fill after recovery"
        } else {
            "only part of them"
        },
    );
}

/// The server binary as a cluster node in a process of its own; killed when dropped.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl NodeProcess {
    /// Starts `switchboard serve` as node `node` of `space` on `db_url`; waits until it is in
    /// the cluster.
    async fn start(db_url: &str, space: &RedisSpace, node: &str) -> Self {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!(
            "sb-cluster-faults-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("JWT_SECRET", SECRET)
            .env("BIND", addr.to_string())
            .env("MESSAGE_RATE_PER_MIN", "1000000")
            .env("MESSAGE_BURST", "100000")
            .env("FRAME_RATE_PER_SEC", "100000")
            .env("FRAME_BURST", "100000")
            .env("REDIS_URL", &space.url)
            .env("REDIS_PREFIX", &space.prefix)
            .env("NODE_ID", node)
            .env("NODE_HEARTBEAT_MS", "200")
            .env("NODE_TTL_MS", "1500")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the switchboard binary");
        let node = Self { child, addr, log };
        let client = awc::Client::default();
        let started = Instant::now();
        loop {
            if let Ok(mut res) = client.get(format!("http://{addr}/health")).send().await {
                let body: Value = res.json().await.unwrap_or_default();
                if body["cluster"]["redis"] == "up" {
                    return node;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "node did not join the cluster:\n{}",
                node.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no leaving the cluster.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends messages with up to `window` unanswered until the socket goes away; answers the seqs
/// acknowledged.
async fn pump(mut c: WsClient, conv: i64, tag: usize, window: u64) -> Vec<i64> {
    let mut next = 0u64;
    let mut outstanding = 0u64;
    let mut acked = Vec::new();
    loop {
        while outstanding < window {
            let frame = json!({
                "event": "message:send",
                "id": next,
                "payload": {"conversationId": conv.to_string(), "content": format!("p{tag}-{next}")},
            });
            if !c.try_send_text(frame.to_string()).await {
                return acked;
            }
            next += 1;
            outstanding += 1;
        }
        let Some(frame) = c.next_frame(Duration::from_secs(20)).await else {
            return acked;
        };
        match frame["event"].as_str() {
            Some("ack") => {
                outstanding -= 1;
                acked.push(frame["payload"]["seq"].as_i64().unwrap());
            }
            Some("error") if frame["id"].is_number() => panic!("send refused: {frame}"),
            _ => {}
        }
    }
}

#[actix_web::test]
async fn a_killed_node_s_clients_reconnect_elsewhere_and_lose_nothing_acknowledged() {
    let space = RedisSpace::new();
    let a = TestServer::start_with(|c| space.join(c, "a")).await;
    let mut b = NodeProcess::start(&a.db.url, &space, "b").await;
    a.wait_for_cluster(2).await;
    let watcher = a.create_user("Wes", "wes@example.com", None, &[]);
    let senders: Vec<i64> = (0..3)
        .map(|i| a.create_user(&format!("S{i}"), &format!("s{i}@example.com"), None, &[]))
        .collect();
    let conv = group(&a, watcher, &senders);
    // The watcher on node a watches the senders' presence (answered offline: not connected yet).
    let mut w = WsClient::connect(&a, &a.token_for(watcher)).await;
    let ids: Vec<String> = senders.iter().map(ToString::to_string).collect();
    let ack = w
        .request("presence:subscribe", json!({ "userIds": ids }))
        .await
        .unwrap();
    assert!(
        ack["presence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["online"] == false),
        "{ack}"
    );
    let mut tap = Tap::new(w);

    // The senders connect to node b; the watcher on node a hears them come online.
    let mut clients = Vec::new();
    for s in &senders {
        let mut c = WsClient::try_connect(b.addr, &format!("/ws?token={}", a.token_for(*s)))
            .await
            .unwrap();
        c.request("ping", json!({})).await.unwrap();
        clients.push(c);
    }
    let presence_change = |frame: &Value, online: bool| -> Option<String> {
        (frame["event"] == "presence" && frame["payload"]["online"] == online)
            .then(|| {
                frame["payload"]["userId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .filter(|u| ids.contains(u))
    };
    let mut online = HashSet::new();
    let mut watched: Vec<(Instant, i64)> = Vec::new();
    while online.len() < senders.len() {
        let (at, frame) = tap.next(Duration::from_secs(10)).await.unwrap_or_else(|| {
            panic!(
                "online: only {online:?}; other frames {:?}\n{}",
                tap.others,
                b.log_text()
            )
        });
        if frame["event"] == "message:new" {
            watched.push((at, frame["payload"]["seq"].as_i64().unwrap()));
        } else if let Some(user) = presence_change(&frame, true) {
            online.insert(user);
        } else {
            tap.others.push((at, frame));
        }
    }

    // Load through node b, then node b is killed in the middle of it.
    let pumps: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| actix_web::rt::spawn(pump(c, conv, i, 8)))
        .collect();
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    b.kill();
    let killed = Instant::now();
    let mut acked: Vec<Vec<i64>> = Vec::new();
    for p in pumps {
        acked.push(p.await.unwrap());
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total >= 30, "only {total} messages acknowledged under load");

    // The watcher hears every one of node b's users go offline once its heartbeat expired.
    let mut offline: Vec<(String, Duration)> = Vec::new();
    while offline.len() < senders.len() {
        let left = Duration::from_secs(4).saturating_sub(killed.elapsed());
        let Some((at, frame)) = tap.next(left).await else {
            panic!(
                "offline within 4 s of the kill: only {offline:?}\n{:?}",
                tap.others
            );
        };
        if frame["event"] == "message:new" {
            watched.push((at, frame["payload"]["seq"].as_i64().unwrap()));
        } else if let Some(user) = presence_change(&frame, false) {
            offline.push((user, at - killed));
        } else {
            tap.others.push((at, frame));
        }
    }
    let users: HashSet<&String> = offline.iter().map(|(u, _)| u).collect();
    assert_eq!(
        users.len(),
        senders.len(),
        "each user offline once: {offline:?}"
    );
    a.wait_for_cluster(1).await;
    assert_eq!(a.metric("switchboard_cluster_nodes_reaped_total").await, 1);

    // Node b's clients reconnect to node a and sync: everything they had acknowledged is there.
    let mut back = Vec::new();
    for (s, mine) in senders.iter().zip(&acked) {
        let mut c = WsClient::connect(&a, &a.token_for(*s)).await;
        let out = c
            .request(
                "sync",
                json!({"conversations": [{"conversationId": conv.to_string(), "seq": 0}]}),
            )
            .await
            .unwrap();
        let synced: HashSet<i64> = out["conversations"][0]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        let lost: Vec<&i64> = mine.iter().filter(|s| !synced.contains(s)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged on node b, missing after sync: {lost:?}"
        );
        back.push(c);
    }
    let stored = stored_seqs(&a, conv);
    // A message sent after the failover, through node a.
    let ack = back[0]
        .request(
            "message:send",
            json!({"conversationId": conv.to_string(), "content": "after failover"}),
        )
        .await
        .unwrap();
    let last = ack["seq"].as_i64().unwrap();
    assert_eq!(last, stored.last().copied().unwrap_or(0) + 1);

    // The watcher's stream: no seq out of order or twice; every stored seq, by the one sent
    // after the failover at the latest.
    watched.extend(
        tap.messages_until(conv, last, Duration::from_secs(10))
            .await,
    );
    let seen: Vec<i64> = watched.iter().map(|(_, s)| *s).collect();
    assert!(
        strictly_increasing(&seen),
        "watcher saw a seq out of order or twice: {seen:?}"
    );
    let before_kill = watched.iter().filter(|(t, _)| *t < killed).count();
    assert_eq!(
        seen,
        (1..=last).collect::<Vec<i64>>(),
        "watcher sees every message"
    );
    tap.finish().await;
    eprintln!(
        "node kill: {total} acks through node b ({:?} per sender), {} stored, watcher saw \
         {before_kill} before the kill and all {last} in the end; offline after {:?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>(),
        stored.len(),
        offline.iter().map(|(_, d)| *d).collect::<Vec<_>>()
    );
}

/// A TCP relay between one node and Redis: `cut` drops its connections and refuses new ones
/// (the node cannot reach Redis, which keeps its data); `restore` lets them through again.
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<actix_web::rt::task::JoinHandle<()>>>>,
}

impl Relay {
    /// A relay to the Redis of `space`.
    async fn to(space: &RedisSpace) -> Self {
        let upstream = space
            .url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let listener = AsyncListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let pipes: Arc<Mutex<Vec<actix_web::rt::task::JoinHandle<()>>>> = Arc::default();
        let (d, p) = (Arc::clone(&down), Arc::clone(&pipes));
        actix_web::rt::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let pipe = actix_web::rt::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                p.lock().unwrap().push(pipe);
            }
        });
        Self { addr, down, pipes }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Whether `user` is online (and on how many devices) as `c`'s node answers
/// `presence:subscribe`.
async fn presence_of(c: &mut WsClient, user: i64) -> (bool, u64) {
    let ack = c
        .request("presence:subscribe", json!({"userIds": [user.to_string()]}))
        .await
        .unwrap();
    let p = &ack["presence"][0];
    assert_eq!(p["userId"], user.to_string(), "{ack}");
    (
        p["online"].as_bool().unwrap(),
        p["devices"].as_u64().unwrap_or(0),
    )
}

#[actix_web::test]
async fn presence_changes_while_a_node_cannot_reach_redis_are_right_everywhere_once_it_can() {
    let space = RedisSpace::new();
    let relay = Relay::to(&space).await;
    // The default NODE_TTL_MS (10 s): a short cut does not make node a dead to the others.
    let ttl = Duration::from_secs(10);
    let a = TestServer::start_with(|c| {
        space.join(c, "a");
        c.redis_url = switchboard::config::Secret::new(relay.url());
        c.node_ttl = ttl;
    })
    .await;
    let b = a
        .node(|c| {
            space.join(c, "b");
            c.node_ttl = ttl;
        })
        .await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    let wes = a.create_user("Wes", "wes@example.com", None, &[]);
    let xena = a.create_user("Xena", "xena@example.com", None, &[]);
    let yann = a.create_user("Yann", "yann@example.com", None, &[]);
    group(&a, wes, &[xena, yann]);
    let mut w = WsClient::connect(&b, &b.token_for(wes)).await;
    assert_eq!(presence_of(&mut w, xena).await, (false, 0));
    assert_eq!(presence_of(&mut w, yann).await, (false, 0));
    let mut x = WsClient::connect(&a, &a.token_for(xena)).await;
    x.request("ping", json!({})).await.unwrap();
    let started = Instant::now();
    while presence_of(&mut w, xena).await != (true, 1) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node b does not see Xena online"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    w.buffered_clear();

    // Node a loses Redis for a moment; meanwhile Xena leaves and Yann arrives, both on node a.
    relay.cut();
    let cut = Instant::now();
    wait_for_redis(&a, "down", Duration::from_secs(5)).await;
    x.close().await;
    let mut y = WsClient::connect(&a, &a.token_for(yann)).await;
    y.request("ping", json!({})).await.unwrap();
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    relay.restore();
    let restored = Instant::now();
    wait_for_redis(&a, "up", Duration::from_secs(10)).await;
    let back = Instant::now();
    // Ten heartbeats for whatever node a does once it reaches Redis again.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cut.elapsed() < ttl,
        "node a was away longer than NODE_TTL_MS"
    );
    assert_eq!(b.wait_for_cluster(2).await["cluster"]["nodes"], 2);

    // Node a itself knows: Xena offline, Yann online.
    let mut on_a = WsClient::connect(&a, &a.token_for(wes)).await;
    let xena_on_a = presence_of(&mut on_a, xena).await;
    let yann_on_a = presence_of(&mut on_a, yann).await;
    // So must node b, which heard neither change while node a could not publish.
    let xena_on_b = presence_of(&mut w, xena).await;
    let yann_on_b = presence_of(&mut w, yann).await;
    let mut heard: Vec<Value> = w.take_buffered("presence");
    while let Some(p) = w.maybe_event("presence", Duration::from_millis(300)).await {
        heard.push(p);
    }
    let hash = |user: i64| {
        space
            .command(&["HGETALL", &format!("{}:presence:{user}", space.prefix)])
            .unwrap()
            .replace("\r\n", " ")
    };
    eprintln!(
        "presence after a {:?} cut (node a up again {:?} after the restore): node a says \
         Xena {xena_on_a:?} Yann {yann_on_a:?}; node b says Xena {xena_on_b:?} Yann \
         {yann_on_b:?}; Wes on node b heard {heard:?}; in Redis Xena's presence hash is \
         [{}], Yann's [{}]",
        restored - cut,
        back - restored,
        hash(xena),
        hash(yann),
    );
    assert_eq!(
        (xena_on_a, yann_on_a),
        ((false, 0), (true, 1)),
        "node a: Xena left and Yann came while it could not reach Redis"
    );
    assert_eq!(
        (xena_on_b, yann_on_b),
        ((false, 0), (true, 1)),
        "node b: Xena left and Yann came on node a while it could not reach Redis"
    );
}

#[actix_web::test]
async fn a_node_reaped_while_it_could_not_reach_redis_announces_its_users_online_again() {
    let space = RedisSpace::new();
    let relay = Relay::to(&space).await;
    let a = TestServer::start_with(|c| {
        space.join(c, "a");
        c.redis_url = switchboard::config::Secret::new(relay.url());
    })
    .await;
    let b = a.node(|c| space.join(c, "b")).await;
    a.wait_for_cluster(2).await;
    b.wait_for_cluster(2).await;
    let wes = a.create_user("Wes", "wes@example.com", None, &[]);
    let xena = a.create_user("Xena", "xena@example.com", None, &[]);
    group(&a, wes, &[xena]);
    let mut w = WsClient::connect(&b, &b.token_for(wes)).await;
    assert_eq!(presence_of(&mut w, xena).await, (false, 0));
    let mut x = WsClient::connect(&a, &a.token_for(xena)).await;
    x.request("ping", json!({})).await.unwrap();
    let started = Instant::now();
    while presence_of(&mut w, xena).await != (true, 1) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node b does not see Xena online"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    w.buffered_clear();

    // Node a loses Redis for longer than NODE_TTL_MS: node b takes it for dead and Xena offline.
    relay.cut();
    let cut = Instant::now();
    // (Her online event may still come first: the answer above read Redis, not the bus.)
    loop {
        let left = Duration::from_secs(4).saturating_sub(cut.elapsed());
        let p = w
            .maybe_event("presence", left)
            .await
            .expect("Xena offline once node a's heartbeat expired");
        assert_eq!(p["userId"], xena.to_string(), "{p}");
        if p["online"] == false {
            break;
        }
    }
    let reaped = cut.elapsed();
    relay.restore();
    let restored = Instant::now();
    wait_for_redis(&a, "up", Duration::from_secs(10)).await;
    b.wait_for_cluster(2).await;
    let back = restored.elapsed();

    // Node a is back with Xena still connected to it: node b's sessions hear her online again.
    let again = w.maybe_event("presence", Duration::from_secs(10)).await;
    let answered = presence_of(&mut w, xena).await;
    let dropped = a.metric("switchboard_cluster_dropped_total").await;
    eprintln!(
        "node a reaped {reaped:?} after the cut, back in the cluster {back:?} after the restore; \
         Wes on node b then heard {again:?}; presence:subscribe on node b answers Xena \
         {answered:?}; node a dropped {dropped} publishes"
    );
    let again = again.expect("Xena online again on node b once node a is back");
    assert_eq!(
        (again["userId"].as_str(), again["online"].as_bool()),
        (Some(xena.to_string().as_str()), Some(true))
    );
    x.request("ping", json!({})).await.unwrap();
}
