-- Version 9: what each tablet reported with its last sync request (sync
-- version 6): change sets and records waiting in its outbox, and the app
-- version it runs. NULL for a tablet that never reported (older than
-- version 6). Counts and a version string only: no personal data.
ALTER TABLE devices ADD COLUMN outbox_change_sets INTEGER;
ALTER TABLE devices ADD COLUMN outbox_records INTEGER;
ALTER TABLE devices ADD COLUMN app_version TEXT;
-- The feed position the server last answered the device with (the
-- cursor of its last answer): with the feed's times, the feed's lag.
ALTER TABLE devices ADD COLUMN feed_sent_cursor INTEGER;
