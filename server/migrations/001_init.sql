-- crvs-server schema, version 1 (SQLite).
--
-- Portability: plain SQL-92 types and statements wherever a portable form
-- exists. Times are BIGINT milliseconds since the Unix epoch. Ids are UUID
-- strings. The SQLite-only parts are marked: BLOB (BYTEA on PostgreSQL),
-- AUTOINCREMENT (an identity column on PostgreSQL) and the trigger syntax
-- (a PL/pgSQL trigger function on PostgreSQL).

-- Key/value facts about this server (its automerge actor id, ...).
CREATE TABLE server_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One-time enrolment tokens. Only the SHA-256 of a token is stored.
CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    office     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    device_id  TEXT
);

-- Enrolled tablets and their sync bookkeeping.
CREATE TABLE devices (
    device_id            TEXT PRIMARY KEY,
    office               TEXT NOT NULL,
    public_key           TEXT NOT NULL,
    enrolled_at          BIGINT NOT NULL,
    revoked_at           BIGINT,
    last_seq             BIGINT NOT NULL DEFAULT 0,
    last_hash            TEXT NOT NULL,
    last_sync_at         BIGINT,
    last_device_clock_ms BIGINT,
    clock_skew_ms        BIGINT,
    clock_flagged_at     BIGINT
);

-- Every accepted change set, signed bytes verbatim: the legal evidence of
-- who registered what. Append-only.
CREATE TABLE change_set_log (
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    signed      BLOB NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE TRIGGER change_set_log_no_update BEFORE UPDATE ON change_set_log
BEGIN
    SELECT RAISE(ABORT, 'change_set_log is append-only');
END;

CREATE TRIGGER change_set_log_no_delete BEFORE DELETE ON change_set_log
BEGIN
    SELECT RAISE(ABORT, 'change_set_log is append-only');
END;

-- The current automerge document of every record (a saved document or a
-- run of raw change chunks; both load with `Automerge::load`).
CREATE TABLE records (
    record_id     TEXT PRIMARY KEY,
    office        TEXT NOT NULL,
    origin_device TEXT NOT NULL REFERENCES devices (device_id),
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    doc           BLOB NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX records_office ON records (office);

-- Every KIdC ever issued, and why. A code is never issued twice and a
-- record never gets a second code. Append-only.
CREATE TABLE kidc_issuance (
    kidc      TEXT PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    category  INTEGER NOT NULL,
    issued_at BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    reason    TEXT NOT NULL
);

CREATE TRIGGER kidc_issuance_no_update BEFORE UPDATE ON kidc_issuance
BEGIN
    SELECT RAISE(ABORT, 'kidc_issuance is append-only');
END;

CREATE TRIGGER kidc_issuance_no_delete BEFORE DELETE ON kidc_issuance
BEGIN
    SELECT RAISE(ABORT, 'kidc_issuance is append-only');
END;

-- The pull feed: every automerge change the server made, addressed to the
-- device that owns the record. A tablet pulls the rows after its cursor.
CREATE TABLE server_changes (
    cursor     INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL REFERENCES devices (device_id),
    record_id  TEXT NOT NULL,
    change     BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX server_changes_device ON server_changes (device_id, cursor);
