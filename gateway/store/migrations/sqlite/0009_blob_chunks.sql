-- Blob contents in the database (gateway/store/blob_backends/postgres.py, storage on PostgreSQL;
-- unused with SQLite, kept so that both engines have the same schema). A blob is its `blobs`
-- row and its chunk rows; readers see it only once committed_at is set. Row `seq` holds the
-- sealed bytes [seq * row_size, (seq + 1) * row_size), the last row fewer. Instants are the
-- fixed-width UTC text of 0001.

CREATE TABLE blobs (
    blob_id      TEXT PRIMARY KEY,
    row_size     INTEGER NOT NULL CHECK (row_size > 0),
    size         INTEGER CHECK (size >= 0), -- sealed bytes, set when committed
    started_at   TEXT NOT NULL,
    committed_at TEXT                       -- NULL while written (or abandoned)
);

CREATE TABLE blob_chunks (
    blob_id TEXT NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL CHECK (seq >= 0),
    data    BLOB NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
