-- One row that /readyz and the start-up check rewrite to prove the database
-- still accepts writes (a read-only mount or replica answers SELECT 1 happily).
CREATE TABLE write_probe (
    id     INTEGER PRIMARY KEY,
    at_ms  BIGINT NOT NULL
);
