-- Records belong to their commune office, not to the device that made them
-- (issue 9): every enrolled tablet of the office receives the office's
-- records and their history through the pull feed.
--
-- A feed row is addressed either to one device (`office` NULL: the rows
-- written before this migration, and the snapshots below) or to every
-- device of an office (`office` set): the server's own changes to all of
-- them (`kind` 'server'), a tablet's changes to all but the device that
-- made them (`kind` 'tablet', `device_id` that device).
ALTER TABLE server_changes ADD COLUMN office TEXT;
ALTER TABLE server_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'server'
    CHECK (kind IN ('server', 'tablet', 'snapshot'));
CREATE INDEX server_changes_office ON server_changes (office, cursor) WHERE office IS NOT NULL;

-- A device enrolled later starts from a snapshot of every record of its
-- office (each record's whole document, addressed to it); the office rows
-- before its enrolment are skipped: `feed_floor` is the last cursor then.
ALTER TABLE devices ADD COLUMN feed_floor BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_office ON devices (office);

-- The tablets enrolled before this migration: a snapshot of the other
-- devices' records of their office.
INSERT INTO server_changes (device_id, record_id, change, created_at, kind)
    SELECT d.device_id, r.record_id, r.doc, r.updated_at, 'snapshot'
    FROM devices d JOIN records r ON r.office = d.office AND r.origin_device <> d.device_id
    WHERE d.revoked_at IS NULL
    ORDER BY d.device_id, r.created_at, r.record_id;
