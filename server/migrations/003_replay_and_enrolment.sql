-- Version 3: no replays, and an enrolment the network cannot fake.
--
-- A device's sync requests carry a counter that must grow: the highest one
-- accepted is kept here, and a request at or below it is refused and
-- changes nothing.
ALTER TABLE devices ADD COLUMN last_request_counter BIGINT NOT NULL DEFAULT 0;

-- Tokens of version 2 are looked up by a hash of their secret
-- (token_hash) and proven by a MAC keyed with another hash of it
-- (mac_key), so the secret itself never crosses the network. public_key
-- is the key a token enrolled: the same tablet may enrol again with it
-- (its answer was lost, or a machine in the middle spoiled it) and gets
-- the same device. Tokens made before this version have no mac_key and
-- cannot be used.
ALTER TABLE enrollment_tokens ADD COLUMN mac_key TEXT;
ALTER TABLE enrollment_tokens ADD COLUMN public_key TEXT;
