-- One transaction of bench/redo.sh's index workload: 4 new documents, two updates of
-- indexed columns (no HOT: every index gets the new row version), one delete.
\set seed random(1, 1000000000)
SELECT max(id) AS maxid FROM docs \gset
\set u1 random(1, :maxid)
\set u2 random(1, :maxid)
\set d random(1, :maxid)
BEGIN;
SELECT docs_insert(:seed, 4);
UPDATE docs SET doc = doc || jsonb_build_object('score', :seed % 100, 'seen', :u2 % 7),
                tags = tags[1:2] || (:seed % 50000)::int, a = :seed % 100000, ip = ip + 1
 WHERE id = :u1;
UPDATE docs SET body = docs_body(:seed), tsv = to_tsvector('simple', docs_body(:seed)),
                span = int4range(:seed % 100000, :seed % 100000 + 10), b = :seed % 97
 WHERE id = :u2;
DELETE FROM docs WHERE id = :d;
END;
