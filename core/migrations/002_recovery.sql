-- crvs tablet store, version 2: the server's proof of every KIdC received.
--
-- A proof is the server's signature over the record id and its code
-- (crvs_schema::evidence::IssuanceProof). When the server is restored from
-- a backup older than the code, the tablet's resent change sets travel
-- with their records' proofs, and the server records the same code again
-- instead of drawing a new one. Sealed: the code identifies a person.
CREATE TABLE kidc_evidence (
    record_id     BLOB PRIMARY KEY NOT NULL REFERENCES records (id),  -- UUIDv7, 16 bytes
    proof_sealed  BLOB NOT NULL                                     -- sealed IssuanceProof::to_bytes()
) STRICT;

-- Each time the store adopted the server's chain position (it lost its
-- last commit, or an old copy of it was put back): the server's sequence
-- number and hash it continued from. The outbox has no rows for the change
-- sets the server applied before that; `crvs check` accepts the chain's
-- gap only where an adoption explains it.
CREATE TABLE chain_adoptions (
    seq         INTEGER PRIMARY KEY NOT NULL,  -- the server's last applied change set
    hash        BLOB NOT NULL,                 -- its hash: the next change set links to it
    adopted_at  INTEGER NOT NULL               -- device clock
) STRICT;

-- When the server set the record aside (an operator unblocked this tablet,
-- stuck behind a change set that carried it): none of its changes are sent
-- again; it must be registered again as a new record.
ALTER TABLE records ADD COLUMN set_aside_at INTEGER;
