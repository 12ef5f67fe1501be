-- Linked Discord accounts (issue 17, src/discord/links.rs): one per tandem
-- user, one tandem user per Discord account. The tokens are sealed like the
-- platforms' OAuth tokens (AES-256-GCM, associated data
-- `discord_links:{user_id}:{access_token|refresh_token}`, key id kept for
-- rotation); `status` is `ok`, or `needs_relink` once Discord refused the
-- refresh token.
CREATE TABLE discord_links (
    user_id               TEXT PRIMARY KEY,
    discord_user_id       TEXT NOT NULL UNIQUE,
    username              TEXT NOT NULL,
    global_name           TEXT,
    avatar                TEXT,
    scopes                TEXT NOT NULL,
    access_token_sealed   TEXT NOT NULL,
    access_token_key_id   TEXT NOT NULL,
    refresh_token_sealed  TEXT,
    refresh_token_key_id  TEXT,
    token_expires_at      BIGINT,          -- unix ms
    status                TEXT NOT NULL CHECK (status IN ('ok', 'needs_relink')),
    linked_at             BIGINT NOT NULL, -- unix ms
    updated_at            BIGINT NOT NULL
);
