-- Restream destinations (issue 16): the platform connections a stream is pushed
-- to while it is live (PUT /v1/streams/{id}/destinations replaces the set). The
-- status of each push lives in the process that runs it (src/restream), not here:
-- it changes every few seconds and means nothing after a restart. Deleting a
-- stream or a connection takes its rows with it.
CREATE TABLE stream_destinations (
    stream_id      TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    connection_id  TEXT NOT NULL REFERENCES platform_connections (id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (stream_id, connection_id)
);
CREATE INDEX stream_destinations_connection ON stream_destinations (connection_id);
