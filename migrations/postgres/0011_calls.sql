-- Calls (issue 17): a small group call whose participants each publish one
-- stream `call:{id}:{user}` and view the others'. Who is invited, with which
-- role, and when the call started and ended live here; when each participant
-- was connected is read from `media_sessions` (the server's own session
-- records), whose rows for the call's streams are written in the same
-- transaction as `started_at` and the `last_left` end below.
CREATE TABLE calls (
    id          TEXT PRIMARY KEY,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,            -- the first media session of the call, unix ms
    ended_at    BIGINT,            -- unix ms, NULL while it may still run
    end_reason  TEXT CHECK (end_reason IN ('last_left', 'ended_by_host'))
);
CREATE TABLE call_participants (
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('host', 'participant', 'audience')),
    position    INTEGER NOT NULL,
    removed_at  BIGINT,            -- removed by the host: no new token, no new session
    PRIMARY KEY (call_id, user_id)
);
CREATE INDEX call_participants_user ON call_participants (user_id, call_id);
