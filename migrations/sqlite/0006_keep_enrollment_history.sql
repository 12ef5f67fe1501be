-- Enrollment history outlives nothing by accident: deleting a stream no longer
-- cascades into its enrollments (whose paid rows the ledger's rows refer to). The
-- DELETE route removes free enrollments itself and refuses (409) when paid ones,
-- active or refunded, exist; this constraint is the backstop for any other path.
-- SQLite cannot alter a foreign key, so the table is rebuilt as in 0004, with
-- media_grants (which cascades from enrollments) set aside first.
CREATE TABLE media_grants_keep AS SELECT jti, enrollment_id, expires_at FROM media_grants;
DROP TABLE media_grants;

CREATE TABLE enrollments_new (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    stream_id       TEXT NOT NULL REFERENCES streams (id) ON DELETE RESTRICT,
    price_paid      BIGINT NOT NULL CHECK (price_paid >= 0),
    status          TEXT NOT NULL CHECK (status IN ('active', 'refunded')),
    transaction_id  BIGINT REFERENCES token_transactions (id),
    created_at      BIGINT NOT NULL,
    refunded_at     BIGINT
);
INSERT INTO enrollments_new (id, user_id, stream_id, price_paid, status, transaction_id, created_at, refunded_at)
    SELECT id, user_id, stream_id, price_paid, status, transaction_id, created_at, refunded_at FROM enrollments;
DROP TABLE enrollments;
ALTER TABLE enrollments_new RENAME TO enrollments;
CREATE INDEX enrollments_stream ON enrollments (stream_id);
CREATE UNIQUE INDEX enrollments_active_once ON enrollments (user_id, stream_id) WHERE status = 'active';
CREATE INDEX enrollments_user ON enrollments (user_id, stream_id);

CREATE TABLE media_grants (
    jti            TEXT PRIMARY KEY,
    enrollment_id  TEXT NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    expires_at     BIGINT NOT NULL
);
INSERT INTO media_grants (jti, enrollment_id, expires_at)
    SELECT jti, enrollment_id, expires_at FROM media_grants_keep;
DROP TABLE media_grants_keep;
