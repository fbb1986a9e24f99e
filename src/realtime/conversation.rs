//! One actor per active conversation: checks membership, validates and queues sends for the
//! group-commit writer, fans committed messages out in seq order, keeps typing state (which
//! expires by itself), and relays receipts, edits and deletes. It stops when idle.
//!
//! Fan-out follows a high-water mark rather than whether a row was new to the batch that
//! returned it: the actor starts at the conversation's `last_seq` and fans out every committed
//! row above the mark, in seq order, then raises the mark. A batch whose COMMIT went through but
//! whose reply was lost comes back from the writer's retry as stored rows (`fresh: false`); they
//! are still above the mark, so the members get them once. A client's later resend of a message
//! already fanned out finds it below the mark and is only acknowledged. When a batch failed as a
//! whole (its outcome unknown: it may have committed), every later batch whose rows above the mark
//! leave seqs out (below its lowest row or between its rows) loads the missing rows and fans
//! them out in their place, so live delivery stays gap-free. The failed batch counts as settled
//! only once a batch with a newly inserted row has been fanned out: that row's seq was reserved
//! after the failed batch ended, so every row the failed batch may have committed lies below
//! it. A batch of resends alone settles nothing: its rows may be only some of the failed
//! batch's, and the others are above them.

use super::directory::Delivery;
use super::protocol::{Position, ServerEvent};
use super::writer::WriteRequest;
use super::Engine;
use crate::db::conversations::{self as convs, ReceiptKind};
use crate::db::messages::{self, Actor as MessageActor, Draft, Message, Written};
use crate::error::{AppError, AppResult};
use crate::realtime::events;
use actix::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The live conversation actors of this process by id (only the registry inserts).
pub(crate) type ConversationMap = super::actors::ActorMap<i64, ConversationActor>;

/// Member set as loaded from the database.
#[derive(Clone, Debug, Default)]
struct Members {
    ids: Arc<[i64]>,
}

impl Members {
    fn contains(&self, user: i64) -> bool {
        self.ids.contains(&user)
    }

    fn except(&self, user: i64) -> Arc<[i64]> {
        self.ids.iter().copied().filter(|u| *u != user).collect()
    }
}

/// Queue a message for commit; the reply comes after the commit.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SendMessage {
    /// Sender (from the token).
    pub sender: i64,
    /// Originating session.
    pub origin: Option<u64>,
    /// What to write.
    pub draft: Draft,
    /// Ack channel.
    pub reply: oneshot::Sender<AppResult<Written>>,
}

/// A server-authored message (call logs, system notes): no membership check on the sender.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SystemMessage {
    /// What to write.
    pub draft: Draft,
    /// Outcome.
    pub reply: oneshot::Sender<AppResult<Written>>,
}

/// Results of a committed batch for this conversation, in seq order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Committed(pub Vec<(WriteRequest, AppResult<Written>)>);

/// A new message committed on another node (cluster mode), for this node's sessions of
/// `users`; fanned out here in seq order with this node's own commits.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct RemoteMessage {
    /// Its seq.
    pub seq: i64,
    /// The `message:new` event.
    pub event: Arc<ServerEvent>,
    /// Its recipients (the conversation's members when it was committed).
    pub users: Arc<[i64]>,
    /// The session that sent it (it gets the ack instead; it may be on this node when this
    /// node forwarded the send to the conversation's writing node).
    pub skip: Option<u64>,
}

/// Cluster mode: how old a conversation's messages must be for a starting conversation actor
/// to take them as delivered by the nodes that committed them (younger ones may still be on
/// their way, and are fanned out here once, in order, from the bus or the database).
pub(crate) const IN_FLIGHT_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Gap reads in a row that may wait for a batch of this node (see `writing`).
const MAX_DEFERRALS: u32 = 20;

/// A message waiting for the seqs before it (cluster mode).
#[derive(Debug)]
struct Waiting {
    event: Arc<ServerEvent>,
    /// Its recipients.
    users: Arc<[i64]>,
    /// The session that sent it (it gets the ack instead).
    skip: Option<u64>,
    /// When it came: every seq below it was committed by then, so a seq still missing has
    /// been on its way at least that long.
    since: Instant,
}

impl Waiting {
    fn new(event: Arc<ServerEvent>, users: Arc<[i64]>, skip: Option<u64>) -> Self {
        Self {
            event,
            users,
            skip,
            since: Instant::now(),
        }
    }
}

/// Most messages from other nodes held while an earlier seq is missing; past it, the gap is
/// filled from the database at once.
pub(crate) const MAX_REMOTE_WAITING: usize = 4096;

/// Membership changed: reload it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MembersChanged;

/// Open the conversation: membership check, returns its state.
#[derive(Message, Debug)]
#[rtype(result = "AppResult<Value>")]
pub(crate) struct Join {
    /// User.
    pub user: i64,
}

/// Typing indicator on/off.
#[derive(Message, Debug)]
#[rtype(result = "AppResult<()>")]
pub(crate) struct Typing {
    /// User.
    pub user: i64,
    /// Started (true) or stopped.
    pub active: bool,
}

/// Receipt cursor move.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Receipt {
    /// User.
    pub user: i64,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Where the cursor moves to.
    pub cursor: crate::realtime::protocol::ReceiptCursor,
    /// Outcome: the cursor after the move.
    pub reply: oneshot::Sender<AppResult<Value>>,
}

/// What to do to an existing message.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// New text.
    Edit(String),
    /// Soft delete.
    Delete,
}

/// Edit or delete a message of this conversation.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ChangeMessage {
    /// Who acts.
    pub actor: MessageActor,
    /// The message.
    pub message_id: i64,
    /// What to do.
    pub change: Change,
    /// Originating session.
    pub origin: Option<u64>,
    /// Outcome.
    pub reply: oneshot::Sender<AppResult<Message>>,
}

/// The conversation actor.
pub struct ConversationActor {
    id: i64,
    engine: Engine,
    members: Members,
    loaded: bool,
    /// Who is typing: the token of their latest indicator and its expiry timer (a refresh
    /// cancels the timer it replaces, so the context holds one per typing user).
    typing: HashMap<i64, (u64, SpawnHandle)>,
    typing_token: u64,
    pending: usize,
    /// Highest seq fanned out (or committed before this actor started).
    fanned_up_to: i64,
    /// Whether `fanned_up_to` was loaded (only the first load sets it).
    mark_loaded: bool,
    /// A batch failed as a whole and no newly inserted row has been fanned out since: it may
    /// have committed anyway (the answer to its COMMIT lost, and neither its status nor a retry
    /// could tell), so each batch looks for rows above the mark that it leaves out and fans
    /// them out in their place.
    unsettled: bool,
    /// Receipts waiting for the batch being written (at most [`MAX_QUEUED_RECEIPTS`]).
    receipts: Vec<Receipt>,
    writing_receipts: bool,
    last_activity: Instant,
    /// Set when another node's message started this actor: fan out from this seq on.
    first_seq: Option<i64>,
    /// Cluster mode: messages above the mark (this node's commits and other nodes') waiting
    /// for the seqs before them, with their recipients and the session to skip.
    waiting: BTreeMap<i64, Waiting>,
    /// A gap fill is scheduled (or running).
    gap_timer: bool,
    /// Cluster mode: seqs up to this one were committed before this actor started; those
    /// above the mark that no node delivers are read.
    fill_to: i64,
    /// Cluster mode: senders with sends from a session here being written (by count). A row
    /// of theirs that a gap read finds before its batch is back waits for the batch, which
    /// knows the session to skip.
    writing: HashMap<i64, usize>,
    /// Gap reads in a row that waited for such a batch; past [`MAX_DEFERRALS`] the row goes
    /// out as read (the same user may be sending through another node all along).
    deferrals: u32,
}

impl std::fmt::Debug for ConversationActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationActor")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConversationActor {
    /// A new actor; members load when it starts.
    pub(crate) fn new(id: i64, engine: Engine) -> Self {
        Self {
            id,
            engine,
            members: Members::default(),
            loaded: false,
            typing: HashMap::new(),
            typing_token: 0,
            pending: 0,
            fanned_up_to: 0,
            mark_loaded: false,
            unsettled: false,
            receipts: Vec::new(),
            writing_receipts: false,
            last_activity: Instant::now(),
            first_seq: None,
            waiting: BTreeMap::new(),
            gap_timer: false,
            fill_to: 0,
            writing: HashMap::new(),
            deferrals: 0,
        }
    }

    /// For an actor started by another node's message of seq `first` (cluster mode): the
    /// mark starts just below it, so it and what follows are fanned out here even if later
    /// seqs committed before this actor loaded.
    pub(crate) fn starting_at(mut self, first: Option<i64>) -> Self {
        self.first_seq = first;
        self
    }

    fn load_members(&mut self, ctx: &mut Context<Self>) {
        let db = self.engine.db.clone();
        let id = self.id;
        // Cluster mode, first load: messages of the last moments may still be on their way
        // from other nodes; the mark starts below them, and they are read if they do not come.
        let settle =
            (self.engine.cluster.is_some() && !self.mark_loaded).then_some(IN_FLIGHT_WINDOW);
        // `wait` holds the mailbox until members are known, so no command sees a partial state.
        ctx.wait(
            async move {
                db.run(move |conn| {
                    let Some(conv) = convs::by_id(conn, id)? else {
                        return Ok(None);
                    };
                    let ids = convs::members(conn, id)?.into_iter().map(|m| m.user_id).collect::<Vec<_>>();
                    let settled = match settle {
                        Some(age) => messages::settled_seq(conn, id, age)?,
                        None => conv.last_seq,
                    };
                    Ok(Some((ids, conv.last_seq, settled)))
                })
                .await
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(Some((ids, last_seq, settled))) => {
                    act.members = Members { ids: ids.into() };
                    act.loaded = true;
                    // Only the first load sets the mark: a reload (membership change) may run
                    // while a batch of this actor is committing, and its rows are above the
                    // mark until their fan-out.
                    if !act.mark_loaded {
                        let mark = settled.min(last_seq);
                        act.fanned_up_to = act.first_seq.map_or(mark, |first| (first - 1).min(mark));
                        act.fill_to = last_seq;
                        act.mark_loaded = true;
                        act.schedule_gap_fill(ctx);
                    }
                }
                Ok(None) => {
                    act.members = Members::default();
                    act.loaded = true;
                    act.mark_loaded = true;
                }
                Err(e) => {
                    tracing::warn!(conversation = act.id, error = %e, "could not load members; retrying on next command");
                    act.loaded = false;
                    // Leave the actor so the next lookup starts a fresh one.
                    act.engine.conversations.remove(&act.id, &ctx.address());
                    ctx.stop();
                }
            }),
        );
    }

    fn check_member(&self, user: i64) -> AppResult<()> {
        if !self.loaded {
            return Err(AppError::unavailable("conversation state unavailable"));
        }
        if self.members.ids.is_empty() {
            return Err(AppError::NotFound("conversation not found".into()));
        }
        if self.members.contains(user) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "not a member of this conversation".into(),
            ))
        }
    }

    /// Pushes an event straight into the recipients' outbound queues (no actor in between),
    /// so every recipient gets this conversation's events in the order this actor emits them.
    fn fan_out(&self, users: Arc<[i64]>, event: Arc<ServerEvent>, skip: Option<u64>) {
        if !users.is_empty() {
            self.engine.delivery.deliver(&users, &event, skip);
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    fn broadcast_typing(&self, user: i64, active: bool) {
        let event = ServerEvent::new(
            if active {
                events::TYPING_START
            } else {
                events::TYPING_STOP
            },
            json!({"conversationId": self.id.to_string(), "userId": user.to_string()}),
        );
        self.fan_out(self.members.except(user), event, None);
    }

    fn stop_typing(&mut self, user: i64) {
        if self.typing.remove(&user).is_some() {
            self.broadcast_typing(user, false);
        }
    }

    fn queue(
        &mut self,
        ctx: &mut Context<Self>,
        draft: Draft,
        origin: Option<u64>,
        reply: oneshot::Sender<AppResult<Written>>,
    ) {
        let sender = draft.sender_id.filter(|_| origin.is_some());
        let req = WriteRequest {
            draft,
            notify: ctx.address().recipient(),
            reply,
            origin,
        };
        if self.engine.writer.submit(req) {
            self.pending += 1;
            if let (Some(sender), true) = (sender, self.engine.cluster.is_some()) {
                *self.writing.entry(sender).or_default() += 1;
            }
        } else {
            self.engine.metrics.queue_drop(crate::metrics::Queue::Write);
        }
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        self.load_members(ctx);
        let idle = self.engine.config.conversation_idle;
        let check = (idle / 4).max(std::time::Duration::from_millis(250));
        ctx.run_interval(check, move |act, ctx| {
            if act.pending == 0
                && act.typing.is_empty()
                && act.waiting.is_empty()
                && act.last_activity.elapsed() >= idle
            {
                act.engine.conversations.remove(&act.id, &ctx.address());
                ctx.stop();
            }
        });
    }
}

impl Handler<SendMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: SendMessage, ctx: &mut Context<Self>) {
        self.touch();
        if let Err(e) = self.check_member(msg.sender) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        // Sending ends the sender's typing indicator.
        self.stop_typing(msg.sender);
        self.queue(ctx, msg.draft, msg.origin, msg.reply);
    }
}

impl Handler<SystemMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: SystemMessage, ctx: &mut Context<Self>) {
        self.touch();
        if !self.loaded || self.members.ids.is_empty() {
            let _ = msg
                .reply
                .send(Err(AppError::NotFound("conversation not found".into())));
            return;
        }
        self.queue(ctx, msg.draft, None, msg.reply);
    }
}

/// Most rows a conversation loads to fan out what a failed batch may have committed (see
/// [`ConversationActor`]'s `unsettled`); a longer gap is left to the clients' `sync`.
pub(crate) const MAX_GAP_FILL: i64 = 1000;

/// Pause between two reads of a gap when the first failed (see `GAP_READ_RETRY_MS`).
const GAP_READ_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

impl Handler<Committed> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        self.touch();
        if self.engine.cluster.is_some() {
            self.committed_in_cluster(msg, ctx);
            return;
        }
        let mut seqs: Vec<i64> = msg
            .0
            .iter()
            .filter_map(|(_, res)| res.as_ref().ok())
            .map(|w| w.message.seq)
            .filter(|seq| *seq > self.fanned_up_to)
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        // In cluster mode other nodes commit to this conversation too: seqs this batch leaves
        // out are theirs, committed (a seq is reserved under the conversation's row lock), and
        // their delivery may not have arrived yet.
        let gap = if self.unsettled || self.engine.cluster.is_some() {
            missing_range(self.fanned_up_to, &seqs)
        } else {
            None
        };
        // A newly inserted row was reserved after any failed batch ended: once this batch is
        // fanned out (gaps below it filled), nothing that batch may have committed is left.
        if msg
            .0
            .iter()
            .any(|(_, res)| res.as_ref().is_ok_and(|w| w.fresh))
        {
            self.unsettled = false;
        }
        // A batch that failed as a whole may still have committed (its outcome was unknown).
        if msg.0.iter().any(|(_, res)| {
            matches!(
                res,
                Err(AppError::Unavailable { .. } | AppError::Internal { .. })
            )
        }) {
            self.unsettled = true;
        }
        match gap {
            Some((from, to)) if to - from < MAX_GAP_FILL => {
                // Rows above the mark that this batch leaves out were committed by a batch whose
                // senders got an error: fan them out in their place. `wait` holds later batches
                // until then.
                ctx.wait(
                    self.read_seqs(from, to)
                    .into_actor(self)
                    .map(move |res, act, _| {
                        match res {
                            Ok(rows) => act.fan_out_missing(&rows, to, &msg),
                            Err(e) => tracing::warn!(
                                conversation = act.id,
                                from,
                                to,
                                error = %e,
                                "could not load messages of an unsettled batch; members catch up with sync"
                            ),
                        }
                        act.finish_committed(msg);
                    }),
                );
            }
            Some((from, to)) => {
                tracing::warn!(
                    conversation = self.id,
                    from,
                    to,
                    "gap too long to fill live; members catch up with sync"
                );
                self.finish_committed(msg);
            }
            None => self.finish_committed(msg),
        }
    }
}

/// The `message:new` event of a committed message.
pub(crate) fn new_message_event(m: &Message) -> Arc<ServerEvent> {
    let position = Position {
        conversation: m.conversation_id,
        seq: m.seq,
        change: m.change_seq,
    };
    ServerEvent::message(
        events::MESSAGE_NEW,
        &m.view(),
        m.conversation_id,
        m.seq,
        Some(position),
    )
}

/// How much longer to wait until `wait` has passed since `oldest`; `None`: it has (or there
/// is nothing to wait for). A gap that has stood since `oldest` (the arrival of the
/// longest-waiting message above it) is read once it has stood `wait`; the cluster thread
/// spaces its publishes with it too.
pub(crate) fn still_to_wait(
    oldest: Option<Instant>,
    now: Instant,
    wait: std::time::Duration,
) -> Option<std::time::Duration> {
    let stood = now.saturating_duration_since(oldest?);
    (stood < wait).then(|| wait - stood)
}

/// The first and last seq above `mark` up to the highest of `seqs` (sorted, all above `mark`)
/// that `seqs` leaves out, if any.
fn missing_range(mark: i64, seqs: &[i64]) -> Option<(i64, i64)> {
    let mut expected = mark + 1;
    let mut first = None;
    let mut last = None;
    for &seq in seqs {
        if seq > expected {
            first.get_or_insert(expected);
            last = Some(seq - 1);
        }
        expected = seq + 1;
    }
    Some((first?, last?))
}

impl ConversationActor {
    /// Cluster mode: a committed batch goes to the other nodes at once, and to this node's
    /// sessions in seq order with the other nodes' messages (a seq still on its way from
    /// another node is waited for, then read); its senders are answered now (an ack follows
    /// the commit, not the fan-out).
    fn committed_in_cluster(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        for (req, res) in &msg.0 {
            let Ok(written) = res else {
                continue;
            };
            let m = &written.message;
            if m.seq <= self.fanned_up_to || self.waiting.contains_key(&m.seq) {
                continue;
            }
            let event = new_message_event(m);
            if let Some(cluster) = &self.engine.cluster {
                cluster.publish_event(&self.members.ids, &event, req.origin);
            }
            self.waiting.insert(
                m.seq,
                Waiting::new(event, Arc::clone(&self.members.ids), req.origin),
            );
        }
        for (req, _) in &msg.0 {
            if let (Some(sender), Some(_)) = (req.draft.sender_id, req.origin) {
                if let Some(n) = self.writing.get_mut(&sender) {
                    *n -= 1;
                    if *n == 0 {
                        self.writing.remove(&sender);
                    }
                }
            }
        }
        self.release_waiting();
        self.schedule_gap_fill(ctx);
        for (req, result) in msg.0 {
            self.pending = self.pending.saturating_sub(1);
            let _ = req.reply.send(result);
        }
    }

    /// Fans out the rows loaded for a gap (up to seq `to`) together with the committed rows of
    /// `msg`, in seq order; a loaded row that `msg` carries itself goes out as `msg`'s, so its
    /// sending session is skipped.
    fn fan_out_missing(&mut self, loaded: &[Message], to: i64, msg: &Committed) {
        let carried: Vec<(&Message, Option<u64>)> = msg
            .0
            .iter()
            .filter_map(|(req, res)| res.as_ref().ok().map(|w| (&w.message, req.origin)))
            .collect();
        let rows = loaded
            .iter()
            .filter(|m| m.seq <= to && !carried.iter().any(|(c, _)| c.seq == m.seq))
            .map(|m| (m, None))
            .chain(carried.iter().copied());
        self.fan_out_rows(rows);
    }

    /// Fans out every row above the mark, lowest seq first, and raises the mark; rows at or
    /// below it (resends of delivered messages, duplicates within a batch) went out already.
    fn fan_out_rows<'a>(&mut self, rows: impl Iterator<Item = (&'a Message, Option<u64>)>) {
        let mut rows: Vec<(&Message, Option<u64>)> = rows.collect();
        rows.sort_by_key(|(m, _)| m.seq);
        for (m, origin) in rows {
            if m.seq <= self.fanned_up_to {
                continue;
            }
            let event = new_message_event(m);
            self.fan_out(Arc::clone(&self.members.ids), event, origin);
            self.fanned_up_to = m.seq;
        }
        self.release_waiting();
    }

    /// Fans out (to this node's sessions) the other nodes' messages that follow the mark
    /// without a gap, drops those at or below it (delivered already, e.g. read for a gap).
    fn release_waiting(&mut self) {
        while let Some(entry) = self.waiting.first_entry() {
            let seq = *entry.key();
            if seq <= self.fanned_up_to {
                entry.remove();
                continue;
            }
            if seq != self.fanned_up_to + 1 {
                break;
            }
            let w = entry.remove();
            self.engine.directory.deliver(&w.users, &w.event, w.skip);
            self.fanned_up_to = seq;
        }
    }

    /// Reads this conversation's messages of seqs `from..=to` (to fill a gap). A gap is
    /// found right after the database failed (a batch whose outcome was unknown), so a failed
    /// read is tried again every [`GAP_READ_PAUSE`] for up to `GAP_READ_RETRY_MS` before the
    /// members are left to catch up with `sync`; the caller holds the mailbox meanwhile, as
    /// the database is what later batches wait for too.
    fn read_seqs(
        &self,
        from: i64,
        to: i64,
    ) -> impl std::future::Future<Output = AppResult<Vec<Message>>> + 'static {
        let db = self.engine.db.clone();
        let id = self.id;
        let patience = self.engine.config.gap_read_retry;
        async move {
            let deadline = tokio::time::Instant::now() + patience;
            loop {
                let read = db
                    .run(move |conn| messages::page(conn, id, None, Some(from - 1), to - from + 1))
                    .await;
                match read {
                    Err(e) if tokio::time::Instant::now() + GAP_READ_PAUSE < deadline => {
                        tracing::debug!(conversation = id, from, to, error = %e, "reading a gap failed; trying again");
                        tokio::time::sleep(GAP_READ_PAUSE).await;
                    }
                    read => return read,
                }
            }
        }
    }

    /// How long a missing seq may be on its way from another node before it is read.
    fn gap_wait(&self) -> std::time::Duration {
        self.engine
            .cluster
            .as_ref()
            .map_or(std::time::Duration::ZERO, |c| c.gap_wait)
    }

    /// Schedules reading the seqs missing below the waiting messages, if any wait.
    fn schedule_gap_fill(&mut self, ctx: &mut Context<Self>) {
        if (self.waiting.is_empty() && self.fill_to <= self.fanned_up_to) || self.gap_timer {
            return;
        }
        self.gap_timer = true;
        let wait = if self.waiting.len() >= MAX_REMOTE_WAITING {
            std::time::Duration::ZERO
        } else {
            self.gap_wait()
        };
        ctx.run_later(wait, |act, ctx| act.fill_remote_gap(ctx));
    }

    /// Reads the seqs still missing below the waiting messages from the database and fans
    /// them out with the waiting ones, in order (holding the mailbox meanwhile).
    fn fill_remote_gap(&mut self, ctx: &mut Context<Self>) {
        self.release_waiting();
        // The timer ran from the first gap it saw; that one may have closed since and a newer
        // one opened. A gap is read only once it has stood for the whole wait (a startup's or
        // an overflowing queue's at once), so that what arrives a moment late is not read for.
        if self.fill_to <= self.fanned_up_to && self.waiting.len() < MAX_REMOTE_WAITING {
            let oldest = self.waiting.values().map(|w| w.since).min();
            if let Some(rest) = still_to_wait(oldest, Instant::now(), self.gap_wait()) {
                ctx.run_later(rest, |act, ctx| act.fill_remote_gap(ctx));
                return;
            }
        }
        let last = self
            .waiting
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.fill_to);
        if last <= self.fanned_up_to {
            self.gap_timer = false;
            return;
        }
        let from = self.fanned_up_to + 1;
        let to = last.min(self.fanned_up_to + MAX_GAP_FILL);
        ctx.wait(self.read_seqs(from, to).into_actor(self).map(move |res, act, ctx| {
                act.gap_timer = false;
                match res {
                    Ok(rows) => {
                        let mut read = 0;
                        let mut deferred = false;
                        for m in rows.iter().filter(|m| m.seq <= to) {
                            act.release_waiting();
                            if m.seq <= act.fanned_up_to {
                                continue;
                            }
                            if !act.waiting.contains_key(&m.seq)
                                && act.deferrals < MAX_DEFERRALS
                                && m.sender_id.is_some_and(|s| act.writing.contains_key(&s))
                            {
                                // Possibly a send of this node whose batch is on its way
                                // back: it goes out from there, its session skipped.
                                deferred = true;
                                break;
                            }
                            // A row that arrived meanwhile goes out as it came (its sender's
                            // session skipped); the others as read.
                            if let Some(w) = act.waiting.remove(&m.seq) {
                                act.engine.directory.deliver(&w.users, &w.event, w.skip);
                            } else {
                                read += 1;
                                let event = new_message_event(m);
                                act.engine.directory.deliver(&act.members.ids, &event, None);
                            }
                            act.fanned_up_to = m.seq;
                        }
                        if let Some(cluster) = &act.engine.cluster {
                            cluster.gap_filled(read);
                        }
                        // Every seq up to `to` was committed (below a committed one): what the
                        // read did not return does not exist.
                        if deferred {
                            act.deferrals += 1;
                        } else {
                            act.deferrals = 0;
                            act.fanned_up_to = act.fanned_up_to.max(to);
                        }
                        act.release_waiting();
                    }
                    Err(e) => {
                        tracing::warn!(conversation = act.id, from, to, error = %e, "could not read messages missing between nodes; members catch up with sync");
                        act.fanned_up_to = act.fanned_up_to.max(to);
                        act.release_waiting();
                    }
                }
                act.schedule_gap_fill(ctx);
            }),
        );
    }

    /// Fans out a committed batch and answers its senders.
    fn finish_committed(&mut self, msg: Committed) {
        self.fan_out_rows(
            msg.0
                .iter()
                .filter_map(|(req, res)| res.as_ref().ok().map(|w| (&w.message, req.origin))),
        );
        for (req, result) in msg.0 {
            self.pending = self.pending.saturating_sub(1);
            // A sender that went away no longer waits for its ack.
            let _ = req.reply.send(result);
        }
    }
}

impl Handler<RemoteMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: RemoteMessage, ctx: &mut Context<Self>) {
        self.touch();
        if msg.seq <= self.fanned_up_to {
            return;
        }
        self.waiting
            .entry(msg.seq)
            .or_insert_with(|| Waiting::new(msg.event, msg.users, msg.skip));
        self.release_waiting();
        self.schedule_gap_fill(ctx);
    }
}

impl Handler<MembersChanged> for ConversationActor {
    type Result = ();
    fn handle(&mut self, _: MembersChanged, ctx: &mut Context<Self>) {
        self.load_members(ctx);
    }
}

impl Handler<Join> for ConversationActor {
    type Result = ResponseFuture<AppResult<Value>>;
    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> Self::Result {
        self.touch();
        let check = self.check_member(msg.user);
        let db = self.engine.db.clone();
        let id = self.id;
        let typing: Vec<String> = self
            .typing
            .keys()
            .filter(|u| **u != msg.user)
            .map(ToString::to_string)
            .collect();
        Box::pin(async move {
            check?;
            let (conv, members) = db
                .run(move |conn| {
                    let conv = convs::by_id(conn, id)?
                        .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
                    Ok((conv, convs::members(conn, id)?))
                })
                .await?;
            Ok(json!({
                "conversationId": id.to_string(),
                "type": conv.kind,
                "lastSeq": conv.last_seq,
                "lastChange": conv.last_change,
                "typing": typing,
                "members": members.iter().map(|m| json!({
                    "userId": m.user_id.to_string(),
                    "role": m.role,
                    "deliveredUpTo": m.delivered_up_to,
                    "readUpTo": m.read_up_to,
                })).collect::<Vec<_>>(),
            }))
        })
    }
}

impl Handler<Typing> for ConversationActor {
    type Result = AppResult<()>;
    fn handle(&mut self, msg: Typing, ctx: &mut Context<Self>) -> AppResult<()> {
        self.touch();
        self.check_member(msg.user)?;
        if !msg.active {
            self.stop_typing(msg.user);
            return Ok(());
        }
        self.typing_token += 1;
        let token = self.typing_token;
        let user = msg.user;
        let expiry = ctx.run_later(self.engine.config.typing_timeout, move |act, _| {
            if act.typing.get(&user).is_some_and(|(t, _)| *t == token) {
                act.stop_typing(user);
            }
        });
        match self.typing.insert(user, (token, expiry)) {
            Some((_, replaced)) => {
                ctx.cancel_future(replaced);
            }
            None => self.broadcast_typing(user, true),
        }
        Ok(())
    }
}

/// Receipts waiting for the batch being written; past this many, new ones are refused with
/// `unavailable` (the client retries; a receipt is a cursor, so a later one covers it).
pub(crate) const MAX_QUEUED_RECEIPTS: usize = 1024;

impl Handler<Receipt> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: Receipt, ctx: &mut Context<Self>) {
        self.touch();
        if let Err(e) = self.check_member(msg.user) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        if self.receipts.len() >= MAX_QUEUED_RECEIPTS {
            let _ = msg.reply.send(Err(AppError::unavailable(
                "too many receipts waiting in this conversation; retry shortly",
            )));
            return;
        }
        self.receipts.push(msg);
        if !self.writing_receipts {
            self.write_receipts(ctx);
        }
    }
}

impl ConversationActor {
    /// Writes every queued receipt in one transaction on one pooled connection (a refused move
    /// fails alone), then relays and answers them; receipts that arrive meanwhile make the next
    /// batch.
    fn write_receipts(&mut self, ctx: &mut Context<Self>) {
        let batch = std::mem::take(&mut self.receipts);
        if batch.is_empty() {
            self.writing_receipts = false;
            return;
        }
        self.writing_receipts = true;
        self.pending += batch.len();
        let db = self.engine.db.clone();
        let id = self.id;
        let work: Vec<_> = batch
            .iter()
            .map(|r| (r.user, r.kind, r.cursor.clone()))
            .collect();
        ctx.spawn(
            async move {
                db.run(move |conn| convs::move_cursors(conn, id, &work))
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.pending = act.pending.saturating_sub(batch.len());
                match res {
                    Ok(results) => {
                        for (msg, result) in batch.into_iter().zip(results) {
                            act.receipt_done(msg, result);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(conversation = act.id, error = %e, "receipt batch not written");
                        for msg in batch {
                            let _ = msg
                                .reply
                                .send(Err(AppError::unavailable("receipt could not be stored")));
                        }
                    }
                }
                act.write_receipts(ctx);
            }),
        );
    }

    /// Relays a written receipt to the other members and answers its sender.
    fn receipt_done(&self, msg: Receipt, result: AppResult<Option<convs::CursorMove>>) {
        let (id, user, kind) = (self.id, msg.user, msg.kind);
        let reply = match result {
            Ok(Some(moved)) => {
                let name = match kind {
                    ReceiptKind::Delivered => events::RECEIPT_DELIVERED,
                    ReceiptKind::Read => events::RECEIPT_READ,
                };
                let mut payload = json!({
                    "conversationId": id.to_string(),
                    "userId": user.to_string(),
                    "upTo": moved.up_to,
                    "at": moved.at,
                    "change": moved.change,
                });
                if let (Some(ids), Some(obj)) = (&moved.message_ids, payload.as_object_mut()) {
                    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                    obj.insert("messageIds".into(), json!(ids));
                }
                self.fan_out(
                    self.members.except(user),
                    ServerEvent::new(name, payload.clone()),
                    None,
                );
                if let Some(obj) = payload.as_object_mut() {
                    obj.insert("moved".into(), json!(true));
                }
                Ok(payload)
            }
            Ok(None) => Ok(json!({
                "conversationId": id.to_string(),
                "userId": user.to_string(),
                "moved": false,
            })),
            Err(e) => Err(e),
        };
        let _ = msg.reply.send(reply);
    }
}

impl Handler<ChangeMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: ChangeMessage, ctx: &mut Context<Self>) {
        self.touch();
        if let Err(e) = self.check_member(msg.actor.user_id) {
            // Moderators act on any conversation.
            if !msg.actor.moderator
                || matches!(e, AppError::NotFound(_) | AppError::Unavailable { .. })
            {
                let _ = msg.reply.send(Err(e));
                return;
            }
        }
        let db = self.engine.db.clone();
        let (message_id, actor, change, conversation) =
            (msg.message_id, msg.actor, msg.change, self.id);
        self.pending += 1;
        ctx.spawn(
            async move {
                db.run(move |conn| match change {
                    Change::Edit(text) => {
                        messages::edit(conn, message_id, conversation, actor, &text)
                            .map(|m| (m, true, events::MESSAGE_EDITED))
                    }
                    Change::Delete => messages::delete(conn, message_id, conversation, actor)
                        .map(|(m, fresh)| (m, fresh, events::MESSAGE_DELETED)),
                })
                .await
            }
            .into_actor(self)
            .map(move |res, act, _| {
                act.pending = act.pending.saturating_sub(1);
                let reply = res.map(|(m, fresh, event)| {
                    if fresh {
                        act.fan_out(
                            Arc::clone(&act.members.ids),
                            ServerEvent::new(event, json!(m.view())),
                            msg.origin,
                        );
                    }
                    m
                });
                let _ = msg.reply.send(reply);
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{missing_range, still_to_wait};
    use std::time::{Duration, Instant};

    #[test]
    fn a_gap_is_read_only_once_it_has_stood_for_the_whole_wait() {
        let wait = Duration::from_millis(50);
        let t0 = Instant::now();
        assert_eq!(still_to_wait(None, t0, wait), None, "nothing waits");
        // The timer of an earlier gap fires 10 ms after a newer one opened: 40 ms more.
        let opened = t0 + Duration::from_millis(40);
        assert_eq!(
            still_to_wait(Some(opened), opened + Duration::from_millis(10), wait),
            Some(Duration::from_millis(40))
        );
        assert_eq!(still_to_wait(Some(opened), opened + wait, wait), None);
        assert_eq!(still_to_wait(Some(t0), opened + wait, wait), None);
        // A clock that reads earlier than the arrival (never): the whole wait.
        assert_eq!(still_to_wait(Some(opened), t0, wait), Some(wait));
    }

    #[test]
    fn missing_range_spans_the_seqs_a_batch_leaves_out_above_the_mark() {
        assert_eq!(missing_range(9, &[]), None);
        assert_eq!(missing_range(9, &[10, 11, 12]), None);
        assert_eq!(missing_range(9, &[12]), Some((10, 11)));
        // Resends of part of a failed batch, then a new row: the others lie between.
        assert_eq!(missing_range(9, &[10, 13]), Some((11, 12)));
        assert_eq!(missing_range(9, &[11, 13, 14, 16]), Some((10, 15)));
    }
}
