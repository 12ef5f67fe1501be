-- Course servers (issue 17, API.md "### Discord"): a stream's Discord server
-- (the invite link shown to the enrolled, and for automatic membership the
-- guild and the role the bot gives), and what the bot did for each enrolled
-- user: the owner's view of every attempt (`GET /v1/streams/{id}/discord/members`).
CREATE TABLE stream_discord (
    stream_id   TEXT PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    invite_url  TEXT,              -- https://discord.gg/CODE or https://discord.com/invite/CODE
    guild_id    TEXT,              -- snowflake; with a bot token: automatic membership
    role_id     TEXT,              -- snowflake; given on enrollment, removed when access ends
    updated_by  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE discord_members (
    stream_id        TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    user_id          TEXT NOT NULL,
    discord_user_id  TEXT,         -- the linked account the bot added (kept to remove the role)
    status           TEXT NOT NULL
                     CHECK (status IN ('pending', 'invited', 'joined', 'removed', 'failed')),
    last_error       TEXT,         -- why the last attempt failed, in plain words, never a token
    attempts         BIGINT NOT NULL DEFAULT 0,   -- calls to Discord made for this member
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (stream_id, user_id)
);
CREATE INDEX discord_members_status ON discord_members (status, stream_id);
