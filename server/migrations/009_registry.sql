-- Version 8: the Population Registry (`crate::registry`), kept up to date
-- from every registered event in the transaction that registers it.
--
-- The registry's own event log: every event `registry::apply` took, in
-- order, with the registration as applied (the event's JSON). The state
-- tables below are derived from it alone: `crvs-server registry rebuild`
-- replays it through the same code and must give the same rows.
CREATE TABLE registry_events (
    seq                 INTEGER PRIMARY KEY,
    record_id           TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL,
    registration_number TEXT NOT NULL,
    registered_at       INTEGER NOT NULL,
    office              TEXT NOT NULL,
    event               TEXT NOT NULL,
    kidc                TEXT,
    amends_record_id    TEXT,
    amends_kidc         TEXT,
    late                INTEGER NOT NULL CHECK (late IN (0, 1))
) STRICT;

CREATE TRIGGER registry_events_no_update BEFORE UPDATE ON registry_events
BEGIN
    SELECT RAISE(ABORT, 'registry_events is append-only');
END;

CREATE TRIGGER registry_events_no_delete BEFORE DELETE ON registry_events
BEGIN
    SELECT RAISE(ABORT, 'registry_events is append-only');
END;

-- One row per person. `person_id` is derived from the record that first
-- named the person and their role in it (never random), so a rebuild
-- gives the same ids. Most adults have no KIdC; they are found again by
-- an identity document (`registry_documents`). Dates are `YYYY-MM-DD`.
CREATE TABLE registry_persons (
    person_id              TEXT PRIMARY KEY,
    kidc                   TEXT UNIQUE,
    family_name            TEXT,
    given_name             TEXT,
    family_name_latin      TEXT,
    given_name_latin       TEXT,
    sex                    TEXT,
    date_of_birth          TEXT,
    place_of_birth_kind    TEXT,
    place_of_birth_facility TEXT,
    place_of_birth_village TEXT,
    nationality            TEXT,
    citizenship            TEXT,
    marital_status         TEXT,
    residence_village_code TEXT,
    date_of_death          TEXT,
    death_record_id        TEXT,
    first_seq              INTEGER NOT NULL,
    last_seq               INTEGER NOT NULL
) STRICT;

-- Identity documents. **One document, one person**: the primary key is
-- the document (kind and number as printed), so two events naming the
-- same document always name the same person.
CREATE TABLE registry_documents (
    kind      TEXT NOT NULL,
    number    TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES registry_persons (person_id),
    seq       INTEGER NOT NULL,
    PRIMARY KEY (kind, number)
) STRICT;
CREATE INDEX registry_documents_by_person ON registry_documents (person_id);

-- Parents: `mother` and `father` by birth, `adoptive` by adoption.
CREATE TABLE registry_parents (
    child_id  TEXT NOT NULL REFERENCES registry_persons (person_id),
    parent_id TEXT NOT NULL REFERENCES registry_persons (person_id),
    relation  TEXT NOT NULL CHECK (relation IN ('mother', 'father', 'adoptive')),
    seq       INTEGER NOT NULL,
    PRIMARY KEY (child_id, parent_id, relation)
) STRICT;
CREATE INDEX registry_parents_by_parent ON registry_parents (parent_id);

-- Marriages, keyed by the marriage's record id; ended by a divorce or a
-- death (`ended_on`, `ended_by` = 'divorce' or 'death', `end_record_id`).
CREATE TABLE registry_marriages (
    marriage_id      TEXT PRIMARY KEY,
    spouse_a         TEXT NOT NULL REFERENCES registry_persons (person_id),
    spouse_b         TEXT NOT NULL REFERENCES registry_persons (person_id),
    date_of_marriage TEXT NOT NULL,
    place_village    TEXT NOT NULL,
    ended_on         TEXT,
    ended_by         TEXT CHECK (ended_by IN ('divorce', 'death')),
    end_record_id    TEXT
) STRICT;
CREATE INDEX registry_marriages_by_a ON registry_marriages (spouse_a);
CREATE INDEX registry_marriages_by_b ON registry_marriages (spouse_b);

-- Every change of a person's marital status, in order.
CREATE TABLE registry_marital_history (
    person_id TEXT NOT NULL REFERENCES registry_persons (person_id),
    seq       INTEGER NOT NULL,
    status    TEXT NOT NULL,
    since     TEXT,
    PRIMARY KEY (person_id, seq)
) STRICT;

-- The events that named or changed a person, with the person's role.
CREATE TABLE registry_person_events (
    person_id TEXT NOT NULL REFERENCES registry_persons (person_id),
    seq       INTEGER NOT NULL,
    role      TEXT NOT NULL,
    PRIMARY KEY (person_id, seq, role)
) STRICT;
