//! Calls: the pure state machine ([`machine`]) and, around it, the call actor that performs its
//! effects.

pub(crate) mod actor;
pub mod agora;
pub(crate) mod directory;
pub mod ice;
pub(crate) mod machine;
pub(crate) mod store;

use crate::auth::Identity;
use crate::config::Config;
use crate::db::conversations as convs;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::policy::ContactCache;
use crate::realtime::cluster::Claim;
use crate::realtime::dialect::Media;
use crate::realtime::protocol::{CallInitiate, CallRef, CallSignal};
use crate::realtime::registry::{StartCall, StartedCall, Verdict};
use crate::realtime::Engine;
use actor::{CallInput, CallMeta};
use machine::Event;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest SDP or ICE payload relayed (bytes of JSON).
pub(crate) const MAX_SIGNAL_BYTES: usize = 64 * 1024;
/// Longest client-chosen call id.
pub(crate) const MAX_CHOSEN_CALL_ID: usize = 128;

impl Engine {
    /// Starts a call from `identity` on `device` (a session key; 0 when started over REST).
    /// Returns the initiate ack: `{callId, status, iceServers}`; Agora calls add the channel
    /// and two tokens: `agoraToken` for the caller's uid (`agora.uid`) and `agoraAnyUidToken`
    /// for apps that join with uid 0 and are never told a uid (seed 002).
    pub(crate) async fn start_call(
        &self,
        identity: &Identity,
        device: u64,
        req: CallInitiate,
    ) -> AppResult<Value> {
        let caller = identity.user_id();
        let call_type = match req.call_type.as_deref().map(str::to_ascii_lowercase) {
            Some(t) if t == "audio" => "audio",
            Some(t) if t == "video" => "video",
            Some(t) => {
                return Err(AppError::validation(format!(
                    "callType must be audio or video, not `{t}`"
                )))
            }
            None => "audio",
        };
        // A provider the client named is kept (or refused); `auto` and no name are preferences
        // that give way to what the callees' apps can join (see `settle_provider`).
        let requested = req.provider.as_deref().map(str::to_ascii_lowercase);
        let provider_named = requested.as_deref().is_some_and(|p| p != "auto");
        let provider = match requested {
            None => "webrtc".to_owned(),
            Some(p) if p == "auto" => if self.config.agora_enabled() {
                "agora"
            } else {
                "webrtc"
            }
            .to_owned(),
            Some(p) => p,
        };
        let chosen = match req.call_id {
            Some(name) => {
                let name = name.trim().to_owned();
                let valid = !name.is_empty()
                    && name.len() <= MAX_CHOSEN_CALL_ID
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b));
                if !valid {
                    return Err(AppError::validation(format!(
                        "callId must be 1 to {MAX_CHOSEN_CALL_ID} characters of letters, digits and _-.:@"
                    )));
                }
                Some(name)
            }
            None => None,
        };
        let available =
            provider == "webrtc" || (provider == "agora" && self.config.agora_enabled());
        if !available {
            return Err(AppError::Validation {
                code: ErrorCode::ProviderNotAvailable,
                message: format!("call provider `{provider}` is not available on this server")
                    .into(),
            });
        }
        if req
            .sdp_offer
            .as_ref()
            .is_some_and(|s| s.to_string().len() > MAX_SIGNAL_BYTES)
        {
            return Err(AppError::TooLarge("sdpOffer is too large".into()));
        }
        let conversation_id = req.conversation_id;
        let explicit = req.member_ids.clone();
        let to = req.to;
        let cache = Arc::clone(self.db.contact_cache());
        // The common path decides from the contact cache, without the database. A client-chosen
        // call id is checked against every call ever made (the database) first, as before.
        let cached = if chosen.is_none() {
            decide_from_cache(
                &cache,
                &self.config,
                caller,
                to,
                conversation_id,
                explicit.clone(),
            )
        } else {
            None
        };
        let (callees, group) = match cached {
            Some(decided) => decided?,
            None => {
                let chosen_id = chosen.clone();
                let config = self.config.clone();
                let ticket = cache.ticket();
                self.db
                    .run(move |conn| {
                        if let Some(id) = &chosen_id {
                            if crate::db::calls::exists(conn, id)? {
                                return Err(AppError::conflict(
                                    ErrorCode::CallIdTaken,
                                    "this room name was already used; choose another",
                                ));
                            }
                        }
                        let audience = audience(to, conversation_id, explicit)?;
                        let members: Vec<i64> = match &audience {
                            Audience::Conversation(conv, _) => {
                                let all: Vec<i64> = convs::members(conn, *conv)?
                                    .into_iter()
                                    .map(|m| m.user_id)
                                    .collect();
                                cache.note_members(ticket, *conv, &all);
                                all
                            }
                            _ => Vec::new(),
                        };
                        let in_conversation = matches!(audience, Audience::Conversation(..));
                        let (callees, group) = callees_of(caller, audience, &members)?;
                        // Users the caller picked are subject to the contact policy (which also
                        // answers `not_found` for unknown or banned users); the members of a
                        // conversation the caller belongs to are already in contact.
                        if in_conversation {
                            let found = crate::db::accounts::unbanned_users(conn, &callees)?;
                            cache.note_users(ticket, &found);
                            if found.len() != callees.len() {
                                return Err(AppError::NotFound("user not found".into()));
                            }
                        } else {
                            crate::policy::check_contact_cached(
                                conn, &config, caller, &callees, &cache, ticket,
                            )?;
                        }
                        Ok((callees, group))
                    })
                    .await?
            }
        };
        let (provider, callees) =
            self.settle_provider(caller, device, provider, provider_named, callees, group)?;
        self.take_call(caller).await.inspect_err(|_| {
            self.metrics.rate_limited(crate::metrics::Limit::Calls);
        })?;
        let call_id = match chosen {
            Some(name) => name,
            None => crate::auth::tokens::random_id()?,
        };
        let channel_name = (provider == "agora").then(|| call_id.clone());
        let meta = CallMeta {
            call_type: call_type.to_owned(),
            provider,
            channel_name: channel_name.clone(),
            conversation_id: if group { conversation_id } else { None },
            caller_name: identity.user.name.clone(),
            caller_avatar: identity.user.avatar_url.clone(),
            caller_type: crate::db::messages::party_type(identity.user.roles.iter().flatten()),
            sdp_offer: req.sdp_offer,
        };
        let (verdict, callees, online_elsewhere) =
            self.claim_call(&call_id, caller, callees, group).await?;
        let claimed = self.cluster.is_some() && verdict != Verdict::Busy;
        let started = self
            .registry
            .send(StartCall {
                call_id: call_id.clone(),
                caller,
                device,
                callees,
                group,
                meta,
                verdict: verdict.clone(),
                online_elsewhere,
                near: Some(std::thread::current().id()),
            })
            .await
            .map_err(|e| AppError::unavailable(format!("registry: {e}")));
        let started = match started {
            Ok(Ok(started)) => started,
            Ok(Err(e)) | Err(e) => {
                // Refused here after the cluster claimed its parties: free them.
                if let (true, Some(cluster)) = (claimed, &self.cluster) {
                    if !matches!(verdict, Verdict::GlareLost(_)) {
                        cluster.release_call(&call_id);
                    }
                }
                return Err(e);
            }
        };
        let (id, status) = match started {
            StartedCall::Ringing(id) => (id, "ringing"),
            StartedCall::Busy(id) => (id, "busy"),
            StartedCall::Glare(id) => (id, "glare"),
        };
        let mut ack = json!({
            "callId": id,
            "status": status,
            "callType": call_type,
            "iceServers": ice::ice_servers(&self.config, caller, None),
        });
        if let (Some(channel), Some(obj)) = (channel_name, ack.as_object_mut()) {
            let uid = agora::uid_of(caller);
            let token = agora::rtc_token_for(&self.config, &channel, uid)
                .transpose()
                .map_err(AppError::internal)?;
            let any_uid = agora::rtc_token_for(&self.config, &channel, agora::ANY_UID)
                .transpose()
                .map_err(AppError::internal)?;
            obj.insert("channelName".into(), json!(channel));
            obj.insert("agoraToken".into(), json!(token));
            obj.insert("agoraAnyUidToken".into(), json!(any_uid));
            obj.insert("agora".into(), json!({"appId": self.config.agora_app_id, "channelName": channel, "token": token, "uid": uid}));
        }
        Ok(ack)
    }

    /// Matches the call's media provider to the apps at both ends: an app joins calls only
    /// through the providers its dialect knows (the astrology app only Agora, the other seed
    /// apps only WebRTC). When the caller named no provider (or `auto`), the preference gives way
    /// to one the caller's app and every online callee can join; a named provider is kept. A
    /// callee whose live sessions can all join none of them is not rung: a one-to-one call is
    /// refused `media_unsupported` (a call that could never connect), a group call goes on
    /// without that member. Offline callees are assumed able (their app is not known yet).
    /// Cluster mode: claims the call's parties cluster-wide (busy and glare across nodes) and
    /// finds callees online on other nodes. Answers the verdict, the callees to ring and those
    /// online elsewhere. Single node, or while Redis is away: the registry decides alone.
    async fn claim_call(
        &self,
        call_id: &str,
        caller: i64,
        callees: Vec<i64>,
        group: bool,
    ) -> AppResult<(Verdict, Vec<i64>, Vec<i64>)> {
        let Some(cluster) = &self.cluster else {
            return Ok((Verdict::Start, callees, Vec::new()));
        };
        let claim = match cluster.claim_call(call_id, caller, &callees, group).await {
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, call = %call_id, "cluster call directory unavailable; busy and glare are checked on this node only");
                return Ok((Verdict::Start, callees, Vec::new()));
            }
        };
        let (verdict, rung) = match claim {
            Claim::Claimed(rung) => (Verdict::Start, rung),
            Claim::CallerBusy => return Err(AppError::Busy("you are already in a call".into())),
            Claim::Taken => {
                return Err(AppError::conflict(
                    ErrorCode::CallIdTaken,
                    "a call with this id is live; choose another room name",
                ))
            }
            Claim::CalleeBusy => (Verdict::Busy, callees),
            Claim::GlareLost(existing) => (Verdict::GlareLost(existing), callees),
            Claim::GlareWon { dropped, node } => {
                if node == cluster.node() {
                    // The registry here ends it (it runs here).
                    (Verdict::Start, callees)
                } else {
                    if let Err(e) = cluster
                        .forward_call_input(
                            &dropped,
                            Event::Terminate {
                                reason: "glare".into(),
                                by: None,
                            },
                        )
                        .await
                    {
                        tracing::debug!(error = %e, call = %dropped, "call dropped by glare already over");
                    }
                    (Verdict::GlareWon(dropped), callees)
                }
            }
        };
        let elsewhere = cluster.devices_of(rung.clone()).await.into_keys().collect();
        Ok((verdict, rung, elsewhere))
    }

    fn settle_provider(
        &self,
        caller: i64,
        device: u64,
        preferred: String,
        named: bool,
        mut callees: Vec<i64>,
        group: bool,
    ) -> AppResult<(String, Vec<i64>)> {
        let delivery = &self.delivery;
        let caller_media = (device != 0)
            .then(|| delivery.media_of(caller, Some(device)))
            .flatten()
            .unwrap_or(Media::ANY);
        // Each callee's live sessions are looked up once.
        let media: Vec<Media> = callees
            .iter()
            .map(|&u| delivery.media_of(u, None).unwrap_or(Media::ANY))
            .collect();
        let mut provider = preferred;
        if !named {
            let joint = if group {
                caller_media
            } else {
                media.iter().fold(caller_media, |m, &c| m.intersect(c))
            };
            let usable =
                |p: &str| joint.allows(p) && (p == "webrtc" || self.config.agora_enabled());
            if !usable(&provider) {
                if let Some(other) = ["webrtc", "agora"].into_iter().find(|p| usable(p)) {
                    provider = other.to_owned();
                }
            }
        }
        let unsupported = || {
            AppError::Conflict {
            code: ErrorCode::MediaUnsupported,
            message: format!(
                "the callee's app cannot join a {provider} call, and no call provider suits both apps"
            )
            .into(),
        }
        };
        if !caller_media.allows(&provider) {
            return Err(AppError::Conflict {
                code: ErrorCode::MediaUnsupported,
                message: format!("this app cannot join a {provider} call").into(),
            });
        }
        if group {
            let mut joinable = media.iter().map(|m| m.allows(&provider));
            callees.retain(|_| joinable.next().unwrap_or(false));
            if callees.is_empty() {
                return Err(unsupported());
            }
        } else if media.iter().any(|m| !m.allows(&provider)) {
            return Err(unsupported());
        }
        Ok((provider, callees))
    }

    async fn call_input(&self, call_id: &str, event: Event) -> AppResult<()> {
        // In cluster mode a call this node does not run may run on another.
        if let Some(cluster) = &self.cluster {
            if self.calls.get(call_id).is_none() {
                return cluster.forward_call_input(call_id, event).await;
            }
        }
        self.call_input_here(call_id, event).await
    }

    /// Feeds a call whose actor runs on this node.
    pub(crate) async fn call_input_here(&self, call_id: &str, event: Event) -> AppResult<()> {
        // The registry records a call here before it answers the call's start, so every later
        // signal finds it without asking the registry.
        let addr = self
            .calls
            .get(call_id)
            .ok_or_else(|| AppError::NotFound("call not found or already ended".into()))?;
        addr.send(CallInput(event))
            .await
            .map_err(|_| AppError::NotFound("call not found or already ended".into()))?
    }

    /// `call:accept` on `device`.
    pub(crate) async fn accept_call(
        &self,
        identity: &Identity,
        device: u64,
        r: CallRef,
    ) -> AppResult<Value> {
        check_signal_size(r.sdp_answer.as_ref())?;
        self.call_input(
            &r.call_id,
            Event::Accept {
                user: identity.user_id(),
                device,
                answer: r.sdp_answer,
            },
        )
        .await?;
        Ok(
            json!({"callId": r.call_id, "iceServers": ice::ice_servers(&self.config, identity.user_id(), None)}),
        )
    }

    /// `call:reject`.
    pub(crate) async fn reject_call(&self, identity: &Identity, r: CallRef) -> AppResult<Value> {
        check_reason(r.reason.as_deref())?;
        self.call_input(
            &r.call_id,
            Event::Reject {
                user: identity.user_id(),
                reason: r.reason,
            },
        )
        .await?;
        Ok(json!({"callId": r.call_id}))
    }

    /// `call:end` (cancel before an answer).
    pub(crate) async fn end_call(&self, identity: &Identity, r: CallRef) -> AppResult<Value> {
        check_reason(r.reason.as_deref())?;
        self.call_input(
            &r.call_id,
            Event::Hangup {
                user: identity.user_id(),
                reason: r.reason,
            },
        )
        .await?;
        Ok(json!({"callId": r.call_id}))
    }

    /// `call:rejoin` on a new device.
    pub(crate) async fn rejoin_call(
        &self,
        identity: &Identity,
        device: u64,
        r: CallRef,
    ) -> AppResult<Value> {
        self.call_input(
            &r.call_id,
            Event::Rejoin {
                user: identity.user_id(),
                device,
            },
        )
        .await?;
        Ok(
            json!({"callId": r.call_id, "iceServers": ice::ice_servers(&self.config, identity.user_id(), None)}),
        )
    }

    /// A recovered session of `user` came back as `device` after dropping as `from`: it takes
    /// its place again in the user's call if it was in it and is still waited for, and rings
    /// again if the user is still being rung (it may have missed the invitation).
    pub(crate) async fn resume_calls(&self, user: i64, from: u64, device: u64) {
        let call = match self
            .registry
            .send(crate::realtime::registry::CallOfUser(user))
            .await
        {
            Ok(Some(id)) => Some(id),
            _ => match &self.cluster {
                Some(cluster) => cluster.call_of(user).await,
                None => None,
            },
        };
        let Some(call) = call else { return };
        for event in [
            Event::Resume { user, from, device },
            Event::Ring { user, device },
        ] {
            if let Err(e) = self.call_input(&call, event).await {
                tracing::debug!(user, call = %call, code = e.code().as_str(), "recovered session: call left as it is");
            }
        }
    }

    /// `call:offer|answer|ice` relay.
    pub(crate) async fn signal_call(
        &self,
        identity: &Identity,
        device: u64,
        kind: &'static str,
        s: CallSignal,
    ) -> AppResult<Value> {
        // The sender is the token's user: the relayed payload gets `from` (each dialect's
        // outbound table derives its own sender fields from it), so none sent along is kept.
        let mut payload = s.rest;
        for key in ["from", "userId", "senderId"] {
            payload.remove(key);
        }
        let payload = Value::Object(payload);
        check_signal_size(Some(&payload))?;
        self.call_input(
            &s.call_id,
            Event::Signal {
                user: identity.user_id(),
                device,
                kind,
                to: s.to,
                payload,
            },
        )
        .await?;
        Ok(json!({"callId": s.call_id, "relayed": true}))
    }

    /// Ends a call from outside (admin, shutdown).
    pub(crate) async fn terminate_call(
        &self,
        call_id: &str,
        reason: &str,
        by: Option<i64>,
    ) -> AppResult<()> {
        self.call_input(
            call_id,
            Event::Terminate {
                reason: reason.to_owned(),
                by,
            },
        )
        .await
    }
}

/// Whom a `call:initiate` addresses.
enum Audience {
    /// One user (`to`).
    Direct(i64),
    /// A conversation's members, or the listed ones among them.
    Conversation(i64, Option<Vec<i64>>),
    /// Users the caller listed (`memberIds`).
    Picked(Vec<i64>),
}

fn audience(
    to: Option<i64>,
    conversation_id: Option<i64>,
    explicit: Option<Vec<i64>>,
) -> AppResult<Audience> {
    match (to, conversation_id, explicit) {
        (Some(to), None, None) => Ok(Audience::Direct(to)),
        (_, Some(conv), members) => Ok(Audience::Conversation(conv, members)),
        (None, None, Some(members)) => Ok(Audience::Picked(members)),
        _ => Err(AppError::validation(
            "call:initiate needs `to`, `conversationId` or `memberIds`",
        )),
    }
}

/// The users to ring and whether it is a group call; `members` are the conversation's (only
/// read for [`Audience::Conversation`]).
fn callees_of(caller: i64, audience: Audience, members: &[i64]) -> AppResult<(Vec<i64>, bool)> {
    let (mut callees, group) = match audience {
        Audience::Direct(to) => (vec![to], false),
        Audience::Conversation(_, chosen) => {
            if members.is_empty() {
                return Err(AppError::NotFound("conversation not found".into()));
            }
            if !members.contains(&caller) {
                return Err(AppError::Forbidden(
                    "not a member of this conversation".into(),
                ));
            }
            let chosen = match chosen {
                Some(m) => m.into_iter().filter(|u| members.contains(u)).collect(),
                None => members.to_vec(),
            };
            (chosen, true)
        }
        Audience::Picked(members) => (members, true),
    };
    callees.retain(|u| *u != caller);
    callees.sort_unstable();
    callees.dedup();
    if callees.is_empty() {
        return Err(AppError::validation("nobody to call"));
    }
    if callees.len() > 32 {
        return Err(AppError::validation("at most 32 participants per call"));
    }
    Ok((callees, group))
}

/// The callees of a call decided from the contact cache alone, with the same answer the
/// database would give; `None` when something needed is not cached.
fn decide_from_cache(
    cache: &ContactCache,
    config: &Config,
    caller: i64,
    to: Option<i64>,
    conversation_id: Option<i64>,
    explicit: Option<Vec<i64>>,
) -> Option<AppResult<(Vec<i64>, bool)>> {
    let audience = match audience(to, conversation_id, explicit) {
        Ok(a) => a,
        Err(e) => return Some(Err(e)),
    };
    let members: Arc<[i64]> = match &audience {
        Audience::Conversation(conv, _) => cache.members(*conv)?,
        _ => Arc::from([]),
    };
    let in_conversation = matches!(audience, Audience::Conversation(..));
    let (callees, group) = match callees_of(caller, audience, &members) {
        Ok(found) => found,
        Err(e) => return Some(Err(e)),
    };
    let verdict = if in_conversation {
        if !cache.all_in_good_standing(&callees) {
            return None;
        }
        Ok(())
    } else {
        crate::policy::check_contact_from_cache(cache, config, caller, &callees)?
    };
    Some(verdict.map(|()| (callees, group)))
}

/// A client-chosen end or reject reason is stored with the call: short, printable text.
fn check_reason(reason: Option<&str>) -> AppResult<()> {
    if reason.is_some_and(|r| r.chars().count() > 64 || r.chars().any(char::is_control)) {
        return Err(AppError::validation(
            "reason must be at most 64 characters without control characters",
        ));
    }
    Ok(())
}

fn check_signal_size(v: Option<&Value>) -> AppResult<()> {
    if v.is_some_and(|v| v.to_string().len() > MAX_SIGNAL_BYTES) {
        return Err(AppError::TooLarge("signaling payload is too large".into()));
    }
    Ok(())
}
