//! Socket.IO connection state recovery (the protocol of Socket.IO ≥ 4.6 clients): the CONNECT
//! answer carries a private session id (`pid`), every event the session receives carries an
//! offset as its last argument, and a client that reconnects sends both back in its CONNECT
//! auth payload. A session whose `{pid, offset}` is valid comes back with the same socket id,
//! its dialect state (left conversations) and every durable event it missed, in order, before
//! new ones; the client sees `socket.recovered`.
//!
//! Nothing here copies events. A live session keeps cursors: where its client stood in each
//! conversation when it connected (or when a pong confirmed it), plus, for the events sent since
//! the last confirmation, which offset stood for which place. When its transport drops, those
//! cursors are kept in PostgreSQL (`socketio_sessions`), so a recovery works after a restart
//! and on another node; the missed events are read back from the messages and members tables.

use crate::auth::{Auth, Identity};
use crate::db::messages::Message;
use crate::db::recovery::{self as store, Kept, Standing};
use crate::db::Db;
use crate::error::AppResult;
use crate::realtime::events;
use crate::realtime::protocol::{Position, ServerEvent};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Dropped sessions waiting to be written, at most (past it a dropped session is not kept: its
/// client reconnects as a fresh session).
const KEEP_QUEUE: usize = 8192;
/// Dropped sessions written in one transaction, at most.
const KEEP_BATCH: usize = 256;
/// How often expired kept sessions are removed.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How long a recovered session drops live events that its replay already carried (a live
/// event committed before the replay's snapshot arrives within the fan-out delay).
const REPLAY_OVERLAP: Duration = Duration::from_secs(30);

/// Whether the client of a handshake reads offsets appended to events. Socket.IO's JavaScript
/// client (Electron, browsers, Node) records them; the Dart client of Flutter apps and the
/// Python client hand an extra argument to the app's handlers instead, so they get neither
/// private ids nor offsets. `?recovery=0` in the handshake turns them off for any client.
pub(crate) fn offsets_welcome(req: &actix_web::HttpRequest) -> bool {
    let off = req
        .query_string()
        .split('&')
        .any(|kv| kv == "recovery=0" || kv == "recovery=false");
    if off {
        return false;
    }
    let agent = req
        .headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    !(agent.contains("dart") || agent.contains("python"))
}

/// A fresh private session id and its hash.
pub(crate) fn new_pid() -> AppResult<String> {
    crate::auth::tokens::random_id()
}

/// The hash a private session id is kept under.
pub(crate) fn pid_hash(pid: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, pid.as_bytes())
        .as_ref()
        .to_vec()
}

/// The Socket.IO arguments of an event (`["name",payload]`) with an offset appended.
pub(crate) fn with_offset(args: &str, offset: u64) -> String {
    let body = args.strip_suffix(']').unwrap_or(args);
    let sep = if body.len() > 1 { "," } else { "" };
    format!("{body}{sep}\"{offset}\"]")
}

/// A conversation's cursor: the highest seq and change number the client holds.
type Cursor = (i64, i64);

/// One live session's place in its conversations, and the offsets it handed out.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The private session id.
    pub pid: String,
    /// The Socket.IO socket id.
    pub sid: String,
    /// When the session (first) connected.
    pub connected_at: DateTime<Utc>,
    /// Whether a dropped transport keeps the session (not after a client's own DISCONNECT or
    /// a server kick).
    pub recoverable: bool,
    /// The next offset (offsets start at 1; 0 stands for "none received").
    next: u64,
    /// What the client holds for sure, by conversation.
    base: HashMap<i64, Cursor>,
    /// Offsets sent and not yet confirmed, with the places they stand for.
    log: VecDeque<(u64, Position)>,
    /// Offsets below this cannot be told apart any more (the log overflowed).
    floor: u64,
    /// Most entries in `log`.
    cap: usize,
    /// After a recovery, for a while: the highest change replayed per conversation.
    replayed: Option<(Instant, HashMap<i64, i64>)>,
    /// Device session and id type of the identity (to check it again without a token).
    session_id: Option<String>,
    numeric_id: bool,
    /// The session actor's key (a call waits for this device when it drops).
    pub key: u64,
    /// When each offset not yet confirmed went out (milliseconds), at most [`TIMES_KEPT`]:
    /// a call that ended after the last event the client received is one it did not hear end.
    times: VecDeque<(u64, i64)>,
    /// When the last confirmed (or dropped from `times`) offset went out, and that offset.
    settled: (u64, i64),
    /// Calls whose end went out, with its offset (the last [`TIMES_KEPT`]).
    ends: VecDeque<(u64, Arc<str>)>,
}

/// How far before the last event the client received a recovery looks for calls that ended
/// (a call's end time is kept to the second).
const CALL_END_SLACK_SECS: i64 = 2;

/// Send times a session remembers, at most (past it, a recovery counts from the oldest).
const TIMES_KEPT: usize = 256;

impl Tracker {
    /// A tracker for a new session.
    pub(crate) fn new(pid: String, sid: String, identity: &Identity, cap: usize) -> Self {
        Self::for_session(
            pid,
            sid,
            (identity.session_id.clone(), identity.numeric_id),
            cap,
        )
    }

    /// A tracker for a new session of a device session with ids of a type.
    fn for_session(
        pid: String,
        sid: String,
        (session_id, numeric_id): (Option<String>, bool),
        cap: usize,
    ) -> Self {
        Self {
            pid,
            sid,
            connected_at: Utc::now(),
            recoverable: true,
            next: 1,
            base: HashMap::new(),
            log: VecDeque::new(),
            floor: 0,
            cap: cap.max(1),
            replayed: None,
            session_id,
            numeric_id,
            key: 0,
            times: VecDeque::new(),
            settled: (0, Utc::now().timestamp_millis()),
            ends: VecDeque::new(),
        }
    }

    /// The session's starting point (where each conversation stood when it connected). What
    /// confirmed events already taught is kept.
    pub(crate) fn start_from(&mut self, positions: Vec<(i64, i64, i64)>) {
        for (conversation, seq, change) in positions {
            self.base.entry(conversation).or_insert((seq, change));
        }
    }

    /// Hands out the next offset for an event: its place, if durable, and the call it tells
    /// the end of, if any.
    pub(crate) fn stamp_event(&mut self, ev: &ServerEvent) -> u64 {
        let offset = self.stamp(ev.position());
        if let Some(call) = &ev.call_end {
            self.ends.push_back((offset, Arc::clone(call)));
            if self.ends.len() > TIMES_KEPT {
                self.ends.pop_front();
            }
        }
        offset
    }

    /// Hands out the next offset, for an event standing at `position` (if durable).
    pub(crate) fn stamp(&mut self, position: Option<Position>) -> u64 {
        let offset = self.next;
        self.next += 1;
        self.times
            .push_back((offset, Utc::now().timestamp_millis()));
        if self.times.len() > TIMES_KEPT {
            if let Some(oldest) = self.times.pop_front() {
                self.settled = oldest;
            }
        }
        if let Some(p) = position {
            match self.log.back_mut() {
                // One canonical event the dialect sends as several: it counts as received
                // with the last of them.
                Some((last, q)) if *q == p => *last = offset,
                _ => self.log_entry(offset, p),
            }
        }
        offset
    }

    /// A message the session sent itself (its fan-out skipped it; the client holds it from
    /// its acknowledgement): known to the client as of the last offset handed out.
    pub(crate) fn own(&mut self, position: Position) {
        self.log_entry(self.next - 1, position);
    }

    /// Logs a place at an offset; past the cap the oldest entry is folded in unconfirmed, and
    /// offsets below it can no longer be placed.
    fn log_entry(&mut self, offset: u64, position: Position) {
        self.log.push_back((offset, position));
        if self.log.len() > self.cap {
            if let Some((evicted, p)) = self.log.pop_front() {
                self.fold(p);
                self.floor = evicted;
            }
        }
    }

    /// The client received every offset up to `upto` (a pong answered a ping sent after it).
    pub(crate) fn confirm(&mut self, upto: u64) {
        while let Some((offset, at)) = self.times.front().copied() {
            if offset > upto {
                break;
            }
            self.times.pop_front();
            self.settled = (offset, at);
        }
        while let Some((offset, p)) = self.log.front().copied() {
            if offset > upto {
                break;
            }
            self.log.pop_front();
            self.fold(p);
        }
    }

    fn fold(&mut self, p: Position) {
        let entry = self.base.entry(p.conversation).or_insert((0, 0));
        entry.0 = entry.0.max(p.seq);
        entry.1 = entry.1.max(p.change);
    }

    /// Whether a live event is one the recovery replay already carried.
    pub(crate) fn replayed(&mut self, position: Option<Position>) -> bool {
        let Some((since, high)) = &self.replayed else {
            return false;
        };
        if since.elapsed() > REPLAY_OVERLAP {
            self.replayed = None;
            return false;
        }
        position.is_some_and(|p| high.get(&p.conversation).is_some_and(|h| p.change <= *h))
    }

    /// What is kept when the transport drops (`None`: nothing to keep).
    pub(crate) fn kept(
        &self,
        user_id: i64,
        dialect: &str,
        left: Vec<String>,
        window: Duration,
    ) -> Option<Kept> {
        if !self.recoverable || window.is_zero() {
            return None;
        }
        let now = Utc::now();
        let state = State {
            next: self.next,
            floor: self.floor,
            base: self.base.iter().map(|(c, (s, ch))| (*c, *s, *ch)).collect(),
            log: self
                .log
                .iter()
                .map(|(o, p)| (*o, p.conversation, p.seq, p.change))
                .collect(),
            left,
            session: self.session_id.clone(),
            numeric: self.numeric_id,
            key: self.key,
            settled: self.settled,
            times: self.times.iter().copied().collect(),
            ends: self.ends.iter().map(|(o, c)| (*o, c.to_string())).collect(),
        };
        Some(Kept {
            pid_hash: pid_hash(&self.pid),
            user_id,
            sid: self.sid.clone(),
            dialect: dialect.to_owned(),
            connected_at: self.connected_at,
            disconnected_at: now,
            expires_at: now + chrono::Duration::from_std(window).unwrap_or_default(),
            state: serde_json::to_value(&state).unwrap_or(Value::Null),
        })
    }
}

/// A kept session's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    next: u64,
    floor: u64,
    /// (conversation, seq, change)
    base: Vec<(i64, i64, i64)>,
    /// (offset, conversation, seq, change)
    log: Vec<(u64, i64, i64, i64)>,
    left: Vec<String>,
    session: Option<String>,
    numeric: bool,
    /// The session actor's key.
    #[serde(default)]
    key: u64,
    /// The last settled offset and when it went out (milliseconds).
    #[serde(default)]
    settled: (u64, i64),
    /// Later offsets and when they went out.
    #[serde(default)]
    times: Vec<(u64, i64)>,
    /// Calls whose end went out, with its offset.
    #[serde(default)]
    ends: Vec<(u64, String)>,
}

impl State {
    /// When the last event the client received (offset `seen`) went out: calls that ended
    /// later are ones it did not hear end. Before the settled offset, or unknown: when the
    /// session connected (more is told rather than less).
    fn heard_until(&self, seen: u64, connected_at: DateTime<Utc>) -> DateTime<Utc> {
        let millis = if seen == self.settled.0 {
            Some(self.settled.1)
        } else {
            self.times
                .iter()
                .find(|(offset, _)| *offset == seen)
                .map(|(_, at)| *at)
        };
        millis
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(connected_at)
    }
}

/// Where the client stood in one conversation at its offset (`None`: not known; only new
/// messages since the session connected are replayed there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Place {
    seq: Option<i64>,
    change: Option<i64>,
}

/// Why a recovery did not happen (the client gets a fresh session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown, expired or another user's private id.
    Unknown,
    /// The offset is not one the session handed out, or is too old to place.
    BadOffset,
    /// More missed events than `SOCKETIO_RECOVERY_MAX_EVENTS`.
    TooMany,
    /// The database could not answer.
    Unavailable,
}

impl Refusal {
    /// A stable name for logs and metrics.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_session",
            Self::BadOffset => "bad_offset",
            Self::TooMany => "too_many_events",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Where the client stood in each conversation it had events of, at offset `seen` (0: none).
fn places(state: &State, seen: u64) -> Result<HashMap<i64, Place>, Refusal> {
    if seen >= state.next || seen < state.floor {
        return Err(Refusal::BadOffset);
    }
    let mut out: HashMap<i64, Place> = state
        .base
        .iter()
        .map(|(c, s, ch)| {
            (
                *c,
                Place {
                    seq: Some(*s),
                    change: Some(*ch),
                },
            )
        })
        .collect();
    // Received entries move a cursor up; the first one not received caps it below itself.
    let mut capped: HashMap<i64, Place> = HashMap::new();
    for (offset, conversation, seq, change) in &state.log {
        let place = out.entry(*conversation).or_default();
        if *offset <= seen {
            if *seq > 0 {
                place.seq = Some(place.seq.unwrap_or(0).max(*seq));
            }
            place.change = Some(place.change.unwrap_or(0).max(*change));
        } else {
            let cap = capped.entry(*conversation).or_default();
            if *seq > 0 && cap.seq.is_none() {
                cap.seq = Some(seq - 1);
            }
            if cap.change.is_none() {
                cap.change = Some(change - 1);
            }
        }
    }
    for (conversation, cap) in capped {
        let place = out.entry(conversation).or_default();
        if let Some(s) = cap.seq {
            place.seq = Some(place.seq.map_or(s, |p| p.min(s)));
        }
        if let Some(c) = cap.change {
            place.change = Some(place.change.map_or(c, |p| p.min(c)));
        }
    }
    Ok(out)
}

/// A recovery that can go ahead: the missed events and the state the session comes back with.
#[derive(Debug)]
pub(crate) struct Replay {
    /// The missed events (canonical), in order.
    pub events: Vec<Arc<ServerEvent>>,
    /// The session's tracker, continued.
    pub tracker: Tracker,
    /// Conversations the session had left (dialect state).
    pub left: Vec<String>,
    /// The key the session had (its device in a call).
    pub previous_key: u64,
}

/// A kept session found by its private id, before its replay is read.
#[derive(Debug)]
pub(crate) struct Found {
    kept: Kept,
    state: State,
    pid: String,
}

impl Found {
    /// The dialect it spoke.
    pub(crate) fn dialect(&self) -> &str {
        &self.kept.dialect
    }

    /// The identity it had, checked again against the database (for clients that authenticate
    /// by event and so bring no token on CONNECT).
    pub(crate) async fn identity(&self, auth: &Auth) -> AppResult<Identity> {
        auth.revalidate(
            self.kept.user_id,
            self.state.session.clone(),
            self.state.numeric,
            self.kept.connected_at,
        )
        .await
    }
}

/// Takes a kept session by its private id (it is used up either way). `user`: the user the
/// reconnecting client's token proved, when it brought one; another user's session is not
/// found.
pub(crate) async fn find(db: &Db, pid: &str, user: Option<i64>) -> Result<Found, Refusal> {
    let hash = pid_hash(pid);
    let kept = db
        .run(move |conn| store::take(conn, &hash, user))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "socket.io recovery: kept session unreadable");
            Refusal::Unavailable
        })?
        .ok_or(Refusal::Unknown)?;
    let state: State = serde_json::from_value(kept.state.clone()).map_err(|_| Refusal::Unknown)?;
    Ok(Found {
        kept,
        state,
        pid: pid.to_owned(),
    })
}

/// Reads what a found session missed since offset `seen` and continues its tracker. Call it
/// once the new session receives live events, so nothing falls between the snapshot and them.
pub(crate) async fn replay(
    db: &Db,
    found: Found,
    seen: u64,
    identity: &Identity,
    max_events: usize,
) -> Result<Replay, Refusal> {
    let places = places(&found.state, seen)?;
    let user = found.kept.user_id;
    let connected_at = found.kept.connected_at;
    // Calls that ended after the last event the client received are the ones it did not
    // hear end.
    let dropped_at = found.state.heard_until(seen, connected_at);
    let heard: Vec<String> = found
        .state
        .ends
        .iter()
        .filter(|(offset, _)| *offset <= seen)
        .map(|(_, call)| call.clone())
        .collect();
    let read = places.clone();
    let (events, standings) = db
        .run(move |conn| {
            conn.build_transaction()
                .repeatable_read()
                .read_only()
                .run(|conn| {
                    missed(
                        conn,
                        user,
                        &read,
                        (connected_at, dropped_at, &heard),
                        max_events,
                    )
                })
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "socket.io recovery: missed events unreadable");
            Refusal::Unavailable
        })?
        .ok_or(Refusal::TooMany)?;
    let Found { kept, state, pid } = found;
    let mut tracker = Tracker::new(pid, kept.sid, identity, max_events);
    tracker.connected_at = connected_at;
    tracker.next = state.next;
    // The client stands at `seen`: older offsets are never reported again.
    tracker.floor = seen;
    tracker.settled = (seen, dropped_at.timestamp_millis());
    // Conversations with replayed events start where the client stood (the replayed events
    // are logged as they are sent); the others where they stand now.
    let touched: std::collections::HashSet<i64> = events
        .iter()
        .filter_map(|ev| ev.position().map(|p| p.conversation))
        .collect();
    let mut high = HashMap::new();
    for s in &standings {
        high.insert(s.conversation_id, s.last_change);
        if !touched.contains(&s.conversation_id) {
            tracker
                .base
                .insert(s.conversation_id, (s.last_seq, s.last_change));
        }
    }
    for (c, place) in &places {
        if touched.contains(c) {
            if let (Some(seq), Some(change)) = (place.seq, place.change) {
                tracker.base.insert(*c, (seq, change));
            }
        }
    }
    tracker.replayed = Some((Instant::now(), high));
    Ok(Replay {
        events,
        tracker,
        left: state.left,
        previous_key: state.key,
    })
}

/// Missed events, and where the user's conversations stood when they were read.
type Missed = (Vec<Arc<ServerEvent>>, Vec<Standing>);

/// The events a user missed after `places`, in order, read in one snapshot; `None` when there
/// are more than `max`.
fn missed(
    conn: &mut diesel::PgConnection,
    user: i64,
    places: &HashMap<i64, Place>,
    (connected_at, dropped_at, heard): (DateTime<Utc>, DateTime<Utc>, &[String]),
    max: usize,
) -> AppResult<Option<Missed>> {
    let standings = store::standings(conn, user)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
    let mut events: Vec<Arc<ServerEvent>> = Vec::new();
    for s in &standings {
        let room = limit - i64::try_from(events.len()).unwrap_or(i64::MAX);
        if room <= 0 {
            return Ok(None);
        }
        let place = places.get(&s.conversation_id).copied().unwrap_or_default();
        match (place.seq, place.change) {
            (Some(seq), Some(change)) => {
                if s.last_seq > seq {
                    let fresh = store::messages_after(conn, s.conversation_id, seq, room)?;
                    events.extend(
                        fresh
                            .iter()
                            .map(crate::realtime::conversation::new_message_event),
                    );
                }
                if s.last_change > change {
                    let room = limit - i64::try_from(events.len()).unwrap_or(i64::MAX);
                    let changed =
                        store::changed_messages(conn, s.conversation_id, seq, change, room.max(0))?;
                    events.extend(changed.iter().filter_map(change_event));
                    for r in store::moved_receipts(conn, s.conversation_id, change, user)? {
                        events.push(receipt_event(&r));
                    }
                }
            }
            (seq, _) => {
                // No cursor here: the session never had this conversation's place (it joined
                // later, or the session dropped before its starting point was read). What
                // was created since it connected is what it missed.
                let fresh = match seq {
                    Some(seq) => store::messages_after(conn, s.conversation_id, seq, room)?,
                    None => store::messages_since(
                        conn,
                        s.conversation_id,
                        connected_at.max(s.joined_at),
                        room,
                    )?,
                };
                events.extend(
                    fresh
                        .iter()
                        .map(crate::realtime::conversation::new_message_event),
                );
            }
        }
        if events.len() > max {
            return Ok(None);
        }
    }
    // Calls that ended while the session was away: their end, as the user heard it. A call
    // records its end to the second, so the last second before is looked at too, less the
    // ends the client is known to have heard.
    let since = dropped_at - chrono::Duration::seconds(CALL_END_SLACK_SECS);
    for call in store::calls_ended_since(conn, user, since)? {
        if !heard.contains(&call.id) {
            events.push(call_end_event(&call, user));
        }
    }
    if events.len() > max {
        return Ok(None);
    }
    Ok(Some((events, standings)))
}

/// The last word a party heard of an ended call.
fn call_end_event(call: &store::EndedCall, user: i64) -> Arc<ServerEvent> {
    let caller = call.caller_id == Some(user);
    let reason = call.end_reason.clone();
    match call.status.as_str() {
        "missed" => ServerEvent::new(events::CALL_MISSED, json!({"callId": call.id})),
        "cancelled" if !caller => ServerEvent::new(
            events::CALL_CANCELLED,
            json!({"callId": call.id, "reason": "cancelled"}),
        ),
        "rejected" => ServerEvent::new(
            events::CALL_REJECTED,
            json!({"callId": call.id, "reason": reason.unwrap_or_else(|| "rejected".into())}),
        ),
        status => ServerEvent::new(
            events::CALL_ENDED,
            json!({
                "callId": call.id,
                "reason": reason,
                "status": status,
                "duration": call.duration_secs.unwrap_or(0),
                "endedBy": call.ended_by.map(|u| u.to_string()),
            }),
        ),
    }
}

/// The `message:edited` or `message:deleted` event of a message changed after it was sent.
fn change_event(m: &Message) -> Option<Arc<ServerEvent>> {
    let name = if m.deleted_at.is_some() {
        events::MESSAGE_DELETED
    } else if m.edited_at.is_some() {
        events::MESSAGE_EDITED
    } else {
        return None;
    };
    Some(ServerEvent::new(name, json!(m.view())))
}

/// The last move of a member's receipt cursors as the event the others heard.
fn receipt_event(r: &store::MovedReceipt) -> Arc<ServerEvent> {
    let m = &r.member;
    let read_last = m.read_up_to > 0
        && m.read_at
            .is_some_and(|read| m.delivered_at.is_none_or(|d| read >= d));
    let (name, up_to, at) = if read_last {
        (events::RECEIPT_READ, m.read_up_to, r.read_message_at)
    } else {
        (
            events::RECEIPT_DELIVERED,
            m.delivered_up_to,
            r.delivered_message_at,
        )
    };
    ServerEvent::new(
        name,
        json!({
            "conversationId": m.conversation_id.to_string(),
            "userId": m.user_id.to_string(),
            "upTo": up_to,
            "at": at,
            "change": m.receipt_change,
        }),
    )
}

/// Writes dropped sessions to the database in batches, off the connection's path, and removes
/// expired ones now and then.
#[derive(Debug)]
pub struct Keeper {
    tx: mpsc::Sender<Kept>,
    /// Dropped sessions queued or being written.
    pending: Arc<AtomicUsize>,
    /// Their private ids' hashes (a recovery waits for its session to be written).
    pending_pids: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>,
}

impl Keeper {
    /// Starts the writer (inside an actix system or Tokio runtime).
    pub(crate) fn start(db: Db, per_user: usize, max_total: usize) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Kept>(KEEP_QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&pending);
        let pending_pids: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>> =
            Arc::default();
        let written_pids = Arc::clone(&pending_pids);
        let writer_db = db.clone();
        actix_web::rt::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < KEEP_BATCH {
                    match rx.try_recv() {
                        Ok(row) => batch.push(row),
                        Err(_) => break,
                    }
                }
                let n = batch.len();
                let hashes: Vec<Vec<u8>> = batch.iter().map(|k| k.pid_hash.clone()).collect();
                let result = writer_db
                    .run(move |conn| store::keep(conn, &batch, per_user, max_total))
                    .await;
                match result {
                    Ok(kept) if kept < n => tracing::warn!(
                        dropped = n - kept,
                        "socket.io recovery: SOCKETIO_RECOVERY_MAX_SESSIONS reached; sessions not kept"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, sessions = n, "socket.io recovery: dropped sessions not kept"),
                }
                if let Ok(mut pids) = written_pids.lock() {
                    for h in &hashes {
                        pids.remove(h);
                    }
                }
                counted.fetch_sub(n, Ordering::SeqCst);
            }
        });
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(PURGE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = db.run(store::purge).await {
                    tracing::debug!(error = %e, "socket.io recovery: expired sessions not purged");
                }
            }
        });
        Arc::new(Self {
            tx,
            pending,
            pending_pids,
        })
    }

    /// Queues a dropped session; false when the queue is full (it is not kept).
    pub(crate) fn keep(&self, row: Kept) -> bool {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let hash = row.pid_hash.clone();
        if let Ok(mut pids) = self.pending_pids.lock() {
            pids.insert(hash.clone());
        }
        if let Err(e) = self.tx.try_send(row) {
            if let Ok(mut pids) = self.pending_pids.lock() {
                pids.remove(&hash);
            }
            self.pending.fetch_sub(1, Ordering::SeqCst);
            match e {
                mpsc::error::TrySendError::Full(_) => tracing::warn!(
                    "socket.io recovery: write queue full; a dropped session is not kept"
                ),
                mpsc::error::TrySendError::Closed(_) => tracing::debug!(
                    "socket.io recovery: the server stopped; a dropped session is not kept"
                ),
            }
            return false;
        }
        true
    }

    /// Whether a dropped session is still being written.
    pub(crate) fn is_pending(&self, pid_hash: &[u8]) -> bool {
        self.pending_pids
            .lock()
            .is_ok_and(|pids| pids.contains(pid_hash))
    }

    /// Dropped sessions not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// `Err` for an offset in a CONNECT payload that is not one of ours.
pub(crate) fn parse_offset(value: Option<&Value>) -> Result<u64, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s.parse().map_err(|_| Refusal::BadOffset),
        Some(_) => Err(Refusal::BadOffset),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pos(conversation: i64, seq: i64, change: i64) -> Position {
        Position {
            conversation,
            seq,
            change,
        }
    }

    fn state(base: Vec<(i64, i64, i64)>, log: Vec<(u64, i64, i64, i64)>, next: u64) -> State {
        State {
            next,
            base,
            log,
            ..State::default()
        }
    }

    #[test]
    fn offsets_go_last_in_the_arguments() {
        assert_eq!(with_offset(r#"["a",{"x":1}]"#, 7), r#"["a",{"x":1},"7"]"#);
        assert_eq!(with_offset("[]", 3), r#"["3"]"#);
    }

    #[test]
    fn a_place_is_the_last_received_entry_or_just_below_the_first_missed_one() {
        // Conversation 1 started at seq 4 / change 6; offsets 1..=3 carried seq 5, 6, 7.
        let s = state(
            vec![(1, 4, 6)],
            vec![(1, 1, 5, 7), (2, 1, 6, 8), (3, 1, 7, 9), (4, 2, 0, 3)],
            5,
        );
        let at2 = places(&s, 2).unwrap();
        assert_eq!(
            at2[&1],
            Place {
                seq: Some(6),
                change: Some(8)
            }
        );
        // Conversation 2 had no starting point: only the missed receipt caps its change.
        assert_eq!(
            at2[&2],
            Place {
                seq: None,
                change: Some(2)
            }
        );
        let none = places(&s, 0).unwrap();
        assert_eq!(
            none[&1],
            Place {
                seq: Some(4),
                change: Some(6)
            }
        );
        let all = places(&s, 4).unwrap();
        assert_eq!(
            all[&1],
            Place {
                seq: Some(7),
                change: Some(9)
            }
        );
        assert_eq!(
            all[&2],
            Place {
                seq: None,
                change: Some(3)
            }
        );
    }

    #[test]
    fn offsets_never_handed_out_or_folded_away_are_refused() {
        let mut s = state(vec![], vec![], 5);
        assert_eq!(places(&s, 5), Err(Refusal::BadOffset));
        s.floor = 3;
        assert_eq!(places(&s, 2), Err(Refusal::BadOffset));
        assert!(places(&s, 3).is_ok());
    }

    #[test]
    fn a_pong_folds_confirmed_entries_and_an_overflowing_log_raises_the_floor() {
        let identity_less = || Tracker::for_session("p".into(), "s".into(), (None, false), 2);
        let mut t = identity_less();
        assert_eq!(t.stamp(Some(pos(1, 1, 1))), 1);
        assert_eq!(t.stamp(None), 2);
        assert_eq!(t.stamp(Some(pos(1, 2, 2))), 3);
        t.confirm(2);
        assert_eq!(t.base[&1], (1, 1));
        assert_eq!(t.log.len(), 1);
        t.stamp(Some(pos(1, 3, 3)));
        t.stamp(Some(pos(1, 4, 4)));
        // Three entries over a cap of two: the oldest is folded without confirmation.
        assert_eq!(t.log.len(), 2);
        assert_eq!(t.floor, 3);
        // The same place sent twice in a row (one event, two dialect packets) is one entry.
        let mut u = identity_less();
        u.stamp(Some(pos(1, 1, 1)));
        u.stamp(Some(pos(1, 1, 1)));
        assert_eq!(u.log.len(), 1);
        assert_eq!(u.log[0].0, 2);
    }

    #[test]
    fn offsets_in_connect_payloads_are_ours_or_refused() {
        assert_eq!(parse_offset(None), Ok(0));
        assert_eq!(parse_offset(Some(&json!("12"))), Ok(12));
        assert_eq!(parse_offset(Some(&json!(12))), Err(Refusal::BadOffset));
        assert_eq!(parse_offset(Some(&json!("x"))), Err(Refusal::BadOffset));
    }
}
