-- Version 5: the staff roster of each office (today a commune), and its
-- history.
--
-- Several staff members share one tablet; each proves who they are with
-- their own PIN. The roster comes from the server (`crvs-server staff
-- add|remove`); a PIN is kept only as an Argon2id PHC string
-- (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), never in plain form.
--
-- `staff` is the current roster: one row per person and office, keyed by
-- `staff_key`, the form in which staff ids are compared
-- (`crvs_schema::workflow::staff_id_key`: NFKC, invisible characters
-- removed, trimmed, lower case), so `CLERK-01` and `clerk-01` are one
-- person. `staff_id` is the id as the operator first entered it. `roles`
-- is a comma-separated list in a fixed order (`clerk,verifier,registrar`).
-- A removed person keeps the row with `removed_at` set and no PIN hash;
-- adding them again clears `removed_at` and needs a new PIN.
CREATE TABLE staff (
    office     TEXT NOT NULL,
    staff_key  TEXT NOT NULL,
    staff_id   TEXT NOT NULL,
    roles      TEXT NOT NULL,
    pin_hash   TEXT,
    added_at   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    removed_at BIGINT,
    PRIMARY KEY (office, staff_key)
);

-- Every change to the roster, in order: `added` (onto the roster, with
-- its roles), `roles_changed`, `pin_set` (the hash is not kept here) and
-- `removed`; with the server time and the operator. `roles` is the set
-- the person holds after the event (empty after `removed`). The server
-- answers "was this person on this office's roster at that time, with
-- which roles" from this table alone. Append-only.
CREATE TABLE staff_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    office      TEXT NOT NULL,
    staff_key   TEXT NOT NULL,
    staff_id    TEXT NOT NULL,
    event       TEXT NOT NULL,
    roles       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    by_operator TEXT NOT NULL
);
CREATE INDEX staff_history_person ON staff_history (office, staff_key, at);
CREATE TRIGGER staff_history_no_update BEFORE UPDATE ON staff_history
BEGIN
    SELECT RAISE(ABORT, 'staff_history is append-only');
END;
CREATE TRIGGER staff_history_no_delete BEFORE DELETE ON staff_history
BEGIN
    SELECT RAISE(ABORT, 'staff_history is append-only');
END;
