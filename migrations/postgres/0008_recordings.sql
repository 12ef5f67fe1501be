-- Recording and replay (issue 14). `record_media`: 1 record this stream, 0 not,
-- NULL follow the server's `[recording] enabled`. The recording itself is a folder
-- (`recording_path`, set when recording starts, relative to the data directory
-- unless the recording root is elsewhere); its length and codecs are set when the
-- stream ends (or when a crashed recording is repaired at start).
ALTER TABLE streams ADD COLUMN record_media BIGINT;
ALTER TABLE streams ADD COLUMN recording_started_at BIGINT;
ALTER TABLE streams ADD COLUMN recording_finished_at BIGINT;
ALTER TABLE streams ADD COLUMN recording_duration_ms BIGINT;
ALTER TABLE streams ADD COLUMN recording_codecs TEXT;
