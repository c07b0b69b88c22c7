-- Version 4: recovery from a restored backup.
--
-- Every automerge actor id the server has used. The server takes a new
-- one at each start, so that a database restored from a backup never
-- makes a change whose actor and sequence number a tablet already holds
-- (automerge refuses a second change with the same pair). Changes that
-- carry any of these actors are the server's: a tablet may not send one.
CREATE TABLE server_actors (
    actor_id   TEXT PRIMARY KEY,
    first_used BIGINT NOT NULL
);
INSERT INTO server_actors (actor_id, first_used)
    SELECT value, 0 FROM server_meta WHERE key = 'server_actor_id';
