-- A fixed-size variant of txn.sql, for bench/fpw.sh's alternating rounds: the same index
-- work per transaction (four new row versions in every index, two updates of indexed
-- columns, so no HOT), but the four new documents replace existing ones under their ids
-- instead of adding three documents a transaction. With txn.sql the table grows from 200,000
-- rows to about 1.2 million over a 16-run benchmark, and each run starts bigger than the one
-- before; here every run starts from the same number of rows (bench/fpw.sh vacuums before
-- each). pgbench -D rows=<the initial row count>.
\set seed random(1, 1000000000)
\set r1 random(1, :rows)
\set r2 random(1, :rows)
\set r3 random(1, :rows)
\set r4 random(1, :rows)
\set u1 random(1, :rows)
\set u2 random(1, :rows)
BEGIN;
SELECT docs_replace(ARRAY[:r1, :r2, :r3, :r4]::bigint[], :seed);
UPDATE docs SET doc = doc || jsonb_build_object('score', :seed % 100, 'seen', :u2 % 7),
                tags = tags[1:2] || (:seed % 50000)::int, a = :seed % 100000, ip = ip + 1
 WHERE id = :u1;
UPDATE docs SET body = docs_body(:seed), tsv = to_tsvector('simple', docs_body(:seed)),
                span = int4range(:seed % 100000, :seed % 100000 + 10), b = :seed % 97
 WHERE id = :u2;
END;
