-- crvs-server schema on PostgreSQL, version 1: the state SQLite reaches
-- at its migration 009, in one step (PostgreSQL has its own numbered
-- migrations, tracked in `schema_version`).
--
-- Types: ids are UUID strings (TEXT, as on SQLite, so that both backends
-- hash and dump the same text), times are BIGINT milliseconds, blobs are
-- BYTEA. Every text column sorts and compares byte by byte (`COLLATE
-- "C"`), as SQLite does, whatever the database's locale. The append-only tables refuse UPDATE and DELETE by trigger, as
-- on SQLite; the invariants (`kidc` unique, one code per record) are
-- constraints.

CREATE FUNCTION crvs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TABLE server_meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);

CREATE TABLE server_actors (
    actor_id   TEXT COLLATE "C" PRIMARY KEY,
    first_used BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT COLLATE "C" PRIMARY KEY,
    office     TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    device_id  TEXT COLLATE "C",
    mac_key    TEXT COLLATE "C",
    public_key TEXT COLLATE "C"
);

CREATE TABLE devices (
    device_id            TEXT COLLATE "C" PRIMARY KEY,
    office               TEXT COLLATE "C" NOT NULL,
    public_key           TEXT COLLATE "C" NOT NULL,
    enrolled_at          BIGINT NOT NULL,
    revoked_at           BIGINT,
    last_seq             BIGINT NOT NULL DEFAULT 0,
    last_hash            TEXT COLLATE "C" NOT NULL,
    last_sync_at         BIGINT,
    last_device_clock_ms BIGINT,
    clock_skew_ms        BIGINT,
    clock_flagged_at     BIGINT,
    refused_seq          BIGINT,
    refused_code         TEXT COLLATE "C",
    refused_at           BIGINT,
    last_request_counter BIGINT NOT NULL DEFAULT 0,
    lineage              TEXT COLLATE "C",
    clone_refusals       BIGINT NOT NULL DEFAULT 0,
    clone_refused_at     BIGINT,
    adoptions            BIGINT NOT NULL DEFAULT 0,
    unblock_seq          BIGINT,
    -- The office feed's cursor at enrolment: the office rows at or below
    -- it are in the device's snapshot.
    feed_floor           BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_office ON devices (office);

CREATE TABLE change_set_log (
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    seq         BIGINT NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL,
    signed      BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TRIGGER change_set_log_append_only BEFORE UPDATE OR DELETE ON change_set_log
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();
CREATE TRIGGER change_set_log_no_truncate BEFORE TRUNCATE ON change_set_log
    FOR EACH STATEMENT EXECUTE FUNCTION crvs_append_only();

CREATE TABLE records (
    record_id     TEXT COLLATE "C" PRIMARY KEY,
    office        TEXT COLLATE "C" NOT NULL,
    origin_device TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    kind          TEXT COLLATE "C" NOT NULL,
    status        TEXT COLLATE "C" NOT NULL,
    doc           BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX records_office ON records (office, created_at, record_id);

CREATE TABLE kidc_issuance (
    kidc      TEXT COLLATE "C" PRIMARY KEY,
    record_id TEXT COLLATE "C" NOT NULL UNIQUE,
    category  INTEGER NOT NULL,
    issued_at BIGINT NOT NULL,
    device_id TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    reason    TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER kidc_issuance_append_only BEFORE UPDATE OR DELETE ON kidc_issuance
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();
CREATE TRIGGER kidc_issuance_no_truncate BEFORE TRUNCATE ON kidc_issuance
    FOR EACH STATEMENT EXECUTE FUNCTION crvs_append_only();

-- The pull feed. Its cursor is counted per office (`feed_counters`), not
-- by a SERIAL: a transaction takes the next number of its office under
-- the row lock of that office's counter and keeps the lock until it
-- commits, so within an office the numbers become visible in order and a
-- tablet reading "after my cursor" never skips a row that commits later
-- (ARCHITECTURE.md, "The feed cursor on PostgreSQL"). `feed_office` is
-- the office of the addressee; `office` is set for rows addressed to
-- every device of the office (as on SQLite) and NULL for a row addressed
-- to `device_id` alone (a snapshot at enrolment).
CREATE TABLE feed_counters (
    office TEXT COLLATE "C" PRIMARY KEY,
    last   BIGINT NOT NULL
);
CREATE TABLE server_changes (
    feed_office TEXT COLLATE "C" NOT NULL,
    cursor      BIGINT NOT NULL,
    device_id   TEXT COLLATE "C" NOT NULL REFERENCES devices (device_id),
    record_id   TEXT COLLATE "C" NOT NULL,
    change      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    office      TEXT COLLATE "C",
    kind        TEXT COLLATE "C" NOT NULL CHECK (kind IN ('server', 'tablet', 'snapshot')),
    PRIMARY KEY (feed_office, cursor)
);

CREATE TABLE holds (
    record_id   TEXT COLLATE "C" PRIMARY KEY,
    office      TEXT COLLATE "C" NOT NULL,
    reason      TEXT COLLATE "C" NOT NULL,
    since       BIGINT NOT NULL,
    released_at BIGINT
);
CREATE TABLE hold_releases (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   TEXT COLLATE "C" NOT NULL,
    hold_reason TEXT COLLATE "C" NOT NULL,
    by_operator TEXT COLLATE "C" NOT NULL,
    why         TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER hold_releases_append_only BEFORE UPDATE OR DELETE ON hold_releases
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();

CREATE TABLE unblocks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    code        TEXT COLLATE "C" NOT NULL,
    by_operator TEXT COLLATE "C" NOT NULL,
    why         TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL
);
CREATE TRIGGER unblocks_append_only BEFORE UPDATE OR DELETE ON unblocks
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();
CREATE TABLE set_aside (
    device_id TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    hash      TEXT COLLATE "C" NOT NULL,
    signed    BYTEA NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TRIGGER set_aside_append_only BEFORE UPDATE OR DELETE ON set_aside
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();
CREATE TABLE set_aside_records (
    record_id TEXT COLLATE "C" PRIMARY KEY,
    device_id TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL
);

CREATE TABLE staff (
    office     TEXT COLLATE "C" NOT NULL,
    staff_key  TEXT COLLATE "C" NOT NULL,
    staff_id   TEXT COLLATE "C" NOT NULL,
    roles      TEXT COLLATE "C" NOT NULL,
    pin_hash   TEXT COLLATE "C",
    added_at   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    removed_at BIGINT,
    PRIMARY KEY (office, staff_key)
);
CREATE TABLE staff_history (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    office      TEXT COLLATE "C" NOT NULL,
    staff_key   TEXT COLLATE "C" NOT NULL,
    staff_id    TEXT COLLATE "C" NOT NULL,
    event       TEXT COLLATE "C" NOT NULL,
    roles       TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL,
    by_operator TEXT COLLATE "C" NOT NULL
);
CREATE INDEX staff_history_person ON staff_history (office, staff_key, at);
CREATE INDEX staff_history_office ON staff_history (office, at, id);
CREATE TRIGGER staff_history_append_only BEFORE UPDATE OR DELETE ON staff_history
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();

CREATE TABLE api_keys (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL,
    scope      TEXT COLLATE "C" NOT NULL,
    key_hash   TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE notifications (
    notification_id      TEXT COLLATE "C" PRIMARY KEY,
    kind                 TEXT COLLATE "C" NOT NULL CHECK (kind IN ('birth', 'death')),
    source_system        TEXT COLLATE "C" NOT NULL,
    source_reference     TEXT COLLATE "C" NOT NULL,
    commune              TEXT COLLATE "C" NOT NULL,
    payload              TEXT COLLATE "C" NOT NULL,
    api_key_id           TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    received_at          BIGINT NOT NULL,
    registered_record_id TEXT COLLATE "C",
    registered_at        BIGINT,
    UNIQUE (source_system, source_reference)
);
CREATE INDEX notifications_pending_by_commune
    ON notifications (commune, received_at) WHERE registered_record_id IS NULL;
CREATE INDEX notifications_pending_by_time
    ON notifications (received_at) WHERE registered_record_id IS NULL;
CREATE FUNCTION crvs_notification_received_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.notification_id, NEW.kind, NEW.source_system, NEW.source_reference, NEW.commune,
        NEW.payload, NEW.api_key_id, NEW.received_at)
       IS DISTINCT FROM
       (OLD.notification_id, OLD.kind, OLD.source_system, OLD.source_reference, OLD.commune,
        OLD.payload, OLD.api_key_id, OLD.received_at) THEN
        RAISE EXCEPTION 'a received notification does not change' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER notifications_received_no_update BEFORE UPDATE ON notifications
    FOR EACH ROW EXECUTE FUNCTION crvs_notification_received_fixed();
CREATE TRIGGER notifications_no_delete BEFORE DELETE ON notifications
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();

CREATE TABLE registration_counters (
    office TEXT COLLATE "C" NOT NULL,
    year   INTEGER NOT NULL,
    last   BIGINT NOT NULL,
    PRIMARY KEY (office, year)
);

-- The Population Registry. `seq` is taken under the registry's lock
-- (a transaction-level advisory lock, held to commit), so the log's order
-- is the order in which its events were applied and committed.
CREATE TABLE registry_events (
    seq                 BIGINT PRIMARY KEY,
    record_id           TEXT COLLATE "C" NOT NULL UNIQUE,
    kind                TEXT COLLATE "C" NOT NULL,
    registration_number TEXT COLLATE "C" NOT NULL,
    registered_at       BIGINT NOT NULL,
    office              TEXT COLLATE "C" NOT NULL,
    event               TEXT COLLATE "C" NOT NULL,
    kidc                TEXT COLLATE "C",
    amends_record_id    TEXT COLLATE "C",
    amends_kidc         TEXT COLLATE "C",
    late                SMALLINT NOT NULL CHECK (late IN (0, 1))
);
CREATE INDEX registry_events_office_kind ON registry_events (office, kind);
CREATE TRIGGER registry_events_append_only BEFORE UPDATE OR DELETE ON registry_events
    FOR EACH ROW EXECUTE FUNCTION crvs_append_only();

CREATE TABLE registry_persons (
    person_id               TEXT COLLATE "C" PRIMARY KEY,
    kidc                    TEXT COLLATE "C" UNIQUE,
    family_name             TEXT COLLATE "C",
    given_name              TEXT COLLATE "C",
    family_name_latin       TEXT COLLATE "C",
    given_name_latin        TEXT COLLATE "C",
    sex                     TEXT COLLATE "C",
    date_of_birth           TEXT COLLATE "C",
    place_of_birth_kind     TEXT COLLATE "C",
    place_of_birth_facility TEXT COLLATE "C",
    place_of_birth_village  TEXT COLLATE "C",
    nationality             TEXT COLLATE "C",
    citizenship             TEXT COLLATE "C",
    marital_status          TEXT COLLATE "C",
    residence_village_code  TEXT COLLATE "C",
    date_of_death           TEXT COLLATE "C",
    death_record_id         TEXT COLLATE "C",
    first_seq               BIGINT NOT NULL,
    last_seq                BIGINT NOT NULL
);
CREATE TABLE registry_documents (
    kind      TEXT COLLATE "C" NOT NULL,
    number    TEXT COLLATE "C" NOT NULL,
    person_id TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    seq       BIGINT NOT NULL,
    PRIMARY KEY (kind, number)
);
CREATE INDEX registry_documents_by_person ON registry_documents (person_id);
CREATE TABLE registry_parents (
    child_id  TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    parent_id TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    relation  TEXT COLLATE "C" NOT NULL CHECK (relation IN ('mother', 'father', 'adoptive')),
    seq       BIGINT NOT NULL,
    -- The insertion order (SQLite's rowid), for listing in order.
    ord       BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (child_id, parent_id, relation)
);
CREATE INDEX registry_parents_by_parent ON registry_parents (parent_id);
CREATE TABLE registry_marriages (
    marriage_id      TEXT COLLATE "C" PRIMARY KEY,
    spouse_a         TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    spouse_b         TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    date_of_marriage TEXT COLLATE "C" NOT NULL,
    place_village    TEXT COLLATE "C" NOT NULL,
    ended_on         TEXT COLLATE "C",
    ended_by         TEXT COLLATE "C" CHECK (ended_by IN ('divorce', 'death')),
    end_record_id    TEXT COLLATE "C"
);
CREATE INDEX registry_marriages_by_a ON registry_marriages (spouse_a);
CREATE INDEX registry_marriages_by_b ON registry_marriages (spouse_b);
CREATE TABLE registry_marital_history (
    person_id TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    seq       BIGINT NOT NULL,
    status    TEXT COLLATE "C" NOT NULL,
    since     TEXT COLLATE "C",
    PRIMARY KEY (person_id, seq)
);
CREATE TABLE registry_person_events (
    person_id TEXT COLLATE "C" NOT NULL REFERENCES registry_persons (person_id),
    seq       BIGINT NOT NULL,
    role      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (person_id, seq, role)
);
