-- Watch Together chat, bans and mutes (tandem-signaling's ChatStore, src/rooms.rs).
CREATE TABLE chat_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    user_name     TEXT NOT NULL,
    user_avatar   TEXT,
    text          TEXT NOT NULL,
    client_msg_id TEXT NOT NULL,
    media_time    REAL,
    created_at    BIGINT NOT NULL,   -- unix ms
    deleted_at    BIGINT,            -- unix ms, NULL unless deleted
    deleted_by    TEXT,
    UNIQUE (room, user_id, client_msg_id)
);
CREATE INDEX chat_messages_room ON chat_messages (room, id);

CREATE TABLE room_bans (
    room       TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    by_user    TEXT NOT NULL,
    reason     TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE room_mutes (
    room       TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    by_user    TEXT NOT NULL,
    until_ms   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);
