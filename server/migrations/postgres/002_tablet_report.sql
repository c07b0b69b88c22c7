-- SQLite's 010: what each tablet reported with its last sync request
-- (sync version 6). NULL for a tablet that never reported.
ALTER TABLE devices ADD COLUMN outbox_change_sets BIGINT;
ALTER TABLE devices ADD COLUMN outbox_records BIGINT;
ALTER TABLE devices ADD COLUMN app_version TEXT COLLATE "C";
-- The feed position the server last answered the device with (the
-- cursor of its last answer): with the feed's times, the feed's lag.
ALTER TABLE devices ADD COLUMN feed_sent_cursor BIGINT;
