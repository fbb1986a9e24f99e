-- Media uploads. The bytes live in the object store under `media/<id>` (and `media/<id>.thumb`);
-- a row appears only once they are stored, so a crash mid-upload leaves nothing visible. The id
-- is 128 random bits: a guessed one finds nothing.
CREATE TABLE media (
    id TEXT PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'audio', 'video', 'document')),
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    filename TEXT,
    width INTEGER,
    height INTEGER,
    duration_ms BIGINT,
    thumbnail_size BIGINT,
    thumbnail_type TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX media_owner ON media (owner_id);
CREATE INDEX media_created ON media (created_at);

-- A message's attachment: the upload it references and, denormalized (media rows never change),
-- what every client shows of it. No foreign key: a message committed in the same instant as the
-- clean-up removes its (then unreferenced, past-grace) upload must not fail its whole commit
-- batch; such a message shows a link that answers 404.
ALTER TABLE messages
    ADD COLUMN media_id TEXT,
    ADD COLUMN media JSONB;

CREATE INDEX messages_media ON messages (media_id) WHERE media_id IS NOT NULL;
