-- Version 6 (after the staff roster's 005): notifications of births and
-- deaths from health facility systems and courts.
--
-- API keys of the institutions' systems. A key is 32 random bytes, shown
-- once by `crvs-server api-key`; only its SHA-256 is kept (the key is
-- high-entropy, so a plain hash is enough, and it is looked up by that
-- hash). `scope` is what the key may do (`notify`, ...). A revoked key
-- stays, so that the notifications it sent keep naming it.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- One row per notification received. The sender's (system, reference)
-- is unique: a replay finds its row and creates nothing. `payload` is
-- the validated notification as JSON (names normalized); `commune` is
-- the commune of the residence village, where it is routed. A
-- notification is registered once a record is registered for it
-- (`registered_record_id`, `registered_at`: written by later work).
CREATE TABLE notifications (
    notification_id      TEXT PRIMARY KEY,
    kind                 TEXT NOT NULL CHECK (kind IN ('birth', 'death')),
    source_system        TEXT NOT NULL,
    source_reference     TEXT NOT NULL,
    commune              TEXT NOT NULL,
    payload              TEXT NOT NULL,
    api_key_id           TEXT NOT NULL REFERENCES api_keys (id),
    received_at          BIGINT NOT NULL,
    registered_record_id TEXT,
    registered_at        BIGINT,
    UNIQUE (source_system, source_reference)
);
-- The tablets of a commune pull its pending notifications; operators
-- list those pending for too long.
CREATE INDEX notifications_pending_by_commune
    ON notifications (commune, received_at) WHERE registered_record_id IS NULL;
CREATE INDEX notifications_pending_by_time
    ON notifications (received_at) WHERE registered_record_id IS NULL;

-- What was received never changes, and nothing is deleted: only the
-- registration columns are ever written after the insert.
CREATE TRIGGER notifications_received_no_update
    BEFORE UPDATE OF notification_id, kind, source_system, source_reference, commune,
                     payload, api_key_id, received_at ON notifications
BEGIN
    SELECT RAISE(ABORT, 'a received notification does not change');
END;

CREATE TRIGGER notifications_no_delete BEFORE DELETE ON notifications
BEGIN
    SELECT RAISE(ABORT, 'notifications are never deleted');
END;
