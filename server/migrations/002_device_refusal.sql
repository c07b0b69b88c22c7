-- The last change set refused to a device for a reason a resend cannot
-- fix (anything but a sequence gap): until an operator acts, that device's
-- outbox is stuck behind it. Cleared when the device's chain advances.
ALTER TABLE devices ADD COLUMN refused_seq BIGINT;
ALTER TABLE devices ADD COLUMN refused_code TEXT;
ALTER TABLE devices ADD COLUMN refused_at BIGINT;
