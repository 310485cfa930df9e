-- PostgreSQL's 0011 makes the relay claims UNLOGGED; SQLite has no such tables and nothing to
-- change. The version exists so both engines' schemas carry the same versions (migrate-store
-- compares them).
SELECT 1;
