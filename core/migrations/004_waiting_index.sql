-- Version 4: what waits to be sent (`store::count_records_waiting`, read
-- for every sync request's report) is counted from indexes, not from a
-- scan of every record's sealed document: `dirty` from `records_dirty`,
-- the rest from this one, which covers the query.
CREATE INDEX records_waiting ON records (last_outbox_seq, dirty, set_aside_at);
