-- Accounts: users, device sessions (session-bound access tokens), refresh tokens, OTP codes.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- E.164 phone number, unique when present.
    phone         TEXT UNIQUE,
    -- Lower-cased e-mail address, unique when present.
    email         TEXT UNIQUE,
    avatar_url    TEXT,
    -- `pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`; NULL for OTP-only accounts.
    password_hash TEXT,
    -- Free-form roles; `admin` and `master` carry moderation rights.
    roles         TEXT[]      NOT NULL DEFAULT '{}',
    -- Team roles such as `sales` or `support` (team conversations).
    team_roles    TEXT[]      NOT NULL DEFAULT '{}',
    banned_at     TIMESTAMPTZ,
    ban_reason    TEXT,
    last_seen_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
-- Substring search by name or phone (GET /users?q=).
CREATE INDEX users_name_trgm ON users USING gin (name gin_trgm_ops);
CREATE INDEX users_phone_trgm ON users USING gin (phone gin_trgm_ops);
CREATE INDEX users_roles ON users USING gin (roles);
CREATE INDEX users_team_roles ON users USING gin (team_roles);

CREATE TABLE device_sessions (
    id             TEXT PRIMARY KEY,
    user_id        BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name    TEXT,
    user_agent     TEXT,
    ip             TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT
);
CREATE INDEX device_sessions_user ON device_sessions (user_id, created_at DESC);

-- Opaque refresh tokens, stored as SHA-256 digests. A token is single-use: refreshing stamps
-- `rotated_at` and issues a successor; presenting a rotated token again revokes the session.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    session_id TEXT        NOT NULL REFERENCES device_sessions (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    rotated_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- One-time codes for phone registration and login, stored as HMAC digests.
CREATE TABLE otp_codes (
    id          BIGSERIAL PRIMARY KEY,
    phone       TEXT        NOT NULL,
    purpose     TEXT        NOT NULL CHECK (purpose IN ('register', 'login')),
    code_hash   BYTEA       NOT NULL,
    attempts    INTEGER     NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    consumed_at TIMESTAMPTZ
);
CREATE INDEX otp_codes_lookup ON otp_codes (phone, purpose, created_at DESC);
