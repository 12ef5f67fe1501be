-- A refunded enrollment no longer blocks enrolling again: at most one *active*
-- enrollment per user and stream; refunded ones stay as history.
ALTER TABLE enrollments DROP CONSTRAINT enrollments_user_id_stream_id_key;
CREATE UNIQUE INDEX enrollments_active_once ON enrollments (user_id, stream_id) WHERE status = 'active';
-- Lookups by user (any status) lost the unique constraint's index.
CREATE INDEX enrollments_user ON enrollments (user_id, stream_id);
