-- Platform fan-out and meetings (issue 16; src/platforms).
--
-- platform_connections: an instructor's restream destinations. `stream_key`
-- connections keep the platform's key sealed (AES-256-GCM, src/secrets.rs: the
-- key id and base64(nonce || ciphertext || tag), bound to this row and field) with
-- a hint of its last characters; `oauth` connections keep the access and refresh
-- tokens sealed the same way, when the access token expires, and the platform
-- account (Twitch's broadcaster id). `needs_reconnect`: the platform refused the
-- refresh token.
CREATE TABLE platform_connections (
    id                     TEXT PRIMARY KEY,
    owner                  TEXT NOT NULL,
    platform               TEXT NOT NULL,
    name                   TEXT NOT NULL,
    kind                   TEXT NOT NULL CHECK (kind IN ('stream_key', 'oauth')),
    ingest_url             TEXT,
    stream_key_sealed      TEXT,
    stream_key_key_id      TEXT,
    stream_key_hint        TEXT,
    access_token_sealed    TEXT,
    access_token_key_id    TEXT,
    refresh_token_sealed   TEXT,
    refresh_token_key_id   TEXT,
    token_expires_at       BIGINT,
    provider_account_id    TEXT,
    status                 TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'needs_reconnect')),
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);
CREATE INDEX platform_connections_owner ON platform_connections (owner, created_at);

-- A started OAuth authorization: the `state` handed to the provider, bound to
-- the instructor and the platform, its PKCE verifier sealed; claimed once
-- (`used_at`) by the callback within 10 minutes.
CREATE TABLE oauth_states (
    state            TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    platform         TEXT NOT NULL,
    verifier_sealed  TEXT NOT NULL,
    verifier_key_id  TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    used_at          BIGINT
);

-- Meetings and their links (one per platform, `position` 0 the primary); a
-- platform that failed keeps its `error` and no `url`. Jitsi's url is the room
-- (its JWT is minted for each reader). Invitees may read the meeting.
CREATE TABLE meetings (
    id                TEXT PRIMARY KEY,
    owner             TEXT NOT NULL,
    title             TEXT NOT NULL,
    start_at          BIGINT NOT NULL,
    duration_minutes  BIGINT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE TABLE meeting_links (
    meeting_id  TEXT NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    platform    TEXT NOT NULL,
    url         TEXT,
    error       TEXT,
    is_primary  BIGINT NOT NULL,
    position    BIGINT NOT NULL,
    PRIMARY KEY (meeting_id, platform)
);
CREATE TABLE meeting_invitees (
    meeting_id  TEXT NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    PRIMARY KEY (meeting_id, user_id)
);
CREATE INDEX meeting_invitees_user ON meeting_invitees (user_id);
