//! Faults around the database, over real sockets and a real PostgreSQL: a batch whose COMMIT
//! (or, for a batch written by one statement alone, whose statement) went through but whose
//! answer was lost still reaches every connected member once and in seq order; `sync` answers
//! are one consistent snapshot while other clients commit; a burst of closing sockets gets
//! every user's `last_seen_at` written through a small pool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestDb, TestServer, WsClient};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The simple-protocol `COMMIT` query as it travels to PostgreSQL: `Q`, length 11, text, NUL.
const COMMIT_QUERY: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// A statement only the message writer runs (its batch statements, which reserve seq numbers).
/// Each is a prepared statement: its text travels once per connection (in the Parse message),
/// and later batches name it in a Bind message (see [`Reserve`]).
const RESERVE_MARK: &[u8] = b"SET last_seq = c.last_seq";

/// Diesel's names of prepared statements start with this.
const STATEMENT_NAME: &[u8] = b"__diesel_stmt_";

/// Where one relayed connection's client runs the writer's reserve statements.
#[derive(Default)]
struct Reserve {
    /// `\0<name>\0`: each statement as a Bind message names it, once it was prepared.
    binds: Vec<Vec<u8>>,
}

impl Reserve {
    /// Whether `chunk` runs a reserve statement (its text, or a Bind of its prepared name);
    /// learns the name from a Parse of it.
    fn runs(&mut self, chunk: &[u8]) -> bool {
        if let Some(at) = chunk
            .windows(RESERVE_MARK.len())
            .position(|w| w == RESERVE_MARK)
        {
            let before = &chunk[..at];
            if let Some(start) = before
                .windows(STATEMENT_NAME.len())
                .rposition(|w| w == STATEMENT_NAME)
            {
                if let Some(len) = before[start..].iter().position(|b| *b == 0) {
                    let mut bind = vec![0];
                    bind.extend_from_slice(&before[start..start + len]);
                    bind.push(0);
                    self.binds.push(bind);
                }
            }
            return true;
        }
        self.binds.iter().any(|bind| contains(chunk, bind))
    }

    /// Whether `chunk` executes a reserve statement: binds its prepared name. The driver
    /// prepares a statement in a round trip of its own (a Parse carrying the text), which
    /// executes nothing.
    fn executes(&self, chunk: &[u8]) -> bool {
        !contains(chunk, RESERVE_MARK) && self.binds.iter().any(|bind| contains(chunk, bind))
    }
}

/// The writer's question whether a transaction committed.
const STATUS_QUERY: &[u8] = b"txid_status(";

/// A relay in front of PostgreSQL that, once armed, lets the next message batch's COMMIT (or,
/// armed for a statement, its next batch statement) reach the server, waits for the server's
/// answer and then drops the connection instead of passing the answer on: the transaction is
/// committed and the client never learns it. Patterns armed to follow it (the writer's status
/// question, its retry) then each cut the next connection that sends them, so the writer
/// cannot learn the outcome, or cannot retry either.
struct LossyRelay {
    addr: SocketAddr,
    trips: Trips,
}

/// The relay's switches and counters, shared by every connection.
#[derive(Clone, Default)]
struct Trips {
    armed: Arc<AtomicBool>,
    statement_armed: Arc<AtomicBool>,
    /// The transaction state each lost answer ended with (`I` idle: nothing left open).
    lost_states: Arc<Mutex<Vec<u8>>>,
    cuts: Arc<AtomicUsize>,
    then_cut: Arc<Mutex<Vec<&'static [u8]>>>,
    cutting: Arc<Mutex<Vec<&'static [u8]>>>,
    pattern_cuts: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl LossyRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trips = Trips::default();
        let shared = trips.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(pipe(client, upstream, shared.clone()));
                shared.pipes.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, trips }
    }

    /// Loses the answer to the next message batch's COMMIT.
    fn arm(&self) {
        self.trips.armed.store(true, Ordering::SeqCst);
    }

    /// Loses the answer to the next batch statement, which a batch of keyed drafts runs alone
    /// (as its own transaction, without `BEGIN` and `COMMIT`).
    fn arm_statement(&self) {
        self.trips.statement_armed.store(true, Ordering::SeqCst);
    }

    /// After the COMMIT answer is lost, cuts the next connection that sends `pattern`.
    fn then_cut(&self, pattern: &'static [u8]) {
        self.trips.then_cut.lock().unwrap().push(pattern);
    }

    /// PostgreSQL goes away: every connection is cut and new ones are refused.
    fn cut_all(&self) {
        self.trips.down.store(true, Ordering::SeqCst);
        for pipe in self.trips.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// PostgreSQL is reachable again.
    fn restore(&self) {
        self.trips.down.store(false, Ordering::SeqCst);
    }

    fn lost_states(&self) -> Vec<u8> {
        self.trips.lost_states.lock().unwrap().clone()
    }

    fn cuts(&self) -> usize {
        self.trips.cuts.load(Ordering::SeqCst)
    }

    fn pattern_cuts(&self) -> usize {
        self.trips.pattern_cuts.load(Ordering::SeqCst)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, trips: Trips) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = vec![0u8; 256 * 1024];
    let mut down = vec![0u8; 256 * 1024];
    let mut message_batch = false;
    let mut reserve = Reserve::default();
    loop {
        tokio::select! {
            n = cr.read(&mut up) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &up[..n];
                let reserves = reserve.runs(chunk);
                let cut = {
                    let mut active = trips.cutting.lock().unwrap();
                    let hit = active
                        .iter()
                        .position(|p| contains(chunk, p) || (*p == RESERVE_MARK && reserves));
                    hit.map(|i| active.remove(i)).is_some()
                };
                if cut {
                    trips.pattern_cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                message_batch |= reserves;
                let commit = contains(chunk, COMMIT_QUERY);
                if sw.write_all(chunk).await.is_err() {
                    return;
                }
                let lose = (reserve.executes(chunk)
                    && trips.statement_armed.swap(false, Ordering::SeqCst))
                    || (commit && message_batch && trips.armed.swap(false, Ordering::SeqCst));
                if lose {
                    // The client waits for this answer; let PostgreSQL finish it (up to its
                    // ReadyForQuery, sent once the statement or COMMIT is done) and drop both
                    // sides.
                    let state = swallow_answer(&mut sr, &mut down).await;
                    trips.lost_states.lock().unwrap().extend(state);
                    let next: Vec<&'static [u8]> = trips.then_cut.lock().unwrap().drain(..).collect();
                    trips.cutting.lock().unwrap().extend(next);
                    trips.cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if commit {
                    message_batch = false;
                }
            }
            n = sr.read(&mut down) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cw.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads PostgreSQL's answer up to the ReadyForQuery message that ends it (`Z`, length 5,
/// the transaction state) and answers that state.
async fn swallow_answer(server: &mut (impl AsyncReadExt + Unpin), buf: &mut [u8]) -> Option<u8> {
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match server.read(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        tail.extend_from_slice(&buf[..n]);
        let len = tail.len();
        if len >= 6 && tail[len - 6..len - 1] == *b"Z\0\0\0\x05" {
            return Some(tail[len - 1]);
        }
        tail.drain(..len.saturating_sub(6));
    }
}

/// `(address, user, database)` of a test database URL `postgres://user@host:port/db?...`.
fn upstream_of(url: &str) -> (SocketAddr, String, String) {
    let rest = url.split_once("://").unwrap().1;
    let (auth_host, db) = rest.split_once('/').unwrap();
    let db = db.split_once('?').map_or(db, |(d, _)| d);
    let host_port = auth_host.rsplit_once('@').map_or(auth_host, |(_, h)| h);
    let addr: SocketAddr = host_port.replace("localhost", "127.0.0.1").parse().unwrap();
    let user = auth_host.rsplit_once('@').map_or("postgres", |(u, _)| u);
    (addr, user.to_owned(), db.to_owned())
}

fn group(s: &TestServer, owner: i64, others: &[i64]) -> String {
    let mut conn = s.db.conn();
    switchboard::db::conversations::create_group(&mut conn, owner, "g", others, None)
        .unwrap()
        .id
        .to_string()
}

/// Collects `message:new` events of a conversation until one with seq `last` arrived; answers
/// their seqs in arrival order.
async fn seqs_until(client: &mut WsClient, conv: &str, last: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    loop {
        let event = client.expect_event("message:new").await;
        assert_eq!(event["conversationId"], conv, "{event}");
        let seq = event["seq"].as_i64().unwrap();
        seqs.push(seq);
        if seq == last {
            return seqs;
        }
        assert!(
            seq < last,
            "message:new past the last message sent: {seqs:?}"
        );
    }
}

#[actix_web::test]
async fn a_batch_whose_commit_answer_was_lost_reaches_every_member_once_in_seq_order() {
    let db = TestDb::migrated();
    let (upstream, user, dbname) = upstream_of(&db.url);
    let relay = LossyRelay::start(upstream).await;
    let relayed = format!("postgres://{user}@{}/{dbname}?sslmode=disable", relay.addr);
    let s = TestServer::start_on(db, |c| {
        c.database_url = switchboard::config::Secret::new(relayed);
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let conv = group(&s, alice, &[bob, carol]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut a2 = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let mut c = WsClient::connect(&s, &s.token_for(carol)).await;
    let send = |content: &str, key: &str| json!({"conversationId": conv, "content": content, "clientMessageId": key});

    let first = a
        .request("message:send", send("first", "k1"))
        .await
        .unwrap();

    // A keyed draft is written by its statement alone, as a transaction of its own. The
    // statement reaches PostgreSQL and commits; its answer never comes back. There is no
    // transaction id to ask about: the writer retries at once, and the retry finds the message
    // stored under its client message id.
    relay.arm_statement();
    let lost = a
        .request("message:send", send("answer lost", "k2"))
        .await
        .expect("the writer's retry finds the committed message and acks it");
    assert_eq!(relay.cuts(), 1, "the statement's answer was cut");
    assert_eq!(
        relay.lost_states(),
        b"I",
        "the statement ran outside BEGIN and COMMIT, committed when it ended"
    );
    assert_eq!(
        lost["seq"].as_i64().unwrap(),
        first["seq"].as_i64().unwrap() + 1
    );

    // Without a client message id a retry could not find the message: the writer learns from
    // the transaction's status that it committed.
    relay.arm();
    let unkeyed = a
        .request(
            "message:send",
            json!({"conversationId": conv, "content": "no key"}),
        )
        .await
        .expect("the committed batch is acknowledged");
    assert_eq!(relay.cuts(), 2, "the second COMMIT answer was cut");
    assert_eq!(
        relay.lost_states(),
        b"II",
        "the COMMIT closed its transaction"
    );
    assert_eq!(
        unkeyed["seq"].as_i64().unwrap(),
        lost["seq"].as_i64().unwrap() + 1
    );

    let third = a
        .request("message:send", send("third", "k3"))
        .await
        .unwrap();
    // A resend of the message whose answer was lost is only acknowledged again.
    let resent = a
        .request("message:send", send("answer lost", "k2"))
        .await
        .unwrap();
    assert_eq!(resent["id"], lost["id"]);
    assert_eq!(resent["seq"], lost["seq"]);
    let last = a.request("message:send", send("last", "k4")).await.unwrap();

    let expected: Vec<i64> = [&first, &lost, &unkeyed, &third, &last]
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    let last_seq = *expected.last().unwrap();
    for (name, client) in [
        ("alice's other device", &mut a2),
        ("bob", &mut b),
        ("carol", &mut c),
    ] {
        let got = seqs_until(client, &conv, last_seq).await;
        assert_eq!(got, expected, "{name} gets each message once, in seq order");
    }
    assert!(
        a.take_buffered("message:new").is_empty(),
        "the sending socket gets acks, not message:new"
    );

    let mut conn = s.db.conn();
    use switchboard::db::schema::messages;
    let stored: Vec<i64> = messages::table
        .select(messages::seq)
        .order(messages::seq)
        .load(&mut conn)
        .unwrap();
    assert_eq!(stored, expected, "each send stored once");
}

#[actix_web::test]
async fn a_failed_batch_that_committed_after_all_reaches_members_before_the_next_message() {
    let db = TestDb::migrated();
    let (upstream, user, dbname) = upstream_of(&db.url);
    let relay = LossyRelay::start(upstream).await;
    let relayed = format!("postgres://{user}@{}/{dbname}?sslmode=disable", relay.addr);
    let s = TestServer::start_on(db, |c| {
        c.database_url = switchboard::config::Secret::new(relayed);
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let conv = group(&s, alice, &[bob]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let send = |content: &str| json!({"conversationId": conv, "content": content});
    let first = a.request("message:send", send("first")).await.unwrap();

    // The COMMIT goes through but its answer is lost, the status question is cut and so is the
    // retry: the sender is told the send failed, yet the message is stored.
    relay.arm();
    relay.then_cut(STATUS_QUERY);
    relay.then_cut(RESERVE_MARK);
    let err = a
        .request("message:send", send("stored after all"))
        .await
        .expect_err("the writer could not learn the outcome");
    assert_eq!(err["code"], "unavailable", "{err}");
    assert_eq!((relay.cuts(), relay.pattern_cuts()), (1, 2));
    let stored_after_all = first["seq"].as_i64().unwrap() + 1;

    let next = a.request("message:send", send("next")).await.unwrap();
    assert_eq!(next["seq"].as_i64().unwrap(), stored_after_all + 1);
    assert_eq!(
        seqs_until(&mut b, &conv, next["seq"].as_i64().unwrap()).await,
        vec![
            first["seq"].as_i64().unwrap(),
            stored_after_all,
            next["seq"].as_i64().unwrap()
        ],
        "bob gets the stored message before the next one, each once"
    );
    // The sender learns that the send it was told failed is stored.
    assert_eq!(
        seqs_until(&mut a, &conv, stored_after_all).await,
        vec![stored_after_all]
    );
}

/// Reads frames until the answer to request `id`; no `message:new` may come meanwhile.
async fn answer_to(client: &mut WsClient, id: u64) -> Value {
    loop {
        let frame = client
            .next_frame(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("no answer to request {id}"));
        assert_ne!(frame["event"], "message:new", "{frame}");
        if frame["id"] == json!(id) {
            return frame;
        }
    }
}

#[actix_web::test]
async fn a_failed_batch_resent_in_part_before_new_messages_still_reaches_members_in_full() {
    let db = TestDb::migrated();
    let (upstream, user, dbname) = upstream_of(&db.url);
    let relay = LossyRelay::start(upstream).await;
    let relayed = format!("postgres://{user}@{}/{dbname}?sslmode=disable", relay.addr);
    // With more than one batch in flight the writer runs on the actix system, that is on this
    // test's thread (a writer with one is a thread of its own), so holding this thread holds it.
    let s = TestServer::start_on(db, |c| {
        c.database_url = switchboard::config::Secret::new(relayed);
        c.write_in_flight = 2;
    })
    .await;
    let alice = s.create_user("Alice", "alice@example.com", None, &[]);
    let bob = s.create_user("Bob", "bob@example.com", None, &[]);
    let carol = s.create_user("Carol", "carol@example.com", None, &[]);
    let conv = group(&s, alice, &[bob, carol]);
    let mut a = WsClient::connect(&s, &s.token_for(alice)).await;
    let mut b = WsClient::connect(&s, &s.token_for(bob)).await;
    let mut c = WsClient::connect(&s, &s.token_for(carol)).await;
    let send = |content: &str, key: &str| json!({"conversationId": conv, "content": content, "clientMessageId": key});
    let first = a
        .request("message:send", send("first", "a1"))
        .await
        .unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(seqs_until(&mut b, &conv, 1).await, vec![1]);

    // Alice's and then Bob's message make one batch: the writer runs on this thread (above),
    // which is held while both reach its queue. The batch (keyed drafts: one statement alone) commits,
    // its answer is lost, and so is the retry's batch statement: both are told the send failed.
    relay.arm_statement();
    relay.then_cut(RESERVE_MARK);
    let frame = |payload: Value| {
        json!({"event": "message:send", "payload": payload, "id": 100}).to_string()
    };
    a.send_text(frame(send("from alice", "a2"))).await;
    std::thread::sleep(Duration::from_millis(300));
    b.send_text(frame(send("from bob", "b1"))).await;
    std::thread::sleep(Duration::from_millis(300));
    for client in [&mut a, &mut b] {
        let answer = answer_to(client, 100).await;
        assert_eq!(answer["payload"]["code"], "unavailable", "{answer}");
    }
    assert_eq!((relay.cuts(), relay.pattern_cuts()), (1, 1));

    // Alice resends hers at once and goes on; Bob resends his only after that.
    let resent = a
        .request("message:send", send("from alice", "a2"))
        .await
        .unwrap();
    assert_eq!(resent["seq"], 2, "stored with the failed batch");
    let next = a.request("message:send", send("next", "a3")).await.unwrap();
    assert_eq!(next["seq"], 4);
    let bob_resent = b
        .request("message:send", send("from bob", "b1"))
        .await
        .unwrap();
    assert_eq!(bob_resent["seq"], 3, "stored with the failed batch");

    assert_eq!(
        seqs_until(&mut c, &conv, 4).await,
        vec![1, 2, 3, 4],
        "carol gets Bob's message too, in its place"
    );
    assert_eq!(
        seqs_until(&mut b, &conv, 4).await,
        vec![2, 3, 4],
        "bob learns that his send is stored"
    );
}

#[actix_web::test]
async fn sync_pages_are_gap_free_and_end_at_the_last_seq_they_report_while_others_commit() {
    let s = TestServer::start().await;
    let reader_id = s.create_user("Reader", "reader@example.com", None, &[]);
    let senders: Vec<i64> = (0..3)
        .map(|i| s.create_user(&format!("S{i}"), &format!("s{i}@example.com"), None, &[]))
        .collect();
    let conv = group(&s, reader_id, &senders);
    let mut reader = WsClient::connect(&s, &s.token_for(reader_id)).await;
    let mut clients = Vec::new();
    for id in &senders {
        clients.push(WsClient::connect(&s, &s.token_for(*id)).await);
    }
    const PER_SENDER: usize = 150;
    let done = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let sending = clients.iter_mut().enumerate().map(|(i, client)| {
        let (conv, done) = (conv.clone(), std::rc::Rc::clone(&done));
        async move {
            for n in 0..PER_SENDER {
                client
                    .request(
                        "message:send",
                        json!({"conversationId": conv, "content": format!("{i}-{n}"), "clientMessageId": format!("{i}-{n}")}),
                    )
                    .await
                    .unwrap();
            }
            done.set(done.get() + 1);
        }
    });
    let reading = {
        let (conv, done) = (conv.clone(), std::rc::Rc::clone(&done));
        async move {
            let mut pages = 0usize;
            let mut moving = 0usize;
            let mut after = 0i64;
            while done.get() < senders.len() || pages == 0 {
                let answer = reader
                    .request(
                        "sync",
                        json!({"conversations": [{"conversationId": conv, "seq": after}]}),
                    )
                    .await
                    .unwrap();
                let page = &answer["conversations"][0];
                let last_seq = page["lastSeq"].as_i64().unwrap();
                let seqs: Vec<i64> = page["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["seq"].as_i64().unwrap())
                    .collect();
                assert_eq!(
                    seqs,
                    (after + 1..=last_seq).collect::<Vec<_>>(),
                    "sync after {after} reporting lastSeq {last_seq}"
                );
                pages += 1;
                if last_seq > after {
                    moving += 1;
                }
                // Alternate between a long page from the start and a short one near the end.
                after = if pages.is_multiple_of(2) {
                    0
                } else {
                    (last_seq - 5).max(0)
                };
            }
            (pages, moving)
        }
    };
    let (_, (pages, moving)) =
        futures_util::future::join(futures_util::future::join_all(sending), reading).await;
    assert!(
        pages > 1 && moving > 1,
        "{pages} syncs, {moving} saw new messages"
    );

    let answer = s.running.state.engine.sync(
        reader_id,
        vec![serde_json::from_value(json!({"conversationId": conv})).unwrap()],
    );
    let answer: Value = answer.await.unwrap();
    let page = &answer["conversations"][0];
    assert_eq!(page["lastSeq"], json!(3 * PER_SENDER));
    assert_eq!(page["messages"].as_array().unwrap().len(), 3 * PER_SENDER);
}

#[actix_web::test]
async fn last_seen_is_written_for_every_user_when_hundreds_of_sockets_close_at_once() {
    const USERS: usize = 500;
    let s = TestServer::start_with(|c| {
        c.db_pool_size = 2;
        c.db_acquire_timeout = Duration::from_millis(100);
    })
    .await;
    s.db.exec(&format!(
        "INSERT INTO users (name, email) SELECT 'seen ' || g, 'seen-' || g || '@example.com' \
         FROM generate_series(1, {USERS}) AS g"
    ));
    use switchboard::db::schema::users;
    let mut conn = s.db.conn();
    let ids: Vec<i64> = users::table
        .filter(users::email.like("seen-%"))
        .select(users::id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(ids.len(), USERS);
    let mut sockets = Vec::with_capacity(USERS);
    for id in &ids {
        // The upgrade authenticates against the database; with a 100 ms wait for one of two
        // connections a busy machine may refuse one now and then.
        let path = format!("/ws?token={}", s.token_for(*id));
        let mut attempts = 0;
        let mut ws = loop {
            match WsClient::try_connect(s.addr(), &path).await {
                Ok(ws) => break ws,
                Err(_) if attempts < 5 => attempts += 1,
                Err(e) => panic!("user {id} cannot connect: {e}"),
            }
        };
        // A command round trip: the session is registered before it closes.
        ws.request("ping", json!({})).await.unwrap();
        sockets.push(ws);
    }
    drop(sockets);

    let written = |conn: &mut PgConnection| -> i64 {
        users::table
            .filter(users::id.eq_any(&ids))
            .filter(users::last_seen_at.is_not_null())
            .count()
            .get_result(conn)
            .unwrap()
    };
    let started = Instant::now();
    while written(&mut conn) < USERS as i64 && started.elapsed() < Duration::from_secs(60) {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        written(&mut conn),
        USERS as i64,
        "every user's last_seen_at"
    );
    assert_eq!(
        s.running.state.engine.metrics.last_seen_failures(),
        0,
        "no write failed"
    );
}

#[actix_web::test]
async fn last_seen_writes_that_fail_while_the_database_is_away_are_counted_and_retried() {
    const USERS: usize = 20;
    let db = TestDb::migrated();
    let (upstream, user, dbname) = upstream_of(&db.url);
    let relay = LossyRelay::start(upstream).await;
    let relayed = format!("postgres://{user}@{}/{dbname}?sslmode=disable", relay.addr);
    let s = TestServer::start_on(db, |c| {
        c.database_url = switchboard::config::Secret::new(relayed);
        c.db_acquire_timeout = Duration::from_millis(300);
        c.last_seen_flush = Duration::from_millis(100);
    })
    .await;
    let ids: Vec<i64> = (0..USERS)
        .map(|i| {
            s.create_user(
                &format!("U{i}"),
                &format!("away-{i}@example.com"),
                None,
                &[],
            )
        })
        .collect();
    let mut sockets = Vec::with_capacity(USERS);
    for id in &ids {
        let mut ws = WsClient::connect(&s, &s.token_for(*id)).await;
        ws.request("ping", json!({})).await.unwrap();
        sockets.push(ws);
    }
    let metrics = Arc::clone(&s.running.state.engine.metrics);

    relay.cut_all();
    drop(sockets);
    let started = Instant::now();
    while metrics.last_seen_failures() < 2 && started.elapsed() < Duration::from_secs(30) {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.last_seen_failures() >= 2,
        "failed writes are counted, and tried again"
    );
    use switchboard::db::schema::users;
    let mut conn = s.db.conn();
    let written = |conn: &mut PgConnection| -> i64 {
        users::table
            .filter(users::id.eq_any(&ids))
            .filter(users::last_seen_at.is_not_null())
            .count()
            .get_result(conn)
            .unwrap()
    };
    assert_eq!(
        written(&mut conn),
        0,
        "nothing reached the database while it was away"
    );

    relay.restore();
    let started = Instant::now();
    while written(&mut conn) < USERS as i64 && started.elapsed() < Duration::from_secs(30) {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        written(&mut conn),
        USERS as i64,
        "the buffered times are written once the database is back"
    );
}
