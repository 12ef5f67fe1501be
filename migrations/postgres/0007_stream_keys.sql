-- Stream keys (issue 13): one long-lived WHIP credential per stream for OBS and
-- other encoders. Only the SHA-256 of the key is kept (the server never needs the
-- key back, only to recognise it), with its last 4 characters as a hint for the
-- owner. A new key replaces the row (rotation); DELETE removes it (revocation).
-- The stream's deletion takes its key with it.
CREATE TABLE stream_keys (
    stream_id     TEXT PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    key_hash      TEXT NOT NULL UNIQUE,
    hint          TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
