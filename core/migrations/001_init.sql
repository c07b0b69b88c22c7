-- crvs tablet store, version 1.
--
-- Architecture invariant: no personal data in plaintext columns. Columns
-- named *_sealed hold XChaCha20-Poly1305 ciphertexts (see crypto.rs) whose
-- associated data names the table, the row and the column.

-- Key/value settings: store identity, key wrapping, enrolment, sync
-- bookkeeping. Sealed values: signing_key_sealed.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) STRICT;

-- One row per record (vital event).
CREATE TABLE records (
    id                 BLOB PRIMARY KEY NOT NULL,  -- UUIDv7, 16 bytes
    kind               TEXT NOT NULL,              -- 'birth'
    status             TEXT NOT NULL,              -- workflow state, derived from the document
    created_at         INTEGER NOT NULL,           -- device clock, ms since the epoch
    updated_at         INTEGER NOT NULL,           -- device clock, ms since the epoch
    doc_sealed         BLOB NOT NULL,              -- sealed automerge save()
    kidc_sealed        BLOB,                       -- sealed KIdC, copied from the document for listing
    outboxed_heads     BLOB NOT NULL,              -- automerge heads already put into change sets (32-byte hashes)
    dirty              INTEGER NOT NULL,           -- 1: local changes not yet in any change set
    last_outbox_seq    INTEGER,                    -- seq of the last change set that carries this record
    server_updated_at  INTEGER                     -- device clock when server changes last arrived
) STRICT;

CREATE INDEX records_dirty ON records (dirty) WHERE dirty = 1;

-- Signed change sets, kept after acknowledgement: a server restored from a
-- backup asks for missing ones by a sequence gap.
CREATE TABLE outbox (
    seq           INTEGER PRIMARY KEY NOT NULL,    -- 1, 2, 3, ... per device
    hash          BLOB NOT NULL,                   -- SHA-256 of the signed bytes (hash chain)
    body_sealed   BLOB NOT NULL,                   -- sealed signed change set (it holds names)
    record_count  INTEGER NOT NULL,
    byte_len      INTEGER NOT NULL,                -- length of the signed bytes
    created_at    INTEGER NOT NULL,                -- device clock
    acked_at      INTEGER                          -- device clock when the server acknowledged it
) STRICT;
