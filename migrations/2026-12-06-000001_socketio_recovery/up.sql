-- Socket.IO connection state recovery: what a dropped session needs to come back. The private
-- session id is kept only as its SHA-256; the cursors say where the client stood in each of its
-- conversations, so missed events are read back from the messages themselves.
CREATE TABLE socketio_sessions (
    pid_hash BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    sid TEXT NOT NULL,
    dialect TEXT NOT NULL,
    connected_at TIMESTAMPTZ NOT NULL,
    disconnected_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    state JSONB NOT NULL
);

CREATE INDEX socketio_sessions_user ON socketio_sessions (user_id, disconnected_at);
CREATE INDEX socketio_sessions_expiry ON socketio_sessions (expires_at);
