-- The relay claims (store/relaying.py) live seconds and guard nothing a crash could harm: after a
-- crash of the server every session that held one has failed and its client retries anyway.
-- UNLOGGED keeps their two statements per relayed message out of the WAL, so their commits wait
-- for no flush. The table is emptied by crash recovery and is not on standbys, which is what a
-- claim of a session that no longer exists should do.
ALTER TABLE relaying SET UNLOGGED;
