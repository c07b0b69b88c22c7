-- Version 4: recovery from a restored backup.
--
-- Every automerge actor id the server has used. The server takes a new
-- one at each start, so that a database restored from a backup never
-- makes a change whose actor and sequence number a tablet already holds
-- (automerge refuses a second change with the same pair). Changes that
-- carry any of these actors are the server's: a tablet may not send one.
CREATE TABLE server_actors (
    actor_id   TEXT PRIMARY KEY,
    first_used BIGINT NOT NULL
);
INSERT INTO server_actors (actor_id, first_used)
    SELECT value, 0 FROM server_meta WHERE key = 'server_actor_id';

-- A store's lineage (sync format 3): random, made anew each time a tablet
-- adopts the server's chain position after losing its own (a lost
-- commit, an old copy of its store put back). A request of another
-- lineage is refused as a clone, unless it adopted the device's current
-- position; the refusals are counted for the operators.
ALTER TABLE devices ADD COLUMN lineage TEXT;
ALTER TABLE devices ADD COLUMN clone_refusals BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN clone_refused_at BIGINT;
-- How many times the device adopted the server's chain position.
ALTER TABLE devices ADD COLUMN adoptions BIGINT NOT NULL DEFAULT 0;

-- Records held for review, and what operators did about them. A hold is
-- set by the server (the reason is a stable code); `crvs-server release`
-- re-checks the record and lifts the hold only if it now passes. Every
-- release attempt is audited (who, when, why, and the outcome); the audit
-- is append-only.
CREATE TABLE holds (
    record_id   TEXT PRIMARY KEY,
    office      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    since       BIGINT NOT NULL,
    released_at BIGINT
);
CREATE TABLE hold_releases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id   TEXT NOT NULL,
    hold_reason TEXT NOT NULL,
    by_operator TEXT NOT NULL,
    why         TEXT NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE TRIGGER hold_releases_no_update BEFORE UPDATE ON hold_releases
BEGIN
    SELECT RAISE(ABORT, 'hold_releases is append-only');
END;
CREATE TRIGGER hold_releases_no_delete BEFORE DELETE ON hold_releases
BEGIN
    SELECT RAISE(ABORT, 'hold_releases is append-only');
END;

-- A device stuck behind a change set it cannot fix (refused for a reason
-- a resend cannot cure) is unblocked by an operator: the next change set
-- with that sequence number is *set aside*: kept verbatim as evidence,
-- nothing of it applied, and the device's chain moves past it. Its
-- records are set aside for good (their later changes are ignored, not
-- refused); the tablet marks them so, and they must be registered again.
ALTER TABLE devices ADD COLUMN unblock_seq BIGINT;
CREATE TABLE unblocks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    code        TEXT NOT NULL,
    by_operator TEXT NOT NULL,
    why         TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE TABLE set_aside (
    device_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL,
    signed    BLOB NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE set_aside_records (
    record_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    seq       BIGINT NOT NULL
);
CREATE TRIGGER unblocks_no_update BEFORE UPDATE ON unblocks
BEGIN
    SELECT RAISE(ABORT, 'unblocks is append-only');
END;
CREATE TRIGGER unblocks_no_delete BEFORE DELETE ON unblocks
BEGIN
    SELECT RAISE(ABORT, 'unblocks is append-only');
END;
CREATE TRIGGER set_aside_no_update BEFORE UPDATE ON set_aside
BEGIN
    SELECT RAISE(ABORT, 'set_aside is append-only');
END;
CREATE TRIGGER set_aside_no_delete BEFORE DELETE ON set_aside
BEGIN
    SELECT RAISE(ABORT, 'set_aside is append-only');
END;
