-- Blob contents in the database (gateway/store/blob_backends/postgres.py). A blob is its
-- `blobs` row and its chunk rows; readers see it only once committed_at is set. Row `seq`
-- holds the sealed bytes [seq * row_size, (seq + 1) * row_size), the last row fewer. Instants
-- are the fixed-width UTC text of 0001. The schema of migrations/sqlite/0009_blob_chunks.sql,
-- with the types of this engine's 0001 (INTEGER is BIGINT, BLOB is BYTEA, text COLLATE "C").

CREATE TABLE blobs (
    blob_id      TEXT COLLATE "C" PRIMARY KEY,
    row_size     BIGINT NOT NULL CHECK (row_size > 0),
    size         BIGINT CHECK (size >= 0),  -- sealed bytes, set when committed
    started_at   TEXT COLLATE "C" NOT NULL,
    committed_at TEXT COLLATE "C"           -- NULL while written (or abandoned)
);

CREATE TABLE blob_chunks (
    blob_id TEXT COLLATE "C" NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL CHECK (seq >= 0),
    data    BYTEA NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

-- Sealed bytes do not compress: stored out of line uncompressed, never tried (CPU saved), and a
-- substring() reads only the TOAST pieces it covers. A storage setting, not a schema change.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
