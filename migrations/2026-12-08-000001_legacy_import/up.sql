-- What `switchboard import` brought over from a legacy backend keeps the ids its app holds.
-- `source` names the backend (`seed000`, `seed002`, `seed003`); a legacy id is unique within its
-- source, whatever it names. Several legacy ids may name one row (seed 000's `dm_a_b` and
-- `dm_b_a`; two exported accounts of one person); the oldest mapping is the one shown back.
CREATE TABLE legacy_ids (
    source      TEXT        NOT NULL CHECK (source IN ('seed000', 'seed002', 'seed003')),
    legacy_id   TEXT        NOT NULL CHECK (char_length(legacy_id) BETWEEN 1 AND 200),
    kind        TEXT        NOT NULL CHECK (kind IN ('user', 'conversation', 'chat_request')),
    id          BIGINT      NOT NULL,
    imported_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, legacy_id)
);
CREATE INDEX legacy_ids_target ON legacy_ids (source, kind, id, imported_at);
-- A legacy token's subject names no source: looked up by the id alone.
CREATE INDEX legacy_ids_lookup ON legacy_ids (legacy_id, kind);

-- A message's legacy id (one per message: the document it was imported from).
ALTER TABLE messages ADD COLUMN legacy_id TEXT;
CREATE UNIQUE INDEX messages_legacy ON messages (legacy_id) WHERE legacy_id IS NOT NULL;

-- Imported accounts may have neither phone nor e-mail (they sign in with the tokens their old
-- backend issued, or with a phone or e-mail added later); accounts created here still need one.
ALTER TABLE users ADD COLUMN legacy_source TEXT
    CHECK (legacy_source IN ('seed000', 'seed002', 'seed003'));
ALTER TABLE users DROP CONSTRAINT users_check;
ALTER TABLE users ADD CONSTRAINT users_check
    CHECK (phone IS NOT NULL OR email IS NOT NULL OR legacy_source IS NOT NULL);
