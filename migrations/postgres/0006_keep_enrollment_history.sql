-- Enrollment history outlives nothing by accident: deleting a stream no longer
-- cascades into its enrollments (whose paid rows the ledger's rows refer to). The
-- DELETE route removes free enrollments itself and refuses (409) when paid ones,
-- active or refunded, exist; this constraint is the backstop for any other path.
ALTER TABLE enrollments DROP CONSTRAINT enrollments_stream_id_fkey;
ALTER TABLE enrollments ADD CONSTRAINT enrollments_stream_id_fkey
    FOREIGN KEY (stream_id) REFERENCES streams (id) ON DELETE RESTRICT;
