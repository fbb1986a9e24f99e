//! The call state machine: a pure function `(state, event) -> effects`. It knows nothing about
//! actors, sockets or the database; the call actor performs the effects it returns.
//!
//! One call has a caller and one (1:1) or more (group) callees. Every participant has a status
//! and, once they joined, one bound device (session key): signaling is relayed only between
//! bound devices. Outcomes follow the product's vocabulary: `ended`, `rejected`, `missed`,
//! `busy`, `cancelled`, `failed`.

use crate::realtime::events;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

/// Most ICE candidates buffered for a callee that has not accepted yet.
pub(crate) const MAX_EARLY_ICE: usize = 64;

/// Call status as persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Created, no callee device reached yet.
    Initiated,
    /// At least one callee device is ringing.
    Ringing,
    /// Answered: media flowing between bound devices.
    Ongoing,
    /// Finished with an outcome.
    Ended(Outcome),
}

/// How a call finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It was answered and later hung up (any reason).
    Ended,
    /// The callee declined.
    Rejected,
    /// Nobody answered in time.
    Missed,
    /// The caller hung up before an answer.
    Cancelled,
}

impl Outcome {
    /// The persisted status string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::Rejected => "rejected",
            Self::Missed => "missed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl Status {
    /// The persisted status string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::Ongoing => "ongoing",
            Self::Ended(o) => o.as_str(),
        }
    }
}

/// A participant's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartyStatus {
    /// Invited; no device reached yet.
    Invited,
    /// Ringing on at least one device.
    Ringing,
    /// In the call on a bound device.
    Joined,
    /// Joined earlier, now gone.
    Left,
    /// Declined.
    Rejected,
    /// Never answered.
    Missed,
    /// The call was called off before they answered.
    Cancelled,
}

impl PartyStatus {
    /// The persisted status string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Invited => "invited",
            Self::Ringing => "ringing",
            Self::Joined => "joined",
            Self::Left => "left",
            Self::Rejected => "rejected",
            Self::Missed => "missed",
            Self::Cancelled => "cancelled",
        }
    }

    fn still_ringing(self) -> bool {
        matches!(self, Self::Invited | Self::Ringing)
    }
}

/// One participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Party {
    /// Status.
    pub status: PartyStatus,
    /// Bound device (session key) while joined.
    pub device: Option<u64>,
    /// The bound device dropped and a reconnect grace runs.
    pub reconnecting: bool,
    /// Seconds since the call started when they joined.
    pub joined_at: Option<i64>,
    /// Seconds since the call started when they left.
    pub left_at: Option<i64>,
}

impl Party {
    fn new(status: PartyStatus, device: Option<u64>) -> Self {
        Self {
            status,
            device,
            reconnecting: false,
            joined_at: None,
            left_at: None,
        }
    }
}

/// The whole state of a call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    /// Call id.
    pub id: String,
    /// Group call (several callees, mesh signaling addressed with `to`).
    pub group: bool,
    /// The caller.
    pub caller: i64,
    /// Status.
    pub status: Status,
    /// Participants, caller included.
    pub parties: BTreeMap<i64, Party>,
    /// When it was answered (seconds on the call's clock).
    pub answered_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it.
    pub ended_by: Option<i64>,
    /// ICE candidates from the caller before anyone accepted (bounded).
    pub early_ice: VecDeque<Value>,
    /// Whether the caller was told `call:ringing`.
    pub ringing_announced: bool,
}

/// Who receives a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Every device of a user.
    User(i64),
    /// Every device of a user but one.
    UserExcept(i64, u64),
    /// One device.
    Device(i64, u64),
}

/// What the actor must do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Effect {
    /// Send a canonical event.
    Notify(Target, &'static str, Value),
    /// Write the call and participants as they are now.
    Persist,
    /// Start (or restart) the ring timer.
    StartRingTimer,
    /// Start the reconnect grace for a user.
    StartGrace(i64),
    /// The call is over: release busy state, write the call log, stop the actor.
    Finish,
}

/// Inputs to the machine. `now` is seconds on the call's clock (since it was created).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// The call was created and the callees are being rung.
    Start {
        /// The invitation payload for callees (`call:incoming`).
        incoming: Value,
        /// Callees with at least one live device.
        reachable: Vec<i64>,
    },
    /// A callee accepted on a device.
    Accept {
        /// User.
        user: i64,
        /// Device.
        device: u64,
        /// SDP answer, if any.
        answer: Option<Value>,
    },
    /// A callee declined.
    Reject {
        /// User.
        user: i64,
        /// Reason text.
        reason: Option<String>,
    },
    /// A participant hangs up.
    Hangup {
        /// User.
        user: i64,
        /// Reason text (defaults to `hangup`).
        reason: Option<String>,
    },
    /// Signaling between bound devices.
    Signal {
        /// Sender.
        user: i64,
        /// Sending device.
        device: u64,
        /// `call:offer`, `call:answer` or `call:ice`.
        kind: &'static str,
        /// Recipient (group calls; 1:1 calls infer the other party).
        to: Option<i64>,
        /// What to relay.
        payload: Value,
    },
    /// The ring timer fired.
    RingTimeout,
    /// A device of a participant went away.
    DeviceGone {
        /// User.
        user: i64,
        /// Device.
        device: u64,
        /// Whether the app can come back to the call from a new connection (`call:rejoin`).
        /// One that cannot (seed 004 follows one unnamed call per connection) gets no grace.
        rejoins: bool,
    },
    /// The reconnect grace for a user ran out.
    GraceExpired {
        /// User.
        user: i64,
    },
    /// The user came back on a device and asks to resume.
    Rejoin {
        /// User.
        user: i64,
        /// New device.
        device: u64,
    },
    /// A device that dropped came back as `device` (a recovered Socket.IO session): it takes
    /// the user's place again only if the user was in the call on `from` and is still being
    /// waited for.
    Resume {
        /// User.
        user: i64,
        /// The device that dropped.
        from: u64,
        /// The device it came back as.
        device: u64,
    },
    /// Rings a device again with the invitation, if its user is still being rung (a recovered
    /// session may have missed `call:incoming`).
    Ring {
        /// User.
        user: i64,
        /// Device.
        device: u64,
    },
    /// Ended from outside (admin, shutdown).
    Terminate {
        /// Reason (`admin`, `server_shutdown`).
        reason: String,
        /// Acting user, if any.
        by: Option<i64>,
    },
}

/// Why an event was refused (the actor answers it as an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The user is not a party of this call.
    NotAParty,
    /// The event does not fit the current state.
    InvalidState(&'static str),
}

impl Call {
    /// A new call from `caller` (on `device`) to `callees`.
    pub(crate) fn new(id: String, caller: i64, device: u64, callees: &[i64], group: bool) -> Self {
        let mut parties = BTreeMap::new();
        let mut me = Party::new(PartyStatus::Joined, Some(device));
        me.joined_at = Some(0);
        parties.insert(caller, me);
        for c in callees {
            if *c != caller {
                parties.insert(*c, Party::new(PartyStatus::Invited, None));
            }
        }
        Self {
            id,
            group,
            caller,
            status: Status::Initiated,
            parties,
            answered_at: None,
            ended_at: None,
            end_reason: None,
            ended_by: None,
            early_ice: VecDeque::new(),
            ringing_announced: false,
        }
    }

    /// Seconds between answer and end (0 when never answered).
    pub(crate) fn duration(&self) -> i64 {
        match (self.answered_at, self.ended_at) {
            (Some(a), Some(e)) => (e - a).max(0),
            _ => 0,
        }
    }

    /// Whether the call is over.
    pub(crate) fn is_over(&self) -> bool {
        matches!(self.status, Status::Ended(_))
    }

    fn callees(&self) -> impl Iterator<Item = i64> + '_ {
        self.parties
            .keys()
            .copied()
            .filter(move |u| *u != self.caller)
    }

    fn joined(&self) -> Vec<i64> {
        self.parties
            .iter()
            .filter(|(_, p)| p.status == PartyStatus::Joined)
            .map(|(u, _)| *u)
            .collect()
    }

    fn ids(&self) -> Value {
        json!({"callId": self.id})
    }

    fn base(&self, extra: Value) -> Value {
        let mut v = self.ids();
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        v
    }

    /// A signal as its recipient gets it: the payload plus the call and the sender.
    fn relayed(&self, user: i64, payload: Value) -> Value {
        let mut relayed = payload;
        if let Some(obj) = relayed.as_object_mut() {
            obj.insert("callId".into(), Value::String(self.id.clone()));
            obj.insert("from".into(), Value::String(user.to_string()));
        }
        relayed
    }

    fn finish(
        &mut self,
        outcome: Outcome,
        reason: &str,
        by: Option<i64>,
        now: i64,
        fx: &mut Vec<Effect>,
    ) {
        self.status = Status::Ended(outcome);
        self.ended_at = Some(now);
        self.end_reason = Some(reason.to_owned());
        self.ended_by = by;
        let party_end = match outcome {
            Outcome::Missed => PartyStatus::Missed,
            Outcome::Rejected => PartyStatus::Rejected,
            _ => PartyStatus::Cancelled,
        };
        for p in self.parties.values_mut() {
            if p.status == PartyStatus::Joined {
                p.status = PartyStatus::Left;
                p.left_at = Some(now);
            } else if p.status.still_ringing() {
                p.status = party_end;
            }
            p.device = None;
        }
        fx.push(Effect::Persist);
        fx.push(Effect::Finish);
    }

    /// Everyone involved is told the call ended.
    fn notify_ended(&self, fx: &mut Vec<Effect>) {
        let payload = self.base(json!({
            "reason": self.end_reason,
            "status": self.status.as_str(),
            "duration": self.duration(),
            "endedBy": self.ended_by.map(|u| u.to_string()),
        }));
        for u in self.parties.keys() {
            fx.push(Effect::Notify(
                Target::User(*u),
                events::CALL_ENDED,
                payload.clone(),
            ));
        }
    }

    /// Applies one event. `Err` refuses it without changing anything.
    pub(crate) fn step(&mut self, event: Event, now: i64) -> Result<Vec<Effect>, Refusal> {
        let mut fx = Vec::new();
        if self.is_over() {
            return match event {
                Event::DeviceGone { .. } | Event::GraceExpired { .. } | Event::RingTimeout => {
                    Ok(fx)
                }
                _ => Err(Refusal::InvalidState("the call has ended")),
            };
        }
        match event {
            Event::Start {
                incoming,
                reachable,
            } => {
                for callee in self.callees().collect::<Vec<_>>() {
                    fx.push(Effect::Notify(
                        Target::User(callee),
                        events::CALL_INCOMING,
                        incoming.clone(),
                    ));
                }
                if !reachable.is_empty() {
                    self.status = Status::Ringing;
                    for u in reachable {
                        if let Some(p) = self.parties.get_mut(&u) {
                            p.status = PartyStatus::Ringing;
                        }
                    }
                    self.ringing_announced = true;
                    fx.push(Effect::Notify(
                        Target::User(self.caller),
                        events::CALL_RINGING,
                        self.ids(),
                    ));
                }
                fx.push(Effect::StartRingTimer);
                fx.push(Effect::Persist);
            }
            Event::Accept {
                user,
                device,
                answer,
            } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if user == self.caller {
                    return Err(Refusal::InvalidState(
                        "the caller cannot accept their own call",
                    ));
                }
                if !party.status.still_ringing() {
                    return Err(Refusal::InvalidState("this call is not ringing for you"));
                }
                if !self.group && self.status == Status::Ongoing {
                    return Err(Refusal::InvalidState("the call was already answered"));
                }
                if let Some(p) = self.parties.get_mut(&user) {
                    p.status = PartyStatus::Joined;
                    p.device = Some(device);
                    p.joined_at = Some(now);
                }
                if self.status != Status::Ongoing {
                    self.status = Status::Ongoing;
                    self.answered_at = Some(now);
                }
                let accepted = self.base(json!({"by": user.to_string(), "sdpAnswer": answer}));
                fx.push(Effect::Notify(
                    Target::UserExcept(user, device),
                    events::CALL_ANSWERED_ELSEWHERE,
                    self.ids(),
                ));
                if self.group {
                    // The accept answers the caller's offer: the caller gets the answer (seed
                    // 001's `call:answer{sdpAnswer}`), every member in the call the new face.
                    if self
                        .parties
                        .get(&self.caller)
                        .is_some_and(|p| p.status == PartyStatus::Joined)
                    {
                        fx.push(Effect::Notify(
                            Target::User(self.caller),
                            events::CALL_ACCEPTED,
                            accepted,
                        ));
                    }
                    for other in self.joined().into_iter().filter(|u| *u != user) {
                        fx.push(Effect::Notify(
                            Target::User(other),
                            events::CALL_PARTICIPANT_JOINED,
                            self.base(json!({"userId": user.to_string()})),
                        ));
                    }
                    fx.push(Effect::Notify(Target::Device(user, device), events::CALL_PARTICIPANTS, self.base(json!({
                        "participants": self.joined().iter().map(ToString::to_string).collect::<Vec<_>>()
                    }))));
                } else {
                    fx.push(Effect::Notify(
                        Target::User(self.caller),
                        events::CALL_ACCEPTED,
                        accepted,
                    ));
                }
                // Candidates the caller gathered before the answer go to the accepting device.
                for cand in self.early_ice.drain(..) {
                    fx.push(Effect::Notify(
                        Target::Device(user, device),
                        events::CALL_ICE,
                        cand,
                    ));
                }
                fx.push(Effect::Persist);
            }
            Event::Reject { user, reason } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if user == self.caller || !party.status.still_ringing() {
                    return Err(Refusal::InvalidState("this call is not ringing for you"));
                }
                if let Some(p) = self.parties.get_mut(&user) {
                    p.status = PartyStatus::Rejected;
                }
                // Apps show the reason; a decline without one says so.
                let payload = self.base(json!({
                    "by": user.to_string(),
                    "reason": reason.as_deref().unwrap_or("rejected"),
                }));
                fx.push(Effect::Notify(
                    Target::User(user),
                    events::CALL_REJECTED,
                    payload.clone(),
                ));
                if self.group {
                    for other in self.joined() {
                        fx.push(Effect::Notify(
                            Target::User(other),
                            events::CALL_PARTICIPANT_REJECTED,
                            payload.clone(),
                        ));
                    }
                    self.settle_group(now, &mut fx);
                    if !self.is_over() {
                        fx.push(Effect::Persist);
                    }
                } else {
                    fx.push(Effect::Notify(
                        Target::User(self.caller),
                        events::CALL_REJECTED,
                        payload,
                    ));
                    self.finish(
                        Outcome::Rejected,
                        reason.as_deref().unwrap_or("rejected"),
                        Some(user),
                        now,
                        &mut fx,
                    );
                }
            }
            Event::Hangup { user, reason } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?.clone();
                let reason = reason.unwrap_or_else(|| "hangup".into());
                if self.status != Status::Ongoing {
                    if user == self.caller {
                        // Called off before an answer.
                        for callee in self.callees().collect::<Vec<_>>() {
                            fx.push(Effect::Notify(
                                Target::User(callee),
                                events::CALL_CANCELLED,
                                self.base(json!({"reason": "cancelled"})),
                            ));
                        }
                        self.finish(Outcome::Cancelled, "cancelled", Some(user), now, &mut fx);
                        fx.insert(0, Effect::Notify(Target::User(user), events::CALL_ENDED, self.base(json!({"reason": "cancelled", "status": "cancelled", "duration": 0}))));
                        return Ok(fx);
                    }
                    // A callee hanging up while it rings declines it.
                    return self.step(
                        Event::Reject {
                            user,
                            reason: Some(reason),
                        },
                        now,
                    );
                }
                if self.group {
                    if party.status != PartyStatus::Joined {
                        if party.status.still_ringing() {
                            return self.step(
                                Event::Reject {
                                    user,
                                    reason: Some(reason),
                                },
                                now,
                            );
                        }
                        return Err(Refusal::InvalidState("you are not in this call"));
                    }
                    if let Some(p) = self.parties.get_mut(&user) {
                        p.status = PartyStatus::Left;
                        p.device = None;
                        p.left_at = Some(now);
                    }
                    fx.push(Effect::Notify(
                        Target::User(user),
                        events::CALL_ENDED,
                        self.base(json!({"reason": reason, "status": "left"})),
                    ));
                    for other in self.joined() {
                        fx.push(Effect::Notify(
                            Target::User(other),
                            events::CALL_PARTICIPANT_LEFT,
                            self.base(json!({"userId": user.to_string(), "reason": reason})),
                        ));
                    }
                    self.settle_group(now, &mut fx);
                    if !self.is_over() {
                        fx.push(Effect::Persist);
                    }
                } else {
                    self.finish(Outcome::Ended, &reason, Some(user), now, &mut fx);
                    self.notify_ended(&mut fx);
                }
            }
            Event::Signal {
                user,
                device,
                kind,
                to,
                payload,
            } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if party.device != Some(device) {
                    return Err(Refusal::InvalidState("this device is not in the call"));
                }
                // A group signal without `to` (apps written for 1:1 signaling, seed 001's
                // `ice:candidate`) follows the offer: a member's goes to the caller whose offer it
                // answered, the caller's to every member in the call.
                let targets: Vec<i64> = match to {
                    Some(t) if self.group || t != user => vec![t],
                    _ if self.group && user != self.caller => vec![self.caller],
                    _ if self.group => {
                        let joined: Vec<i64> =
                            self.joined().into_iter().filter(|u| *u != user).collect();
                        if joined.is_empty() {
                            // Nobody answered yet: early candidates wait for the first answer.
                            let ringing = self.parties.values().any(|p| p.status.still_ringing());
                            if kind == events::CALL_ICE && ringing {
                                if self.early_ice.len() < MAX_EARLY_ICE {
                                    self.early_ice.push_back(self.relayed(user, payload));
                                }
                                return Ok(fx);
                            }
                            return Err(Refusal::InvalidState("the other party is not connected"));
                        }
                        joined
                    }
                    _ => vec![self
                        .callees()
                        .find(|u| *u != user)
                        .map_or(self.caller, |callee| {
                            if user == self.caller {
                                callee
                            } else {
                                self.caller
                            }
                        })],
                };
                let relayed = self.relayed(user, payload);
                let broadcast = targets.len() > 1;
                for target in targets {
                    let dest = self.parties.get(&target).ok_or(Refusal::NotAParty)?;
                    match dest.device {
                        // A member whose device dropped misses a broadcast, not the others.
                        _ if broadcast && (dest.device.is_none() || dest.reconnecting) => {}
                        Some(d) if !dest.reconnecting => fx.push(Effect::Notify(
                            Target::Device(target, d),
                            kind,
                            relayed.clone(),
                        )),
                        _ if kind == events::CALL_ICE
                            && user == self.caller
                            && dest.status.still_ringing() =>
                        {
                            if self.early_ice.len() < MAX_EARLY_ICE {
                                self.early_ice.push_back(relayed.clone());
                            }
                        }
                        _ => return Err(Refusal::InvalidState("the other party is not connected")),
                    }
                }
            }
            Event::RingTimeout => {
                if self.status == Status::Ongoing {
                    // Group: whoever still rings has missed it.
                    let mut changed = false;
                    for (u, p) in self.parties.iter_mut() {
                        if p.status.still_ringing() {
                            p.status = PartyStatus::Missed;
                            fx.push(Effect::Notify(
                                Target::User(*u),
                                events::CALL_MISSED,
                                json!({"callId": self.id}),
                            ));
                            changed = true;
                        }
                    }
                    if changed {
                        fx.push(Effect::Persist);
                    }
                } else {
                    for callee in self.callees().collect::<Vec<_>>() {
                        fx.push(Effect::Notify(
                            Target::User(callee),
                            events::CALL_MISSED,
                            self.ids(),
                        ));
                    }
                    fx.push(Effect::Notify(
                        Target::User(self.caller),
                        events::CALL_MISSED,
                        self.ids(),
                    ));
                    self.finish(Outcome::Missed, "no_answer", None, now, &mut fx);
                }
            }
            Event::DeviceGone {
                user,
                device,
                rejoins,
            } => {
                let Some(party) = self.parties.get(&user) else {
                    return Ok(fx);
                };
                if party.device != Some(device) {
                    return Ok(fx);
                }
                if self.status != Status::Ongoing && user == self.caller {
                    // The caller vanished while it rang: call it off.
                    return self.step(
                        Event::Hangup {
                            user,
                            reason: Some("cancelled".into()),
                        },
                        now,
                    );
                }
                if let Some(p) = self.parties.get_mut(&user) {
                    p.reconnecting = true;
                }
                if !rejoins {
                    // Nothing to wait for: the device is out of the call as its grace would
                    // leave it.
                    return self.step(Event::GraceExpired { user }, now);
                }
                for other in self.joined().into_iter().filter(|u| *u != user) {
                    fx.push(Effect::Notify(
                        Target::User(other),
                        events::CALL_PEER_RECONNECTING,
                        self.base(json!({"userId": user.to_string()})),
                    ));
                }
                fx.push(Effect::StartGrace(user));
            }
            Event::GraceExpired { user } => {
                let Some(party) = self.parties.get(&user) else {
                    return Ok(fx);
                };
                if !party.reconnecting {
                    return Ok(fx);
                }
                if self.group {
                    return self.step(
                        Event::Hangup {
                            user,
                            reason: Some("network_error".into()),
                        },
                        now,
                    );
                }
                self.finish(Outcome::Ended, "network_error", Some(user), now, &mut fx);
                self.notify_ended(&mut fx);
            }
            Event::Rejoin { user, device } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if party.status != PartyStatus::Joined {
                    return Err(Refusal::InvalidState("you are not in this call"));
                }
                if let Some(p) = self.parties.get_mut(&user) {
                    p.device = Some(device);
                    p.reconnecting = false;
                }
                for other in self.joined().into_iter().filter(|u| *u != user) {
                    fx.push(Effect::Notify(
                        Target::User(other),
                        events::CALL_PEER_REJOINED,
                        self.base(json!({"userId": user.to_string()})),
                    ));
                }
                fx.push(Effect::Notify(Target::Device(user, device), events::CALL_REJOINED, self.base(json!({
                    "participants": self.joined().iter().map(ToString::to_string).collect::<Vec<_>>()
                }))));
                fx.push(Effect::Persist);
            }
            Event::Resume { user, from, device } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if party.device != Some(from) || !party.reconnecting {
                    return Err(Refusal::InvalidState(
                        "that device is not away from this call",
                    ));
                }
                return self.step(Event::Rejoin { user, device }, now);
            }
            Event::Ring { user, device } => {
                let party = self.parties.get(&user).ok_or(Refusal::NotAParty)?;
                if user == self.caller || !party.status.still_ringing() {
                    return Err(Refusal::InvalidState("you are not being rung"));
                }
                // The invitation is built for its recipient where the call's effects run.
                fx.push(Effect::Notify(
                    Target::Device(user, device),
                    events::CALL_INCOMING,
                    Value::Null,
                ));
            }
            Event::Terminate { reason, by } => {
                let outcome = if self.status == Status::Ongoing {
                    Outcome::Ended
                } else {
                    Outcome::Cancelled
                };
                self.finish(outcome, &reason, by, now, &mut fx);
                self.notify_ended(&mut fx);
            }
        }
        Ok(fx)
    }

    /// Group calls end when fewer than two remain and nobody is still being rung, or when
    /// nobody joined and nobody rings any more.
    fn settle_group(&mut self, now: i64, fx: &mut Vec<Effect>) {
        let joined = self.joined().len();
        let ringing = self
            .parties
            .values()
            .filter(|p| p.status.still_ringing())
            .count();
        if self.status == Status::Ongoing {
            if joined < 2 && ringing == 0 {
                self.finish(Outcome::Ended, "everyone_left", None, now, fx);
                self.notify_ended(fx);
            }
        } else if ringing == 0 {
            let any_rejected = self
                .parties
                .values()
                .any(|p| p.status == PartyStatus::Rejected);
            let outcome = if any_rejected {
                Outcome::Rejected
            } else {
                Outcome::Missed
            };
            self.finish(outcome, outcome.as_str(), None, now, fx);
            self.notify_ended(fx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const A: i64 = 1;
    const B: i64 = 2;
    const C: i64 = 3;

    fn started(group: bool, callees: &[i64]) -> Call {
        let mut call = Call::new("c1".into(), A, 10, callees, group);
        call.step(
            Event::Start {
                incoming: json!({"callId": "c1"}),
                reachable: callees.to_vec(),
            },
            0,
        )
        .unwrap();
        call
    }

    fn notified(fx: &[Effect], target: &Target, name: &str) -> bool {
        fx.iter()
            .any(|e| matches!(e, Effect::Notify(t, n, _) if t == target && *n == name))
    }

    #[test]
    fn start_rings_every_callee_and_tells_the_caller() {
        let mut call = Call::new("c1".into(), A, 10, &[B], false);
        let fx = call
            .step(
                Event::Start {
                    incoming: json!({}),
                    reachable: vec![B],
                },
                0,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(B), "call:incoming"));
        assert!(notified(&fx, &Target::User(A), "call:ringing"));
        assert!(fx.contains(&Effect::StartRingTimer));
        assert_eq!(call.status, Status::Ringing);
    }

    #[test]
    fn unreachable_callees_still_ring_until_the_timeout() {
        let mut call = Call::new("c1".into(), A, 10, &[B], false);
        let fx = call
            .step(
                Event::Start {
                    incoming: json!({}),
                    reachable: vec![],
                },
                0,
            )
            .unwrap();
        assert!(!notified(&fx, &Target::User(A), "call:ringing"));
        assert_eq!(call.status, Status::Initiated);
        let fx = call.step(Event::RingTimeout, 40).unwrap();
        assert!(notified(&fx, &Target::User(A), "call:missed"));
        assert_eq!(call.status, Status::Ended(Outcome::Missed));
        assert!(fx.contains(&Effect::Finish));
    }

    #[test]
    fn first_accept_wins_binds_the_device_and_flushes_early_ice() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Signal {
                user: A,
                device: 10,
                kind: "call:ice",
                to: None,
                payload: json!({"candidate": "x"}),
            },
            1,
        )
        .unwrap();
        let fx = call
            .step(
                Event::Accept {
                    user: B,
                    device: 20,
                    answer: Some(json!("sdp")),
                },
                2,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(A), "call:accepted"));
        assert!(notified(
            &fx,
            &Target::UserExcept(B, 20),
            "call:answered_elsewhere"
        ));
        assert!(notified(&fx, &Target::Device(B, 20), "call:ice"));
        assert_eq!(call.status, Status::Ongoing);
        assert_eq!(
            call.step(
                Event::Accept {
                    user: B,
                    device: 21,
                    answer: None
                },
                3
            )
            .unwrap_err(),
            Refusal::InvalidState("this call is not ringing for you")
        );
    }

    #[test]
    fn signaling_is_relayed_only_between_bound_devices() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Accept {
                user: B,
                device: 20,
                answer: None,
            },
            1,
        )
        .unwrap();
        let fx = call
            .step(
                Event::Signal {
                    user: B,
                    device: 20,
                    kind: "call:offer",
                    to: None,
                    payload: json!({"sdp": "o"}),
                },
                2,
            )
            .unwrap();
        assert_eq!(fx.len(), 1);
        assert!(notified(&fx, &Target::Device(A, 10), "call:offer"));
        assert!(call
            .step(
                Event::Signal {
                    user: B,
                    device: 21,
                    kind: "call:ice",
                    to: None,
                    payload: json!({})
                },
                2
            )
            .is_err());
        assert_eq!(
            call.step(
                Event::Signal {
                    user: C,
                    device: 30,
                    kind: "call:ice",
                    to: None,
                    payload: json!({})
                },
                2
            )
            .unwrap_err(),
            Refusal::NotAParty
        );
    }

    #[test]
    fn early_ice_is_bounded() {
        let mut call = started(false, &[B]);
        for i in 0..(MAX_EARLY_ICE + 10) {
            call.step(
                Event::Signal {
                    user: A,
                    device: 10,
                    kind: "call:ice",
                    to: None,
                    payload: json!({"i": i}),
                },
                1,
            )
            .unwrap();
        }
        assert_eq!(call.early_ice.len(), MAX_EARLY_ICE);
    }

    #[test]
    fn reject_ends_a_one_to_one_call() {
        let mut call = started(false, &[B]);
        let fx = call
            .step(
                Event::Reject {
                    user: B,
                    reason: Some("busy".into()),
                },
                3,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(A), "call:rejected"));
        assert!(
            notified(&fx, &Target::User(B), "call:rejected"),
            "every callee device stops ringing"
        );
        assert_eq!(call.status, Status::Ended(Outcome::Rejected));
    }

    #[test]
    fn caller_hanging_up_before_an_answer_cancels() {
        let mut call = started(false, &[B]);
        let fx = call
            .step(
                Event::Hangup {
                    user: A,
                    reason: None,
                },
                3,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(B), "call:cancelled"));
        assert!(notified(&fx, &Target::User(A), "call:ended"));
        assert_eq!(call.status, Status::Ended(Outcome::Cancelled));
        assert_eq!(call.parties[&B].status, PartyStatus::Cancelled);
    }

    #[test]
    fn hangup_after_answer_reports_the_duration() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Accept {
                user: B,
                device: 20,
                answer: None,
            },
            5,
        )
        .unwrap();
        let fx = call
            .step(
                Event::Hangup {
                    user: B,
                    reason: None,
                },
                70,
            )
            .unwrap();
        assert_eq!(call.duration(), 65);
        assert!(fx.iter().any(
            |e| matches!(e, Effect::Notify(Target::User(A), "call:ended", p) if p["duration"] == 65)
        ));
        assert_eq!(call.status, Status::Ended(Outcome::Ended));
        assert_eq!(call.ended_by, Some(B));
    }

    #[test]
    fn a_dropped_device_gets_a_grace_then_network_error() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Accept {
                user: B,
                device: 20,
                answer: None,
            },
            1,
        )
        .unwrap();
        let fx = call
            .step(
                Event::DeviceGone {
                    user: B,
                    device: 20,
                    rejoins: true,
                },
                5,
            )
            .unwrap();
        assert!(fx.contains(&Effect::StartGrace(B)));
        assert!(notified(&fx, &Target::User(A), "call:peer_reconnecting"));
        // Another device of B dropping is irrelevant.
        assert!(call
            .step(
                Event::DeviceGone {
                    user: B,
                    device: 99,
                    rejoins: true,
                },
                5
            )
            .unwrap()
            .is_empty());
        call.step(Event::GraceExpired { user: B }, 20).unwrap();
        assert_eq!(call.status, Status::Ended(Outcome::Ended));
        assert_eq!(call.end_reason.as_deref(), Some("network_error"));
    }

    #[test]
    fn a_dropped_device_that_cannot_rejoin_ends_the_call_at_once() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Accept {
                user: B,
                device: 20,
                answer: None,
            },
            1,
        )
        .unwrap();
        // Another device of B dropping is irrelevant.
        assert!(call
            .step(
                Event::DeviceGone {
                    user: B,
                    device: 99,
                    rejoins: false,
                },
                4
            )
            .unwrap()
            .is_empty());
        let fx = call
            .step(
                Event::DeviceGone {
                    user: B,
                    device: 20,
                    rejoins: false,
                },
                5,
            )
            .unwrap();
        assert!(!fx.contains(&Effect::StartGrace(B)));
        assert!(!notified(&fx, &Target::User(A), "call:peer_reconnecting"));
        assert!(notified(&fx, &Target::User(A), "call:ended"));
        assert_eq!(call.status, Status::Ended(Outcome::Ended));
        assert_eq!(call.end_reason.as_deref(), Some("network_error"));
    }

    #[test]
    fn rejoin_within_the_grace_rebinds_and_resumes_relay() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Accept {
                user: B,
                device: 20,
                answer: None,
            },
            1,
        )
        .unwrap();
        call.step(
            Event::DeviceGone {
                user: B,
                device: 20,
                rejoins: true,
            },
            5,
        )
        .unwrap();
        let fx = call
            .step(
                Event::Rejoin {
                    user: B,
                    device: 21,
                },
                8,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(A), "call:peer_rejoined"));
        assert!(
            call.step(Event::GraceExpired { user: B }, 20)
                .unwrap()
                .is_empty(),
            "grace cancelled by the rejoin"
        );
        let fx = call
            .step(
                Event::Signal {
                    user: A,
                    device: 10,
                    kind: "call:offer",
                    to: None,
                    payload: json!({}),
                },
                21,
            )
            .unwrap();
        assert!(notified(&fx, &Target::Device(B, 21), "call:offer"));
    }

    #[test]
    fn a_caller_dropping_while_ringing_cancels() {
        let mut call = started(false, &[B]);
        call.step(
            Event::DeviceGone {
                user: A,
                device: 10,
                rejoins: true,
            },
            2,
        )
        .unwrap();
        assert_eq!(call.status, Status::Ended(Outcome::Cancelled));
    }

    #[test]
    fn group_calls_join_leave_and_end_below_two() {
        let mut call = started(true, &[B, C]);
        let fx = call
            .step(
                Event::Accept {
                    user: B,
                    device: 20,
                    answer: None,
                },
                1,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(A), "call:participant_joined"));
        assert!(notified(&fx, &Target::User(A), "call:accepted"));
        let fx = call
            .step(
                Event::Accept {
                    user: C,
                    device: 30,
                    answer: Some(json!("answer-c")),
                },
                2,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(A), "call:participant_joined"));
        // Each member's answer reaches the caller, whose offer it answers; nobody else's.
        let answers: Vec<&Value> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Notify(Target::User(A), "call:accepted", p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["sdpAnswer"], "answer-c");
        assert_eq!(answers[0]["by"], C.to_string());
        assert!(!notified(&fx, &Target::User(B), "call:accepted"));
        assert!(notified(&fx, &Target::User(B), "call:participant_joined"));
        let fx = call
            .step(
                Event::Signal {
                    user: B,
                    device: 20,
                    kind: "call:offer",
                    to: Some(C),
                    payload: json!({}),
                },
                3,
            )
            .unwrap();
        assert!(notified(&fx, &Target::Device(C, 30), "call:offer"));
        // Without `to`, a member's signal goes to the caller, the caller's to every member.
        let fx = call
            .step(
                Event::Signal {
                    user: B,
                    device: 20,
                    kind: "call:ice",
                    to: None,
                    payload: json!({"candidate": "b"}),
                },
                3,
            )
            .unwrap();
        assert_eq!(fx.len(), 1);
        assert!(notified(&fx, &Target::Device(A, 10), "call:ice"));
        let fx = call
            .step(
                Event::Signal {
                    user: A,
                    device: 10,
                    kind: "call:ice",
                    to: None,
                    payload: json!({"candidate": "a"}),
                },
                3,
            )
            .unwrap();
        assert_eq!(fx.len(), 2);
        assert!(notified(&fx, &Target::Device(B, 20), "call:ice"));
        assert!(notified(&fx, &Target::Device(C, 30), "call:ice"));
        let fx = call
            .step(
                Event::Hangup {
                    user: A,
                    reason: None,
                },
                10,
            )
            .unwrap();
        assert!(notified(&fx, &Target::User(B), "call:participant_left"));
        assert_eq!(call.status, Status::Ongoing);
        call.step(
            Event::Hangup {
                user: C,
                reason: None,
            },
            20,
        )
        .unwrap();
        assert_eq!(call.status, Status::Ended(Outcome::Ended));
    }

    #[test]
    fn events_after_the_end_are_refused() {
        let mut call = started(false, &[B]);
        call.step(
            Event::Hangup {
                user: A,
                reason: None,
            },
            1,
        )
        .unwrap();
        assert!(call
            .step(
                Event::Accept {
                    user: B,
                    device: 20,
                    answer: None
                },
                2
            )
            .is_err());
        assert!(call.step(Event::RingTimeout, 40).unwrap().is_empty());
    }
}
