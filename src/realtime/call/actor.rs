//! The call actor: owns one call's [`Call`] state, feeds it events, and performs the effects the
//! machine returns — notifications through the registry, persistence of every transition, timers
//! (run by the registry), and, when a 1:1 call ends, the call-log message in the pair's direct
//! conversation.

use super::ice;
use super::machine::{Call, Effect, Event, Outcome, PartyStatus, Refusal, Status, Target};
use crate::db::calls::{CallRow, ParticipantRow};
use crate::db::conversations as convs;
use crate::db::messages::Draft;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::realtime::events;
use crate::realtime::protocol::ServerEvent;
use crate::realtime::registry::{CallFinished, CallMembership, Registry, ScheduleCallTimer};
use crate::realtime::Engine;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Instant;

/// Facts about a call that the state machine does not need.
#[derive(Clone, Debug)]
pub(crate) struct CallMeta {
    /// `audio|video`.
    pub call_type: String,
    /// `webrtc|agora`.
    pub provider: String,
    /// Agora channel, when the provider is Agora.
    pub channel_name: Option<String>,
    /// Group conversation the call belongs to.
    pub conversation_id: Option<i64>,
    /// Caller's display name.
    pub caller_name: String,
    /// Caller's avatar.
    pub caller_avatar: Option<String>,
    /// Caller's kind of user (`user|astrologer|admin`, seed 002).
    pub caller_type: &'static str,
    /// Initial SDP offer.
    pub sdp_offer: Option<Value>,
}

/// Feed an event to a call.
#[derive(Message, Debug)]
#[rtype(result = "AppResult<()>")]
pub(crate) struct CallInput(pub Event);

/// The call actor.
pub struct CallActor {
    call: Call,
    meta: CallMeta,
    engine: Engine,
    registry: Addr<Registry>,
    /// When the call began, on the engine's clock (offsets and durations count from it).
    began: Instant,
    created_at: DateTime<Utc>,
    ringing_at: Option<DateTime<Utc>>,
    persisting: bool,
    dirty: bool,
    finishing: bool,
    /// The live state the metrics count this call in (`None` once ended).
    gauge_state: Option<&'static str>,
}

impl std::fmt::Debug for CallActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallActor")
            .field("id", &self.call.id)
            .field("status", &self.call.status)
            .finish()
    }
}

impl CallActor {
    /// A new call actor; the registry sends it `Start`.
    pub(crate) fn new(
        call: Call,
        meta: CallMeta,
        engine: Engine,
        registry: Addr<Registry>,
    ) -> Self {
        let (began, created_at) = (engine.clock.instant(), engine.clock.now());
        Self {
            call,
            meta,
            engine,
            registry,
            began,
            created_at,
            ringing_at: None,
            persisting: false,
            dirty: false,
            finishing: false,
            gauge_state: None,
        }
    }

    fn now(&self) -> i64 {
        let elapsed = self
            .engine
            .clock
            .instant()
            .saturating_duration_since(self.began);
        i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
    }

    fn at(&self, offset: Option<i64>) -> Option<DateTime<Utc>> {
        offset.map(|s| self.created_at + chrono::Duration::seconds(s))
    }

    /// The `call:incoming` payload for one callee (ICE credentials are per user).
    pub(crate) fn incoming_for(&self, user: i64) -> Value {
        let token_for = |uid| {
            self.meta.channel_name.as_deref().and_then(|channel| {
                super::agora::rtc_token_for(&self.engine.config, channel, uid).and_then(Result::ok)
            })
        };
        json!({
            "agoraToken": token_for(super::agora::uid_of(user)),
            "agoraAnyUidToken": token_for(super::agora::ANY_UID),
            "fromType": self.meta.caller_type,
            "agoraUid": self.meta.channel_name.as_ref().map(|_| super::agora::uid_of(user)),
            "appId": self.meta.channel_name.as_ref().map(|_| self.engine.config.agora_app_id.clone()),
            "callId": self.call.id,
            "from": self.call.caller.to_string(),
            "fromName": self.meta.caller_name,
            "fromAvatar": self.meta.caller_avatar,
            "callType": self.meta.call_type,
            "sdpOffer": self.meta.sdp_offer,
            "provider": self.meta.provider,
            "channelName": self.meta.channel_name,
            "group": self.call.group,
            "conversationId": self.meta.conversation_id.map(|c| c.to_string()),
            "participants": self.call.parties.keys().map(ToString::to_string).collect::<Vec<_>>(),
            "iceServers": ice::ice_servers(&self.engine.config, user, None),
        })
    }

    fn snapshot(&self) -> (CallRow, Vec<ParticipantRow>) {
        let status = self.call.status;
        let row = CallRow {
            id: self.call.id.clone(),
            kind: if self.call.group { "group" } else { "direct" }.into(),
            call_type: self.meta.call_type.clone(),
            provider: self.meta.provider.clone(),
            channel_name: self.meta.channel_name.clone(),
            caller_id: Some(self.call.caller),
            conversation_id: self.meta.conversation_id,
            status: status.as_str().into(),
            end_reason: self.call.end_reason.clone(),
            ended_by: self.call.ended_by,
            created_at: self.created_at,
            ringing_at: self.ringing_at,
            answered_at: self.at(self.call.answered_at),
            ended_at: self.at(self.call.ended_at),
            duration_secs: self
                .call
                .ended_at
                .map(|_| i32::try_from(self.call.duration()).unwrap_or(i32::MAX)),
        };
        let parties = self
            .call
            .parties
            .iter()
            .map(|(u, p)| ParticipantRow {
                call_id: self.call.id.clone(),
                user_id: *u,
                role: if *u == self.call.caller {
                    "caller"
                } else {
                    "callee"
                }
                .into(),
                status: p.status.as_str().into(),
                device_session_id: None,
                invited_at: self.created_at,
                joined_at: self.at(p.joined_at),
                left_at: self.at(p.left_at),
            })
            .collect();
        (row, parties)
    }

    /// Writes the latest state; writes never overlap and the last one always carries the
    /// latest state.
    fn persist(&mut self, ctx: &mut Context<Self>) {
        if self.persisting {
            self.dirty = true;
            return;
        }
        self.persisting = true;
        self.dirty = false;
        let (row, parties) = self.snapshot();
        let store = self.engine.call_store.clone();
        ctx.spawn(
            async move { store.save(row, parties).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.persisting = false;
                    if let Err(e) = res {
                        tracing::warn!(call = %act.call.id, error = %e, "could not persist call state");
                    }
                    if act.dirty {
                        act.persist(ctx);
                    } else if act.finishing {
                        act.finish(ctx);
                    }
                }),
        );
    }

    fn deliver(&self, target: Target, name: &'static str, payload: Value) {
        match target {
            Target::User(u) => {
                let payload = match name {
                    events::CALL_INCOMING => self.incoming_for(u),
                    // The caller's ICE servers ride along with the answer (seed 001).
                    events::CALL_ACCEPTED => {
                        let mut payload = payload;
                        if let Some(obj) = payload.as_object_mut() {
                            obj.insert(
                                "iceServers".into(),
                                ice::ice_servers(&self.engine.config, u, None),
                            );
                        }
                        payload
                    }
                    _ => payload,
                };
                // Straight into the user's sessions' queues: no actor hop before the ring.
                self.engine
                    .delivery
                    .deliver(&[u], &ServerEvent::new(name, payload), None);
            }
            Target::UserExcept(u, key) => {
                self.engine
                    .delivery
                    .deliver(&[u], &ServerEvent::new(name, payload), Some(key));
            }
            Target::Device(u, key) => {
                let payload = match name {
                    events::CALL_INCOMING => self.incoming_for(u),
                    _ => payload,
                };
                self.engine
                    .delivery
                    .deliver_to_session(u, key, &ServerEvent::new(name, payload));
            }
        }
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) -> AppResult<()> {
        let joined_before: Vec<i64> = self.joined();
        let now = self.now();
        let effects = self.call.step(event, now).map_err(|r| match r {
            Refusal::NotAParty => AppError::Forbidden("you are not part of this call".into()),
            Refusal::InvalidState(why) => AppError::conflict(ErrorCode::InvalidCallState, why),
        })?;
        self.track_state();
        if self.ringing_at.is_none()
            && matches!(self.call.status, Status::Ringing | Status::Ongoing)
        {
            self.ringing_at = Some(self.engine.clock.now());
        }
        // Busy bookkeeping: joined members are busy, leavers are not (1:1 parties count as busy
        // from the first ring; a join also tells the registry the call was answered).
        {
            let joined_after = self.joined();
            for u in joined_after.iter().filter(|u| !joined_before.contains(u)) {
                self.registry.do_send(CallMembership {
                    call_id: self.call.id.clone(),
                    user_id: *u,
                    active: true,
                });
            }
            for u in joined_before.iter().filter(|u| !joined_after.contains(u)) {
                self.registry.do_send(CallMembership {
                    call_id: self.call.id.clone(),
                    user_id: *u,
                    active: false,
                });
            }
        }
        if effects.iter().any(|e| matches!(e, Effect::Finish)) {
            // The registry frees the parties before anyone hears that the call ended (its
            // mailbox is in order): a party who calls again at once is not found still busy.
            self.registry.do_send(CallFinished {
                call_id: self.call.id.clone(),
            });
            // In cluster mode the parties are freed cluster-wide first, too: a party calling
            // again at once through another node is not found busy. (This actor's mailbox
            // waits meanwhile.)
            if let Some(cluster) = self.engine.cluster.clone() {
                let id = self.call.id.clone();
                ctx.wait(
                    async move { cluster.release_call_now(&id).await }
                        .into_actor(self)
                        .map(move |(), act, ctx| act.perform(effects, ctx)),
                );
                return Ok(());
            }
        }
        self.perform(effects, ctx);
        Ok(())
    }

    /// Performs a step's effects.
    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Notify(target, name, payload) => self.deliver(target, name, payload),
                Effect::Persist => self.persist(ctx),
                Effect::StartRingTimer => self.registry.do_send(ScheduleCallTimer {
                    call_id: self.call.id.clone(),
                    after: self.engine.config.ring_timeout,
                    event: Event::RingTimeout,
                }),
                Effect::StartGrace(user) => self.registry.do_send(ScheduleCallTimer {
                    call_id: self.call.id.clone(),
                    after: self.engine.config.call_reconnect_grace,
                    event: Event::GraceExpired { user },
                }),
                Effect::Finish => {
                    tracing::info!(call = %self.call.id, status = self.call.status.as_str(), reason = ?self.call.end_reason, "call finished");
                    self.finishing = true;
                    self.post_call_log();
                }
            }
        }
        if self.finishing && !self.persisting {
            self.finish(ctx);
        }
    }

    /// Moves this call between the live-call gauges; counts its outcome once it ended.
    fn track_state(&mut self) {
        let metrics = &self.engine.metrics;
        match self.call.status {
            Status::Ended(outcome) => {
                if let Some(from) = self.gauge_state.take() {
                    metrics.call_state(Some(from), None);
                    metrics.call_ended(outcome.as_str(), self.call.end_reason.as_deref());
                }
            }
            live => {
                let now = live.as_str();
                if self.gauge_state != Some(now) {
                    metrics.call_state(self.gauge_state, Some(now));
                    self.gauge_state = Some(now);
                }
            }
        }
    }

    fn joined(&self) -> Vec<i64> {
        self.call
            .parties
            .iter()
            .filter(|(_, p)| p.status == PartyStatus::Joined)
            .map(|(u, _)| *u)
            .collect()
    }

    fn finish(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }

    /// The seed 000 call log: a message in the pair's direct conversation.
    fn post_call_log(&mut self) {
        if self.call.group {
            return;
        }
        let Some(callee) = self
            .call
            .parties
            .keys()
            .copied()
            .find(|u| *u != self.call.caller)
        else {
            return;
        };
        let Status::Ended(outcome) = self.call.status else {
            return;
        };
        let caller = self.call.caller;
        let duration = self.call.duration();
        let video = self.meta.call_type == "video";
        let draft_meta = json!({
            "callId": self.call.id,
            "duration": duration,
            "from": caller.to_string(),
            "to": callee.to_string(),
            "endTime": self.engine.clock.now(),
            "status": outcome.as_str(),
            "reason": self.call.end_reason,
            "callType": self.meta.call_type,
        });
        let content = call_log_text(video, outcome, self.call.answered_at.is_some(), duration);
        let engine = self.engine.clone();
        let call_id = self.call.id.clone();
        // Detached: the actor stops right after the call ends, the log must still be written.
        actix::spawn(async move {
            let result = async {
                // The pair's conversation, from the cache when a call of theirs found it.
                let cache = engine.db.contact_cache();
                let conversation = match cache.direct(caller, callee) {
                    Some(id) => id,
                    None => {
                        let ticket = cache.ticket();
                        let (conv, created) = engine
                            .db
                            .run(move |conn| convs::get_or_create_direct(conn, caller, callee))
                            .await?;
                        if created {
                            cache.direct_created(conv.id, caller, callee);
                            engine.members_changed(conv.id, vec![caller, callee]);
                        } else {
                            cache.note_direct(ticket, caller, callee, conv.id);
                        }
                        conv.id
                    }
                };
                engine
                    .post_system_message(Draft {
                        conversation_id: conversation,
                        sender_id: Some(caller),
                        kind: if video { "video_call" } else { "voice_call" }.into(),
                        content,
                        media_url: None,
                        media_id: None,
                        media: None,
                        reply_to_id: None,
                        recipient_id: None,
                        metadata: Some(draft_meta),
                        client_message_id: None,
                    })
                    .await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(call = %call_id, error = %e, "could not post the call log");
            }
        });
    }
}

/// `📞 Call - 1:05`, `📹 Call - 1:02:03`, or a missed/declined/cancelled text.
pub(crate) fn call_log_text(
    video: bool,
    outcome: Outcome,
    answered: bool,
    duration: i64,
) -> String {
    let icon = if video { "📹" } else { "📞" };
    let kind = if video { "video call" } else { "call" };
    if answered {
        return format!("{icon} Call - {}", format_duration(duration));
    }
    match outcome {
        Outcome::Missed => format!("{icon} Missed {kind}"),
        Outcome::Rejected => format!("{icon} Declined {kind}"),
        Outcome::Cancelled => format!("{icon} Cancelled {kind}"),
        Outcome::Ended => format!("{icon} Failed {kind}"),
    }
}

/// `m:ss`, or `h:mm:ss` from one hour on.
pub(crate) fn format_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

impl Actor for CallActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.track_state();
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        // Its last write has landed (or it never ended): REST reads go to the database now.
        self.engine.calls.remove(&self.call.id, &ctx.address());
        // A call actor that stops without an outcome leaves the gauges all the same.
        if let Some(from) = self.gauge_state.take() {
            self.engine.metrics.call_state(Some(from), None);
        }
    }
}

/// The call's record as it stands in memory (what the next write will store): REST reads of a
/// call whose first write has not landed yet (calls ring before anything is written).
#[derive(Message, Debug)]
#[rtype(result = "(CallRow, Vec<ParticipantRow>)")]
pub(crate) struct CurrentRecord;

impl Handler<CurrentRecord> for CallActor {
    type Result = MessageResult<CurrentRecord>;

    fn handle(&mut self, _: CurrentRecord, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<CallInput> for CallActor {
    type Result = AppResult<()>;
    fn handle(&mut self, msg: CallInput, ctx: &mut Context<Self>) -> AppResult<()> {
        let span = tracing::info_span!("call", call_id = %self.call.id);
        let _entered = span.enter();
        if self.finishing {
            return Err(AppError::NotFound("call not found or already ended".into()));
        }
        self.apply(msg.0, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn call_log_texts_follow_the_seed_format() {
        assert_eq!(
            call_log_text(false, Outcome::Ended, true, 65),
            "📞 Call - 1:05"
        );
        assert_eq!(
            call_log_text(true, Outcome::Ended, true, 3723),
            "📹 Call - 1:02:03"
        );
        assert_eq!(
            call_log_text(false, Outcome::Missed, false, 0),
            "📞 Missed call"
        );
        assert_eq!(
            call_log_text(true, Outcome::Rejected, false, 0),
            "📹 Declined video call"
        );
        assert_eq!(format_duration(0), "0:00");
        assert_eq!(format_duration(3600), "1:00:00");
    }
}
