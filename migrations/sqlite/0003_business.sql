-- Business APIs (src/api): token ledger, streams, paid enrollment, media grants,
-- idempotency keys. Times are BIGINT unix milliseconds.

CREATE TABLE accounts (
    user_id     TEXT PRIMARY KEY,
    balance     BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  BIGINT NOT NULL
);

-- Every change of a balance; a balance equals the sum of its user's rows.
CREATE TABLE token_transactions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        TEXT NOT NULL REFERENCES accounts (user_id),
    amount         BIGINT NOT NULL CHECK (amount <> 0),
    kind           TEXT NOT NULL CHECK (kind IN ('credit', 'enrollment', 'refund', 'adjustment')),
    reference      TEXT,
    balance_after  BIGINT NOT NULL CHECK (balance_after >= 0),
    created_at     BIGINT NOT NULL
);
CREATE INDEX token_transactions_user ON token_transactions (user_id, id);

CREATE TABLE streams (
    id                       TEXT PRIMARY KEY,
    instructor_id            TEXT NOT NULL,
    title                    TEXT NOT NULL,
    description              TEXT,
    status                   TEXT NOT NULL CHECK (status IN ('scheduled', 'live', 'ended', 'cancelled')),
    scheduled_start          BIGINT NOT NULL,
    duration_minutes         BIGINT CHECK (duration_minutes IS NULL OR duration_minutes > 0),
    price_tokens             BIGINT NOT NULL CHECK (price_tokens >= 0),
    replay_days              BIGINT NOT NULL CHECK (replay_days >= 0),
    started_at               BIGINT,
    ended_at                 BIGINT,
    cancelled_at             BIGINT,
    replay_expires_at        BIGINT,
    replay_closed_at         BIGINT,
    recording_path           TEXT,
    recording_deleted_at     BIGINT,
    catalog_migration_at     BIGINT,
    migrated_at              BIGINT,
    migration_attempts       BIGINT NOT NULL DEFAULT 0,
    migration_next_at        BIGINT,
    migration_claimed_by     TEXT,
    migration_claimed_until  BIGINT,
    migration_last_error     TEXT,
    peak_viewers             BIGINT NOT NULL DEFAULT 0 CHECK (peak_viewers >= 0),
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL
);
CREATE INDEX streams_status_start ON streams (status, scheduled_start);
CREATE INDEX streams_instructor ON streams (instructor_id, scheduled_start);
CREATE INDEX streams_migration ON streams (catalog_migration_at) WHERE migrated_at IS NULL;

CREATE TABLE enrollments (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    stream_id       TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    price_paid      BIGINT NOT NULL CHECK (price_paid >= 0),
    status          TEXT NOT NULL CHECK (status IN ('active', 'refunded')),
    transaction_id  BIGINT REFERENCES token_transactions (id),
    created_at      BIGINT NOT NULL,
    refunded_at     BIGINT,
    UNIQUE (user_id, stream_id)
);
CREATE INDEX enrollments_stream ON enrollments (stream_id);

-- Viewer tokens minted for an enrollment: WHEP re-checks the enrollment by jti.
CREATE TABLE media_grants (
    jti            TEXT PRIMARY KEY,
    enrollment_id  TEXT NOT NULL REFERENCES enrollments (id) ON DELETE CASCADE,
    expires_at     BIGINT NOT NULL
);

-- Stored first responses of POSTs that move tokens (Idempotency-Key).
CREATE TABLE idempotency_keys (
    caller        TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    status        BIGINT NOT NULL,
    body          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (caller, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
