-- Every WHIP/WHEP session the server ran: the basis of call history and stats.
CREATE TABLE media_sessions (
    id          TEXT PRIMARY KEY,
    stream      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('publisher', 'viewer')),
    user_id     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,   -- unix ms
    ended_at    BIGINT             -- unix ms, NULL while running
);
CREATE INDEX media_sessions_stream ON media_sessions (stream, started_at);
CREATE INDEX media_sessions_user ON media_sessions (user_id, started_at);
