-- Conversations, members with receipt cursors, messages, chat requests and contacts.
CREATE TABLE conversations (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT        NOT NULL CHECK (kind IN ('direct', 'group', 'team')),
    title           TEXT,
    avatar_url      TEXT,
    -- Direct conversations: "<lower user id>:<higher user id>", so a pair has exactly one.
    participant_key TEXT UNIQUE,
    -- Team conversations: the team role whose holders are the members.
    team_role       TEXT UNIQUE,
    context_type    TEXT CHECK (context_type IN ('consultation', 'service_request', 'support', 'general')),
    context_id      TEXT,
    created_by      BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- Highest message seq handed out; bumped inside the transaction that inserts messages,
    -- which serialises writers per conversation and keeps seq gap-free across processes.
    last_seq        BIGINT      NOT NULL DEFAULT 0,
    -- Change counter for sync: every insert, edit, delete and receipt move takes the next value.
    last_change     BIGINT      NOT NULL DEFAULT 0,
    last_message_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'direct') = (participant_key IS NOT NULL)),
    CHECK ((kind = 'team') = (team_role IS NOT NULL))
);
CREATE INDEX conversations_context ON conversations (context_type, context_id) WHERE context_id IS NOT NULL;
CREATE INDEX conversations_last_message ON conversations (last_message_at DESC NULLS LAST, id DESC);

CREATE TABLE conversation_members (
    conversation_id BIGINT      NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            TEXT        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    joined_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Receipt cursors (message seq); they only move forward.
    delivered_up_to BIGINT      NOT NULL DEFAULT 0,
    read_up_to      BIGINT      NOT NULL DEFAULT 0,
    delivered_at    TIMESTAMPTZ,
    read_at         TIMESTAMPTZ,
    -- conversations.last_change value taken by the latest cursor move (sync of receipts).
    receipt_change  BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_user ON conversation_members (user_id, conversation_id);
CREATE INDEX conversation_members_receipts ON conversation_members (conversation_id, receipt_change);

CREATE TABLE messages (
    id                BIGSERIAL PRIMARY KEY,
    conversation_id   BIGINT      NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq               BIGINT      NOT NULL,
    change_seq        BIGINT      NOT NULL,
    sender_id         BIGINT REFERENCES users (id) ON DELETE SET NULL,
    kind              TEXT        NOT NULL DEFAULT 'text'
        CHECK (kind IN ('text', 'image', 'audio', 'file', 'system', 'voice_call', 'video_call')),
    content           TEXT        NOT NULL DEFAULT '',
    media_url         TEXT,
    reply_to_id       BIGINT REFERENCES messages (id) ON DELETE SET NULL,
    metadata          JSONB,
    -- Idempotency key chosen by the sending client; unique per sender.
    client_message_id TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at         TIMESTAMPTZ,
    deleted_at        TIMESTAMPTZ,
    deleted_by        BIGINT REFERENCES users (id) ON DELETE SET NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_message_id)
);
CREATE INDEX messages_change ON messages (conversation_id, change_seq);

CREATE TABLE chat_requests (
    id              BIGSERIAL PRIMARY KEY,
    from_user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    to_user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message         TEXT,
    status          TEXT        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'accepted', 'declined', 'cancelled')),
    conversation_id BIGINT REFERENCES conversations (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    responded_at    TIMESTAMPTZ,
    CHECK (from_user_id <> to_user_id)
);
CREATE UNIQUE INDEX chat_requests_one_pending ON chat_requests (from_user_id, to_user_id) WHERE status = 'pending';
CREATE INDEX chat_requests_to ON chat_requests (to_user_id, created_at DESC);
CREATE INDEX chat_requests_from ON chat_requests (from_user_id, created_at DESC);

-- A user's synced address book, numbers normalised to E.164.
CREATE TABLE contacts (
    owner_id   BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    phone      TEXT        NOT NULL,
    name       TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, phone)
);
CREATE INDEX contacts_phone ON contacts (phone);
