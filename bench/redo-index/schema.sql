-- An index-heavy schema for bench/redo.sh (WORKLOAD=index): one table of documents with
-- the index kinds a production schema has besides btree, so that replaying its WAL is
-- mostly index redo:
--   GIN:   jsonb (jsonb_path_ops), tsvector, int[] (array_ops, fastupdate off: inserts go
--          straight into the entry and posting trees), text with pg_trgm (gin_trgm_ops);
--          the others keep fastupdate on (the pending list, merged when it passes
--          gin_pending_list_limit and by VACUUM).
--   BRIN:  minmax (created), minmax-multi (id), bloom (a), inclusion (ip: inet, span: range).
--   GiST: span (range_ops); SP-GiST: ip (inet_ops); hash: a.
--   contrib bloom: (a, b, c), generic WAL.
-- psql variables: rows (initial rows), gin (1: create the GIN indexes, 0: leave them out).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS bloom;

-- The body of document g: two common words (posting trees), an eighth-word, a 12-hex-digit
-- fragment (trigrams spread over 4096 keys) and a unique word (many GIN entries).
CREATE FUNCTION docs_body(g bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT 'w' || (g % 50) || ' v' || (g * 7 % 997) || ' '
      || (ARRAY['alpha','beta','gamma','delta','epsilon','zeta','eta','theta'])[1 + g % 8] || ' '
      || substr(md5(g::text), 1, 12) || ' u' || g
$$;

CREATE TABLE docs (
    id bigserial PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT clock_timestamp(),
    doc jsonb NOT NULL,
    body text NOT NULL,
    tsv tsvector NOT NULL,
    tags int[] NOT NULL,
    ip inet NOT NULL,
    span int4range NOT NULL,
    a int NOT NULL,
    b int NOT NULL,
    c int NOT NULL
);

-- The indexed fields of the document with seed g.
CREATE FUNCTION docs_fields(g bigint)
RETURNS TABLE (doc jsonb, body text, tsv tsvector, tags int[], ip inet, span int4range,
               a int, b int, c int)
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('user', g % 1000, 'kind', 'k' || (g % 17), 'score', g % 100,
                            'flags', jsonb_build_array(g % 3, g % 5)),
         docs_body(g), to_tsvector('simple'::regconfig, docs_body(g)),
         ARRAY[(g % 100)::int, (100 + g % 1000)::int, (2000 + g % 50000)::int],
         inet '10.0.0.0' + (g % 65536), int4range((g % 100000)::int, (g % 100000)::int + 50),
         (g % 100000)::int, (g % 97)::int, (g % 13)::int
$$;

-- n new documents from seeds seed .. seed + n - 1.
CREATE FUNCTION docs_insert(seed bigint, n int) RETURNS void LANGUAGE sql AS $$
  INSERT INTO docs (doc, body, tsv, tags, ip, span, a, b, c)
  SELECT f.* FROM generate_series(seed, seed + n - 1) g, docs_fields(g) f
$$;

-- The documents `ids`, replaced by new ones (seeds seed, seed + 1, ...) under the same ids: a
-- delete and an insert each, so the table keeps its size (txn-steady.sql). A concurrent
-- transaction that replaced the same id first wins (ON CONFLICT DO NOTHING).
CREATE FUNCTION docs_replace(ids bigint[], seed bigint) RETURNS void LANGUAGE sql AS $$
  DELETE FROM docs WHERE id = ANY (ids);
  INSERT INTO docs (id, doc, body, tsv, tags, ip, span, a, b, c)
  SELECT u.id, f.* FROM unnest(ids) WITH ORDINALITY AS u(id, k), docs_fields(seed + k - 1) f
  ON CONFLICT (id) DO NOTHING;
$$;

SELECT docs_insert(1, :rows);

\if :gin
CREATE INDEX docs_doc ON docs USING gin (doc jsonb_path_ops);
CREATE INDEX docs_tsv ON docs USING gin (tsv);
CREATE INDEX docs_tags ON docs USING gin (tags) WITH (fastupdate = off);
CREATE INDEX docs_trgm ON docs USING gin (body gin_trgm_ops);
\endif
CREATE INDEX docs_created ON docs USING brin (created) WITH (pages_per_range = 8);
CREATE INDEX docs_id_multi ON docs USING brin (id int8_minmax_multi_ops) WITH (pages_per_range = 8);
CREATE INDEX docs_a_bloom ON docs USING brin (a int4_bloom_ops) WITH (pages_per_range = 8);
CREATE INDEX docs_ip ON docs USING brin (ip inet_inclusion_ops) WITH (pages_per_range = 8);
CREATE INDEX docs_span ON docs USING brin (span range_inclusion_ops) WITH (pages_per_range = 8);
CREATE INDEX docs_bloom ON docs USING bloom (a, b, c) WITH (length = 80);
CREATE INDEX docs_span_gist ON docs USING gist (span);
CREATE INDEX docs_ip_spgist ON docs USING spgist (ip);
CREATE INDEX docs_a_hash ON docs USING hash (a);
VACUUM ANALYZE docs;
