//! Every canonical event name, in one place: what clients send ([`protocol::Command::parse`]
//! reads these) and what the engine sends them. The engine and the REST handlers use these
//! constants, never the text; dialects map them to each app's own names at the edge
//! ([`dialect`]).
//!
//! [`protocol::Command::parse`]: super::protocol::Command::parse
//! [`dialect`]: super::dialect

// Client → server only.

/// Join a conversation's live events (group rooms).
pub(crate) const CONVERSATION_JOIN: &str = "conversation:join";
/// Leave a conversation's live events.
pub(crate) const CONVERSATION_LEAVE: &str = "conversation:leave";
/// Open (or find) the direct conversation with a user.
pub(crate) const CONVERSATION_OPEN: &str = "conversation:open";
/// Send a message.
pub(crate) const MESSAGE_SEND: &str = "message:send";
/// Edit one's message.
pub(crate) const MESSAGE_EDIT: &str = "message:edit";
/// Delete one's message.
pub(crate) const MESSAGE_DELETE: &str = "message:delete";
/// Hear the presence of some users.
pub(crate) const PRESENCE_SUBSCRIBE: &str = "presence:subscribe";
/// Start a call.
pub(crate) const CALL_INITIATE: &str = "call:initiate";
/// Accept a call.
pub(crate) const CALL_ACCEPT: &str = "call:accept";
/// Decline a call.
pub(crate) const CALL_REJECT: &str = "call:reject";
/// Hang up (or cancel before an answer).
pub(crate) const CALL_END: &str = "call:end";
/// Come back to a call after a reconnect.
pub(crate) const CALL_REJOIN: &str = "call:rejoin";

// Both ways: a client sends them, the engine relays or fans them out under the same name.

/// A typing indicator started.
pub(crate) const TYPING_START: &str = "typing:start";
/// A typing indicator stopped.
pub(crate) const TYPING_STOP: &str = "typing:stop";
/// Messages reached a device.
pub(crate) const RECEIPT_DELIVERED: &str = "receipt:delivered";
/// Messages were read.
pub(crate) const RECEIPT_READ: &str = "receipt:read";
/// WebRTC signaling: an SDP offer, relayed to the other party.
pub(crate) const CALL_OFFER: &str = "call:offer";
/// WebRTC signaling: an SDP answer, relayed to the other party.
pub(crate) const CALL_ANSWER: &str = "call:answer";
/// WebRTC signaling: an ICE candidate, relayed to the other party.
pub(crate) const CALL_ICE: &str = "call:ice";

// Server → client only.

/// A new message in a conversation.
pub(crate) const MESSAGE_NEW: &str = "message:new";
/// A message was edited.
pub(crate) const MESSAGE_EDITED: &str = "message:edited";
/// A message was deleted.
pub(crate) const MESSAGE_DELETED: &str = "message:deleted";
/// A user came online or went offline.
pub(crate) const PRESENCE: &str = "presence";
/// A conversation that includes the recipient was created.
pub(crate) const CONVERSATION_NEW: &str = "conversation:new";
/// Members joined a group.
pub(crate) const CONVERSATION_MEMBERS_ADDED: &str = "conversation:members_added";
/// A member left or was removed from a group.
pub(crate) const CONVERSATION_MEMBER_REMOVED: &str = "conversation:member_removed";
/// A chat request arrived.
pub(crate) const CHAT_REQUEST_NEW: &str = "chat_request:new";
/// A chat request was accepted.
pub(crate) const CHAT_REQUEST_ACCEPTED: &str = "chat_request:accepted";
/// A chat request was declined.
pub(crate) const CHAT_REQUEST_DECLINED: &str = "chat_request:declined";
/// A chat request was withdrawn.
pub(crate) const CHAT_REQUEST_CANCELLED: &str = "chat_request:cancelled";
/// A call rings on this device.
pub(crate) const CALL_INCOMING: &str = "call:incoming";
/// The callee's devices ring (told to the caller).
pub(crate) const CALL_RINGING: &str = "call:ringing";
/// A callee accepted.
pub(crate) const CALL_ACCEPTED: &str = "call:accepted";
/// Another device of the same user took the call.
pub(crate) const CALL_ANSWERED_ELSEWHERE: &str = "call:answered_elsewhere";
/// A callee declined.
pub(crate) const CALL_REJECTED: &str = "call:rejected";
/// The caller gave up before an answer (told to callees).
pub(crate) const CALL_CANCELLED: &str = "call:cancelled";
/// Nobody answered in time.
pub(crate) const CALL_MISSED: &str = "call:missed";
/// The call is over.
pub(crate) const CALL_ENDED: &str = "call:ended";
/// Every callee is in another call (told to the caller, with the call that did not start).
pub(crate) const CALL_BUSY: &str = "call:busy";
/// Two users called each other at once: the caller's new call was dropped in favour of the
/// one already ringing between them.
pub(crate) const CALL_GLARE: &str = "call:glare";
/// A group call: someone joined.
pub(crate) const CALL_PARTICIPANT_JOINED: &str = "call:participant_joined";
/// A group call: someone left.
pub(crate) const CALL_PARTICIPANT_LEFT: &str = "call:participant_left";
/// A group call: someone declined.
pub(crate) const CALL_PARTICIPANT_REJECTED: &str = "call:participant_rejected";
/// A group call: who is in it (told to whoever joins).
pub(crate) const CALL_PARTICIPANTS: &str = "call:participants";
/// The other party lost its connection; the call waits for it (reconnect grace).
pub(crate) const CALL_PEER_RECONNECTING: &str = "call:peer_reconnecting";
/// The other party is back.
pub(crate) const CALL_PEER_REJOINED: &str = "call:peer_rejoined";
/// This device is back in its call (the answer to `call:rejoin`).
pub(crate) const CALL_REJOINED: &str = "call:rejoined";
/// A refusal of a frame that expected no reply, or of a connection.
pub(crate) const ERROR: &str = "error";

/// What clients send: every command name [`protocol::Command::parse`] knows.
///
/// [`protocol::Command::parse`]: super::protocol::Command::parse
#[cfg(test)]
pub(crate) const RECEIVED: &[&str] = &[
    CONVERSATION_JOIN,
    CONVERSATION_LEAVE,
    CONVERSATION_OPEN,
    MESSAGE_SEND,
    MESSAGE_EDIT,
    MESSAGE_DELETE,
    PRESENCE_SUBSCRIBE,
    CALL_INITIATE,
    CALL_ACCEPT,
    CALL_REJECT,
    CALL_END,
    CALL_REJOIN,
    TYPING_START,
    TYPING_STOP,
    RECEIPT_DELIVERED,
    RECEIPT_READ,
    CALL_OFFER,
    CALL_ANSWER,
    CALL_ICE,
];

/// What the engine sends.
#[cfg(test)]
pub(crate) const SENT: &[&str] = &[
    TYPING_START,
    TYPING_STOP,
    RECEIPT_DELIVERED,
    RECEIPT_READ,
    CALL_OFFER,
    CALL_ANSWER,
    CALL_ICE,
    MESSAGE_NEW,
    MESSAGE_EDITED,
    MESSAGE_DELETED,
    PRESENCE,
    CONVERSATION_NEW,
    CONVERSATION_MEMBERS_ADDED,
    CONVERSATION_MEMBER_REMOVED,
    CHAT_REQUEST_NEW,
    CHAT_REQUEST_ACCEPTED,
    CHAT_REQUEST_DECLINED,
    CHAT_REQUEST_CANCELLED,
    CALL_INCOMING,
    CALL_RINGING,
    CALL_ACCEPTED,
    CALL_ANSWERED_ELSEWHERE,
    CALL_REJECTED,
    CALL_CANCELLED,
    CALL_MISSED,
    CALL_ENDED,
    CALL_BUSY,
    CALL_GLARE,
    CALL_PARTICIPANT_JOINED,
    CALL_PARTICIPANT_LEFT,
    CALL_PARTICIPANT_REJECTED,
    CALL_PARTICIPANTS,
    CALL_PEER_RECONNECTING,
    CALL_PEER_REJOINED,
    CALL_REJOINED,
    ERROR,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_list_names_an_event_once_and_only_the_two_way_ones_are_on_both() {
        for list in [RECEIVED, SENT] {
            let mut seen = std::collections::HashSet::new();
            for name in list {
                assert!(seen.insert(name), "{name} twice");
            }
        }
        let both: Vec<&str> = RECEIVED
            .iter()
            .filter(|n| SENT.contains(n))
            .copied()
            .collect();
        assert_eq!(
            both,
            [
                TYPING_START,
                TYPING_STOP,
                RECEIPT_DELIVERED,
                RECEIPT_READ,
                CALL_OFFER,
                CALL_ANSWER,
                CALL_ICE
            ]
        );
    }

    #[test]
    fn every_received_name_parses_as_a_command() {
        for name in RECEIVED {
            if let Err(e) = super::super::protocol::Command::parse(name, serde_json::json!({})) {
                assert_ne!(e.code(), "unknown_event", "{name}");
            }
        }
    }
}
