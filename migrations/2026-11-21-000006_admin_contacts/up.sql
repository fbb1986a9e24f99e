-- Admin dashboard and contact policy: support conversations (one per user, shared by every
-- admin), a per-user token cut-off for forced logouts, indexes for dashboard counts, and the
-- audit log of admin actions.
ALTER TABLE conversations DROP CONSTRAINT conversations_kind_check;
ALTER TABLE conversations
    ADD CONSTRAINT conversations_kind_check CHECK (kind IN ('direct', 'group', 'team', 'support'));
-- Support conversations: the user (e.g. a staff member) the admins talk to; one each.
ALTER TABLE conversations
    ADD COLUMN support_user_id BIGINT UNIQUE REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE conversations
    ADD CONSTRAINT conversations_support_check CHECK ((kind = 'support') = (support_user_id IS NOT NULL));

-- Access tokens issued before this instant are refused (forced logout of session-less tokens).
ALTER TABLE users ADD COLUMN tokens_valid_after TIMESTAMPTZ;

-- Dashboard counts: messages per minute and per day, calls per day.
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    actor_id    BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- Dotted action name, e.g. `user.ban`, `message.delete`, `call.end`.
    action      TEXT        NOT NULL CHECK (char_length(action) BETWEEN 1 AND 64),
    -- What the action was applied to (`user`, `conversation`, `message`, `call`).
    target_type TEXT        NOT NULL,
    target_id   TEXT,
    details     JSONB       NOT NULL DEFAULT '{}'::jsonb,
    ip          TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_created ON audit_log (created_at DESC, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, id DESC);
