//! Starting contact through the engine: direct conversations opened under the contact policy
//! ([`crate::policy`]), shared by REST handlers and socket commands so both refuse the same
//! attempts with the same `not_allowed`.

use super::protocol::{DirectSend, SendDraft};
use super::Engine;
use crate::auth::Identity;
use crate::db::conversations::{self as convs, Conversation};
use crate::db::messages::MessageView;
use crate::error::{AppError, AppResult};
use crate::policy;
use crate::realtime::events;
use serde_json::{json, Value};

impl Engine {
    /// Checks that `actor` may contact every user in `targets` under the contact policy.
    pub(crate) async fn check_contact(&self, actor: i64, targets: Vec<i64>) -> AppResult<()> {
        let config = self.config.clone();
        self.db
            .run(move |conn| policy::check_contact(conn, &config, actor, &targets))
            .await
    }

    /// Returns the direct conversation of `identity` and `other`, creating it when the contact
    /// policy allows (`not_allowed` otherwise; nothing is created). A new conversation is
    /// announced to both users' devices as `conversation:new`. The flag tells whether it was
    /// created now.
    pub(crate) async fn open_direct(
        &self,
        identity: &Identity,
        other: i64,
    ) -> AppResult<(Conversation, bool)> {
        let me = identity.user_id();
        if other == me {
            return Err(AppError::validation(
                "a direct conversation needs another user",
            ));
        }
        let config = self.config.clone();
        let (conv, created) = self
            .db
            .run(move |conn| {
                policy::check_contact(conn, &config, me, &[other])?;
                convs::get_or_create_direct(conn, me, other)
            })
            .await?;
        if created {
            self.direct_created(&conv, me, other).await;
        }
        Ok((conv, created))
    }

    /// Announces a direct conversation created by someone's action (policy-checked opening or
    /// an accepted chat request).
    pub(crate) async fn direct_created(&self, conv: &Conversation, a: i64, b: i64) {
        self.db.contact_cache().direct_created(conv.id, a, b);
        self.members_changed(conv.id, vec![a, b]);
        let list = vec![conv.clone()];
        match self.db.run(move |conn| convs::views(conn, list, a)).await {
            Ok(mut views) => {
                if let Some(view) = views.pop() {
                    self.notify_users(vec![a, b], events::CONVERSATION_NEW, json!(view));
                }
            }
            Err(e) => {
                tracing::warn!(conversation = conv.id, error = %e, "could not announce a new conversation")
            }
        }
    }

    /// `message:send` to a user: opens the direct conversation under the policy, then sends
    /// exactly like a send to that conversation.
    pub(crate) async fn send_direct(
        &self,
        identity: &Identity,
        send: DirectSend,
        origin: Option<u64>,
    ) -> AppResult<MessageView> {
        let (conv, _) = self.open_direct(identity, send.to).await?;
        let draft = SendDraft::in_conversation(conv.id, send.rest)?;
        self.send_message(identity, draft, origin).await
    }

    /// `conversation:open`: the direct conversation's view for the caller.
    pub(crate) async fn open_direct_view(
        &self,
        identity: &Identity,
        other: i64,
    ) -> AppResult<Value> {
        let (conv, created) = self.open_direct(identity, other).await?;
        let me = identity.user_id();
        let view = self
            .db
            .run(move |conn| convs::views(conn, vec![conv], me))
            .await?
            .pop()
            .ok_or_else(|| AppError::NotFound("conversation not found".into()))?;
        Ok(json!({ "conversation": view, "created": created }))
    }
}
