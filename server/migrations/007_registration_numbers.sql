-- Registration numbers: office / year / sequence, the sequence counted per
-- office and year under the single writer, in the transaction that
-- registers the event (so a rolled-back registration gives its number back).
CREATE TABLE registration_counters (office TEXT NOT NULL, year INTEGER NOT NULL, last INTEGER NOT NULL, PRIMARY KEY (office, year)) STRICT;
