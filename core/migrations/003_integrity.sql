-- crvs tablet store, version 3: tamper evidence for every row.
--
-- The sealed columns are authenticated by their encryption; the plaintext
-- ones (status, dirty, acked_at, the outbox bookkeeping, the settings in
-- meta) were not, so someone holding the file but not the passphrase could
-- hide approved births from sync. Now every row of every table carries
-- `mac`, an HMAC-SHA256 under a key derived from the store's data key over
-- the table's name and every column of the row (see core/src/integrity.rs).
-- The function `crvs_row_mac` exists only on a connection that unlocked the
-- store, so:
--
-- * the triggers below compute `mac` on every insert and update, whatever
--   statement made it;
-- * an update or delete of a row whose `mac` does not match aborts
--   (`crvs_tampered`), so no write of ours ever re-authenticates a row
--   someone else changed;
-- * `integrity.sum` is the XOR of every row's `mac`, kept by the same
--   triggers and authenticated by `integrity.tag`: a row deleted, or put
--   back from an older copy of the file, shows as a sum that does not add
--   up.
-- * `crvs_repairing()` is 1 only while `crvs repair` (which needs the
--   passphrase) rewrites rows it found tampered; the MACs it writes still
--   need the key.
--
-- `crvs check`, `list`, `show` and `sync` recompute and compare (and check
-- that the schema is exactly the one these migrations make, so no trigger
-- or view can be slipped in to use the key).

ALTER TABLE meta ADD COLUMN mac BLOB;
ALTER TABLE records ADD COLUMN mac BLOB;
ALTER TABLE outbox ADD COLUMN mac BLOB;
ALTER TABLE kidc_evidence ADD COLUMN mac BLOB;
ALTER TABLE chain_adoptions ADD COLUMN mac BLOB;

CREATE TABLE integrity (
    id   INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    sum  BLOB NOT NULL,  -- XOR of every row's mac
    tag  BLOB NOT NULL   -- crvs_row_mac('integrity', id, sum)
) STRICT;

INSERT INTO integrity (id, sum, tag) VALUES (1, zeroblob(32), crvs_row_mac('integrity', 1, zeroblob(32)));

CREATE TRIGGER integrity_check BEFORE UPDATE OF id, sum ON integrity BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: integrity')
    WHERE NOT crvs_repairing() AND OLD.tag IS NOT crvs_row_mac('integrity', OLD.id, OLD.sum);
END;
CREATE TRIGGER integrity_tag AFTER UPDATE OF id, sum ON integrity BEGIN
    UPDATE integrity SET tag = crvs_row_mac('integrity', NEW.id, NEW.sum) WHERE id = NEW.id;
END;
CREATE TRIGGER integrity_keep BEFORE DELETE ON integrity BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: integrity');
END;

-- meta ---------------------------------------------------------------------
CREATE TRIGGER meta_mac_insert AFTER INSERT ON meta BEGIN
    UPDATE meta SET mac = crvs_row_mac('meta', NEW.key, NEW.value) WHERE key = NEW.key;
END;
CREATE TRIGGER meta_mac_check BEFORE UPDATE OF key, value ON meta BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: meta')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('meta', OLD.key, OLD.value);
END;
CREATE TRIGGER meta_mac_update AFTER UPDATE OF key, value ON meta BEGIN
    UPDATE meta SET mac = crvs_row_mac('meta', NEW.key, NEW.value) WHERE key = NEW.key;
END;
CREATE TRIGGER meta_mac_sum AFTER UPDATE OF mac ON meta BEGIN
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac, NEW.mac) WHERE id = 1;
END;
CREATE TRIGGER meta_mac_delete BEFORE DELETE ON meta BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: meta')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('meta', OLD.key, OLD.value);
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac) WHERE id = 1;
END;

-- records ------------------------------------------------------------------
CREATE TRIGGER records_mac_insert AFTER INSERT ON records BEGIN
    UPDATE records SET mac = crvs_row_mac('records', NEW.id, NEW.kind, NEW.status, NEW.created_at,
        NEW.updated_at, NEW.doc_sealed, NEW.kidc_sealed, NEW.outboxed_heads, NEW.dirty,
        NEW.last_outbox_seq, NEW.server_updated_at, NEW.set_aside_at)
    WHERE id = NEW.id;
END;
CREATE TRIGGER records_mac_check BEFORE UPDATE OF id, kind, status, created_at, updated_at,
        doc_sealed, kidc_sealed, outboxed_heads, dirty, last_outbox_seq, server_updated_at,
        set_aside_at ON records BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: records')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('records', OLD.id, OLD.kind, OLD.status, OLD.created_at,
        OLD.updated_at, OLD.doc_sealed, OLD.kidc_sealed, OLD.outboxed_heads, OLD.dirty,
        OLD.last_outbox_seq, OLD.server_updated_at, OLD.set_aside_at);
END;
CREATE TRIGGER records_mac_update AFTER UPDATE OF id, kind, status, created_at, updated_at,
        doc_sealed, kidc_sealed, outboxed_heads, dirty, last_outbox_seq, server_updated_at,
        set_aside_at ON records BEGIN
    UPDATE records SET mac = crvs_row_mac('records', NEW.id, NEW.kind, NEW.status, NEW.created_at,
        NEW.updated_at, NEW.doc_sealed, NEW.kidc_sealed, NEW.outboxed_heads, NEW.dirty,
        NEW.last_outbox_seq, NEW.server_updated_at, NEW.set_aside_at)
    WHERE id = NEW.id;
END;
CREATE TRIGGER records_mac_sum AFTER UPDATE OF mac ON records BEGIN
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac, NEW.mac) WHERE id = 1;
END;
CREATE TRIGGER records_mac_delete BEFORE DELETE ON records BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: records')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('records', OLD.id, OLD.kind, OLD.status, OLD.created_at,
        OLD.updated_at, OLD.doc_sealed, OLD.kidc_sealed, OLD.outboxed_heads, OLD.dirty,
        OLD.last_outbox_seq, OLD.server_updated_at, OLD.set_aside_at);
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac) WHERE id = 1;
END;

-- outbox -------------------------------------------------------------------
CREATE TRIGGER outbox_mac_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox SET mac = crvs_row_mac('outbox', NEW.seq, NEW.hash, NEW.body_sealed,
        NEW.record_count, NEW.byte_len, NEW.created_at, NEW.acked_at)
    WHERE seq = NEW.seq;
END;
CREATE TRIGGER outbox_mac_check BEFORE UPDATE OF seq, hash, body_sealed, record_count, byte_len,
        created_at, acked_at ON outbox BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: outbox')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('outbox', OLD.seq, OLD.hash, OLD.body_sealed,
        OLD.record_count, OLD.byte_len, OLD.created_at, OLD.acked_at);
END;
CREATE TRIGGER outbox_mac_update AFTER UPDATE OF seq, hash, body_sealed, record_count, byte_len,
        created_at, acked_at ON outbox BEGIN
    UPDATE outbox SET mac = crvs_row_mac('outbox', NEW.seq, NEW.hash, NEW.body_sealed,
        NEW.record_count, NEW.byte_len, NEW.created_at, NEW.acked_at)
    WHERE seq = NEW.seq;
END;
CREATE TRIGGER outbox_mac_sum AFTER UPDATE OF mac ON outbox BEGIN
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac, NEW.mac) WHERE id = 1;
END;
CREATE TRIGGER outbox_mac_delete BEFORE DELETE ON outbox BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: outbox')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('outbox', OLD.seq, OLD.hash, OLD.body_sealed,
        OLD.record_count, OLD.byte_len, OLD.created_at, OLD.acked_at);
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac) WHERE id = 1;
END;

-- kidc_evidence ------------------------------------------------------------
CREATE TRIGGER kidc_evidence_mac_insert AFTER INSERT ON kidc_evidence BEGIN
    UPDATE kidc_evidence SET mac = crvs_row_mac('kidc_evidence', NEW.record_id, NEW.proof_sealed)
    WHERE record_id = NEW.record_id;
END;
CREATE TRIGGER kidc_evidence_mac_check BEFORE UPDATE OF record_id, proof_sealed ON kidc_evidence BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: kidc_evidence')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('kidc_evidence', OLD.record_id, OLD.proof_sealed);
END;
CREATE TRIGGER kidc_evidence_mac_update AFTER UPDATE OF record_id, proof_sealed ON kidc_evidence BEGIN
    UPDATE kidc_evidence SET mac = crvs_row_mac('kidc_evidence', NEW.record_id, NEW.proof_sealed)
    WHERE record_id = NEW.record_id;
END;
CREATE TRIGGER kidc_evidence_mac_sum AFTER UPDATE OF mac ON kidc_evidence BEGIN
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac, NEW.mac) WHERE id = 1;
END;
CREATE TRIGGER kidc_evidence_mac_delete BEFORE DELETE ON kidc_evidence BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: kidc_evidence')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('kidc_evidence', OLD.record_id, OLD.proof_sealed);
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac) WHERE id = 1;
END;

-- chain_adoptions ----------------------------------------------------------
CREATE TRIGGER chain_adoptions_mac_insert AFTER INSERT ON chain_adoptions BEGIN
    UPDATE chain_adoptions SET mac = crvs_row_mac('chain_adoptions', NEW.seq, NEW.hash, NEW.adopted_at)
    WHERE seq = NEW.seq;
END;
CREATE TRIGGER chain_adoptions_mac_check BEFORE UPDATE OF seq, hash, adopted_at ON chain_adoptions BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: chain_adoptions')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('chain_adoptions', OLD.seq, OLD.hash, OLD.adopted_at);
END;
CREATE TRIGGER chain_adoptions_mac_update AFTER UPDATE OF seq, hash, adopted_at ON chain_adoptions BEGIN
    UPDATE chain_adoptions SET mac = crvs_row_mac('chain_adoptions', NEW.seq, NEW.hash, NEW.adopted_at)
    WHERE seq = NEW.seq;
END;
CREATE TRIGGER chain_adoptions_mac_sum AFTER UPDATE OF mac ON chain_adoptions BEGIN
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac, NEW.mac) WHERE id = 1;
END;
CREATE TRIGGER chain_adoptions_mac_delete BEFORE DELETE ON chain_adoptions BEGIN
    SELECT RAISE(ABORT, 'crvs_tampered: chain_adoptions')
    WHERE NOT crvs_repairing() AND OLD.mac IS NOT crvs_row_mac('chain_adoptions', OLD.seq, OLD.hash, OLD.adopted_at);
    UPDATE integrity SET sum = crvs_xor(sum, OLD.mac) WHERE id = 1;
END;

-- The rows written before this version: authenticate them as they stand.
-- (`crvs check` then compares each record's plaintext columns with its
-- sealed document, so a change made before the upgrade still shows.)
UPDATE meta SET mac = crvs_row_mac('meta', key, value);
UPDATE records SET mac = crvs_row_mac('records', id, kind, status, created_at, updated_at,
    doc_sealed, kidc_sealed, outboxed_heads, dirty, last_outbox_seq, server_updated_at, set_aside_at);
UPDATE outbox SET mac = crvs_row_mac('outbox', seq, hash, body_sealed, record_count, byte_len,
    created_at, acked_at);
UPDATE kidc_evidence SET mac = crvs_row_mac('kidc_evidence', record_id, proof_sealed);
UPDATE chain_adoptions SET mac = crvs_row_mac('chain_adoptions', seq, hash, adopted_at);
