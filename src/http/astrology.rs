//! Seed 002 (astrology app) shapes of REST answers: its `DirectConversation`, `DirectMessage`
//! and `Call` models, field by field, on top of the canonical views (canonical fields stay).
//!
//! Seed 002's own routes (support conversations, `/admin/calls/initiate`) always answer in these
//! shapes. Routes it shares with other apps (`/conversations/:id[/messages]`, `/calls/:id`,
//! `/calls/history`, and the default uid of `/calls/admin/token`) answer in them when the request
//! names the dialect (`?dialect=astrology`) or names none and came through a listener that
//! speaks it (`LISTEN=…=astrology`, or `DEFAULT_DIALECT=astrology`) — what also lets its
//! unchanged app speak its dialect on sockets. Where a canonical field has another JSON type in the seed
//! (a conversation's `unreadCount` is a number canonically and a map per participant in the
//! seed), only these shapes change it.

use super::conversations::PageQuery;
use crate::auth::Identity;
use crate::db::calls::{CallRow, ParticipantRow};
use crate::db::conversations::Conversation;
use crate::db::conversations::ConversationView;
use crate::db::messages::MessageView;
use crate::db::support::Party;
use crate::error::{AppError, AppResult};
use crate::realtime::dialect::{
    Dialect, ASTROLOGY, ASTROLOGY_CALL_STATUSES, ASTROLOGY_CALL_TYPES, ASTROLOGY_END_REASONS,
    ASTROLOGY_MESSAGE_TYPES, ASTROLOGY_OTHER_END_REASON,
};
use crate::realtime::protocol::SendDraft;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
struct DialectQuery {
    dialect: Option<String>,
}

/// Whether a request to a shared route is answered in seed 002's shapes: it names the
/// astrology dialect (`?dialect=`), or names none and came through a listener that speaks it.
pub(crate) fn wanted(req: &HttpRequest, state: &AppState) -> bool {
    let named = web::Query::<DialectQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().dialect);
    Dialect::for_connection(named.as_deref(), state.default_dialect(req))
        .is_ok_and(|d| std::ptr::eq(d, &ASTROLOGY))
}

fn renamed(table: &[(&str, &'static str)], value: &str) -> Option<&'static str> {
    table
        .iter()
        .find(|(from, _)| value.eq_ignore_ascii_case(from))
        .map(|(_, to)| *to)
}

fn set(obj: &mut Map<String, Value>, key: &str, value: Value) {
    obj.insert(key.to_owned(), value);
}

/// A message as seed 002's `DirectMessage`. Its status comes from the recipients' cursors:
/// `read` once a recipient's read cursor passed it, `delivered` once a delivered cursor did,
/// else `sent`; `readAt`/`deliveredAt` are when that cursor last moved (cursors, not
/// per-message stamps, are what Switchboard keeps).
pub(crate) fn message(view: &MessageView, parties: &[Party]) -> Value {
    let mut v = json!(view);
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    let sender: Option<i64> = view.sender_id.as_deref().and_then(|s| s.parse().ok());
    let named: Option<i64> = view.recipient_id.as_deref().and_then(|s| s.parse().ok());
    let others: Vec<&Party> = parties
        .iter()
        .filter(|p| Some(p.member.user_id) != sender)
        .collect();
    // Messages written before kinds were recorded: the conversation tells them.
    let recipient = named.or(match others.as_slice() {
        [only] => Some(only.member.user_id),
        _ => None,
    });
    let readers: Vec<&Party> = others
        .iter()
        .copied()
        .filter(|p| recipient.is_none_or(|r| r == p.member.user_id))
        .collect();
    let read_at = readers
        .iter()
        .filter(|p| p.member.read_up_to >= view.seq)
        .filter_map(|p| p.member.read_at)
        .max();
    let read = readers.iter().any(|p| p.member.read_up_to >= view.seq);
    let delivered = readers.iter().any(|p| p.member.delivered_up_to >= view.seq);
    let delivered_at = readers
        .iter()
        .filter(|p| p.member.delivered_up_to >= view.seq)
        .filter_map(|p| p.member.delivered_at)
        .max();
    let kind_of = |id: i64| {
        parties
            .iter()
            .find(|p| p.member.user_id == id)
            .map(|p| p.kind)
    };
    set(obj, "_id", json!(view.id));
    set(
        obj,
        "messageType",
        json!(renamed(ASTROLOGY_MESSAGE_TYPES, &view.kind).unwrap_or(&view.kind)),
    );
    if view.sender_type.is_none() {
        set(obj, "senderType", json!(sender.and_then(kind_of)));
    }
    if view.recipient_id.is_none() {
        set(obj, "recipientId", json!(recipient.map(|r| r.to_string())));
    }
    if view.recipient_type.is_none() {
        set(obj, "recipientType", json!(recipient.and_then(kind_of)));
    }
    let status = if read {
        "read"
    } else if delivered {
        "delivered"
    } else {
        "sent"
    };
    set(obj, "status", json!(status));
    set(obj, "readAt", json!(read_at.filter(|_| read)));
    set(obj, "deliveredAt", json!(delivered_at.or(read_at)));
    set(obj, "isDeleted", json!(view.deleted));
    set(obj, "deletedBy", json!([]));
    set(
        obj,
        "updatedAt",
        json!(view
            .deleted_at
            .or(view.edited_at)
            .unwrap_or(view.created_at)),
    );
    v
}

/// Seed 002's `conversationType`: the support conversation and a direct one with an admin are
/// `admin_astrologer`, other direct ones `user_astrologer`, groups and team chats `group`.
fn conversation_type(kind: &str, parties: &[Party]) -> &'static str {
    match kind {
        "support" => "admin_astrologer",
        "direct" if parties.iter().any(|p| p.kind == "admin") => "admin_astrologer",
        "direct" => "user_astrologer",
        _ => "group",
    }
}

/// A conversation as seed 002's `DirectConversation`: `participants[{id, type, name,
/// profilePicture, joinedAt}]` (the canonical member fields stay in each), `conversationType`,
/// `lastMessage{content, senderId, timestamp, messageType}` (a whole message), `unreadCount`
/// per participant id, `contextType` (`general` when none was given), `contextId`, `isActive`.
pub(crate) fn conversation(view: &ConversationView, parties: &[Party]) -> Value {
    let mut v = json!(view);
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    let canonical: HashMap<String, Value> = view
        .participants
        .iter()
        .map(|m| (m.user_id.clone(), json!(m)))
        .collect();
    let participants: Vec<Value> = parties
        .iter()
        .map(|p| {
            let id = p.member.user_id.to_string();
            let mut entry = canonical.get(&id).cloned().unwrap_or_else(|| json!({}));
            if let Some(e) = entry.as_object_mut() {
                set(e, "id", json!(id));
                set(e, "type", json!(p.kind));
                set(e, "name", json!(p.name));
                set(e, "profilePicture", json!(p.avatar_url));
                set(e, "joinedAt", json!(p.member.joined_at));
            }
            entry
        })
        .collect();
    set(obj, "_id", json!(view.id));
    set(obj, "participants", json!(participants));
    set(
        obj,
        "conversationType",
        json!(conversation_type(&view.kind, parties)),
    );
    let last = view.last_message.as_ref().map(|m| {
        let mut last = message(&m.view, parties);
        if let Some(l) = last.as_object_mut() {
            set(l, "timestamp", json!(m.view.created_at));
        }
        last
    });
    set(obj, "lastMessage", json!(last));
    let unread: Map<String, Value> = parties
        .iter()
        .map(|p| (p.member.user_id.to_string(), json!(p.unread)))
        .collect();
    set(obj, "unreadCount", Value::Object(unread));
    set(
        obj,
        "contextType",
        json!(view.context_type.as_deref().unwrap_or("general")),
    );
    set(obj, "contextId", json!(view.context_id));
    set(obj, "isActive", json!(true));
    set(
        obj,
        "updatedAt",
        json!(view.last_message_at.unwrap_or(view.created_at)),
    );
    v
}

/// A call as seed 002's `Call`: `callerId/callerType/calleeId/calleeType` (the first callee of
/// a group call), `callType` `voice|video`, its statuses and end reasons, `agoraChannelName`,
/// `agoraUid` (0: its tokens are valid for any uid), `initiatedAt` and `updatedAt` (its last
/// change: the end, else the answer, else the start). Tokens are handed out when a call starts
/// and rings, not kept with it: a stored call's `agoraToken` is null. Calls belong to
/// conversations (`conversationId`), not to consultations: `consultationId` is null. `types`
/// holds the parties' kinds of user.
pub(crate) fn call(
    row: &CallRow,
    parties: &[ParticipantRow],
    types: &HashMap<i64, &'static str>,
) -> Value {
    let mut v = super::calls::call_json(row, parties);
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    let callee = parties
        .iter()
        .filter(|p| Some(p.user_id) != row.caller_id)
        .min_by_key(|p| (p.role != "callee", p.user_id))
        .map(|p| p.user_id);
    set(obj, "_id", json!(row.id));
    set(
        obj,
        "callerType",
        json!(row.caller_id.and_then(|c| types.get(&c))),
    );
    set(obj, "calleeId", json!(callee.map(|c| c.to_string())));
    set(obj, "calleeType", json!(callee.and_then(|c| types.get(&c))));
    set(
        obj,
        "callType",
        json!(renamed(ASTROLOGY_CALL_TYPES, &row.call_type).unwrap_or(&row.call_type)),
    );
    set(
        obj,
        "status",
        json!(renamed(ASTROLOGY_CALL_STATUSES, &row.status).unwrap_or(&row.status)),
    );
    let end_reason = row
        .end_reason
        .as_deref()
        .map(|r| renamed(ASTROLOGY_END_REASONS, r).unwrap_or(ASTROLOGY_OTHER_END_REASON));
    set(obj, "endReason", json!(end_reason));
    set(obj, "agoraChannelName", json!(row.channel_name));
    set(
        obj,
        "agoraUid",
        json!(row
            .channel_name
            .as_ref()
            .map(|_| crate::realtime::call::agora::ANY_UID)),
    );
    set(obj, "agoraToken", Value::Null);
    set(obj, "consultationId", Value::Null);
    set(obj, "initiatedAt", json!(row.created_at));
    set(
        obj,
        "updatedAt",
        json!(row.ended_at.or(row.answered_at).unwrap_or(row.created_at)),
    );
    v
}

/// The uid `POST /calls/admin/token` signs for when the request names none: seed 002's app is
/// never told a uid and joins with uid 0, so on its listener (or with `?dialect=astrology`) the
/// token is valid for any uid; elsewhere it is bound to the caller's own uid.
pub(crate) fn default_agora_uid(req: &HttpRequest, state: &AppState, user: i64) -> u32 {
    if wanted(req, state) {
        crate::realtime::call::agora::ANY_UID
    } else {
        crate::realtime::call::agora::uid_of(user)
    }
}

/// The users a list of calls involves.
pub(crate) fn call_users(calls: &[(CallRow, Vec<ParticipantRow>)]) -> Vec<i64> {
    let mut ids: Vec<i64> = calls
        .iter()
        .flat_map(|(c, p)| c.caller_id.into_iter().chain(p.iter().map(|x| x.user_id)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The members of a conversation as its shapes need them.
pub(crate) async fn parties(state: &AppState, conversation_id: i64) -> AppResult<Vec<Party>> {
    state
        .db
        .run(move |conn| crate::db::support::parties(conn, conversation_id))
        .await
}

/// `{success, conversation}` for `viewer`; with `recent`, the newest messages too and the
/// viewer's own unread count (a number, as the support routes gave it) at the top level.
pub(crate) async fn conversation_response(
    state: &AppState,
    conv: Conversation,
    viewer: i64,
    recent: Option<i64>,
) -> AppResult<HttpResponse> {
    let id = conv.id;
    let (view, messages, parties) = state
        .db
        .run(move |conn| {
            let view = crate::db::conversations::views(conn, vec![conv], viewer)?.pop();
            let messages = match recent {
                Some(n) => crate::db::messages::page(conn, id, None, None, n)?,
                None => Vec::new(),
            };
            Ok((view, messages, crate::db::support::parties(conn, id)?))
        })
        .await?;
    let view = view.ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
    let mut body = json!({
        "success": true,
        "conversation": conversation(&view, &parties),
    });
    if recent.is_some() {
        body["messages"] = json!(messages
            .iter()
            .map(|m| message(&m.view(), &parties))
            .collect::<Vec<_>>());
        body["unreadCount"] = json!(view.unread_count);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// A page of messages by seq (`?before=&after=&limit=`), as the canonical route pages them.
pub(crate) async fn page_response(
    state: &AppState,
    conversation_id: i64,
    q: &PageQuery,
) -> AppResult<HttpResponse> {
    let (before, after, limit) = q.bounds()?;
    let (rows, parties) = state
        .db
        .run(move |conn| {
            Ok((
                crate::db::messages::page(conn, conversation_id, before, after, limit)?,
                crate::db::support::parties(conn, conversation_id)?,
            ))
        })
        .await?;
    let views: Vec<MessageView> = rows
        .iter()
        .map(crate::db::messages::Message::view)
        .collect();
    let older = views.first().map(|m| m.seq).filter(|s| *s > 1);
    let newer = views.last().map(|m| m.seq);
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "messages": views.iter().map(|m| message(m, &parties)).collect::<Vec<_>>(),
        "conversationId": conversation_id.to_string(),
        "cursors": {"before": older, "after": newer},
        "hasMore": rows.len() as i64 == limit,
    })))
}

/// Sends through the engine and answers 201 `{success, message}` in the seed's shape.
pub(crate) async fn send_response(
    state: &AppState,
    identity: &Identity,
    draft: SendDraft,
) -> AppResult<HttpResponse> {
    let view = state.engine.send_message(identity, draft, None).await?;
    let id: i64 = view
        .conversation_id
        .parse()
        .map_err(|_| AppError::internal("conversation id is not a number"))?;
    let parties = parties(state, id).await?;
    Ok(HttpResponse::Created().json(json!({
        "success": true,
        "message": message(&view, &parties),
    })))
}

/// Calls in the seed's shape, the parties' kinds of user loaded once.
pub(crate) async fn calls_json(
    state: &AppState,
    calls: Vec<(CallRow, Vec<ParticipantRow>)>,
) -> AppResult<Vec<Value>> {
    let ids = call_users(&calls);
    let types = state
        .db
        .run(move |conn| crate::db::support::party_types(conn, &ids))
        .await?;
    Ok(calls.iter().map(|(c, p)| call(c, p, &types)).collect())
}
