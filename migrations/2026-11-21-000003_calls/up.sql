-- Calls (1:1 and group) and their participants; every state transition is written here.
CREATE TABLE calls (
    -- Server-generated, or a client-chosen room name where a dialect supplies one.
    id              TEXT PRIMARY KEY,
    kind            TEXT        NOT NULL DEFAULT 'direct' CHECK (kind IN ('direct', 'group')),
    call_type       TEXT        NOT NULL CHECK (call_type IN ('audio', 'video')),
    provider        TEXT        NOT NULL DEFAULT 'webrtc' CHECK (provider IN ('webrtc', 'agora')),
    channel_name    TEXT,
    caller_id       BIGINT REFERENCES users (id) ON DELETE SET NULL,
    conversation_id BIGINT REFERENCES conversations (id) ON DELETE SET NULL,
    status          TEXT        NOT NULL
        CHECK (status IN ('initiated', 'ringing', 'answered', 'ongoing', 'ended',
                          'rejected', 'missed', 'busy', 'cancelled', 'failed')),
    end_reason      TEXT,
    ended_by        BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    ringing_at      TIMESTAMPTZ,
    answered_at     TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    duration_secs   INTEGER
);
CREATE INDEX calls_open ON calls (created_at) WHERE ended_at IS NULL;
CREATE INDEX calls_created ON calls (created_at DESC);
CREATE INDEX calls_caller ON calls (caller_id, created_at DESC);

CREATE TABLE call_participants (
    call_id           TEXT        NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    user_id           BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role              TEXT        NOT NULL CHECK (role IN ('caller', 'callee')),
    status            TEXT        NOT NULL
        CHECK (status IN ('invited', 'ringing', 'joined', 'left', 'rejected', 'missed', 'busy', 'cancelled')),
    device_session_id TEXT,
    invited_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    joined_at         TIMESTAMPTZ,
    left_at           TIMESTAMPTZ,
    PRIMARY KEY (call_id, user_id)
);
CREATE INDEX call_participants_user ON call_participants (user_id, invited_at DESC);
