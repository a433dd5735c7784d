-- A TPC-C-like schema for pgbench (bench/fpw.sh). Strings are random base64 (6 bits of
-- entropy per character): unlike pgbench's blank filler they do not flatter compression.
-- Sizes are reduced from TPC-C (1000 customers per district, 10000 items) to load quickly.
SET client_min_messages = warning;
DROP TABLE IF EXISTS warehouse, district, customer, history, orders, new_order, order_line, item, stock;
CREATE FUNCTION pg_temp.rnd(n int) RETURNS text LANGUAGE sql AS
  $$ SELECT string_agg(encode(sha256((random()::text || g)::bytea), 'base64'), '') FROM generate_series(1, (n + 43) / 44) g $$;

CREATE TABLE warehouse (w_id int PRIMARY KEY, w_name text, w_street text, w_ytd numeric(12,2));
CREATE TABLE district (d_w_id int, d_id int, d_name text, d_street text, d_ytd numeric(12,2), d_next_o_id int,
                       PRIMARY KEY (d_w_id, d_id));
CREATE TABLE customer (c_w_id int, c_d_id int, c_id int, c_first text, c_last text, c_street text,
                       c_balance numeric(12,2), c_ytd_payment numeric(12,2), c_payment_cnt int, c_data text,
                       PRIMARY KEY (c_w_id, c_d_id, c_id));
CREATE TABLE history (h_c_id int, h_c_d_id int, h_c_w_id int, h_date timestamptz, h_amount numeric(6,2), h_data text);
CREATE TABLE orders (o_id int, o_d_id int, o_w_id int, o_c_id int, o_entry_d timestamptz, o_ol_cnt int,
                     PRIMARY KEY (o_w_id, o_d_id, o_id));
CREATE TABLE new_order (no_o_id int, no_d_id int, no_w_id int, PRIMARY KEY (no_w_id, no_d_id, no_o_id));
CREATE TABLE order_line (ol_o_id int, ol_d_id int, ol_w_id int, ol_number int, ol_i_id int, ol_supply_w_id int,
                         ol_quantity int, ol_amount numeric(6,2), ol_dist_info text,
                         PRIMARY KEY (ol_w_id, ol_d_id, ol_o_id, ol_number));
CREATE TABLE item (i_id int PRIMARY KEY, i_name text, i_price numeric(5,2), i_data text);
CREATE TABLE stock (s_w_id int, s_i_id int, s_quantity int, s_ytd int, s_order_cnt int, s_data text,
                    PRIMARY KEY (s_w_id, s_i_id));

INSERT INTO warehouse SELECT w, pg_temp.rnd(10), pg_temp.rnd(20), 300000 FROM generate_series(1, :warehouses) w;
INSERT INTO district SELECT w, d, pg_temp.rnd(10), pg_temp.rnd(20), 30000, 1
  FROM generate_series(1, :warehouses) w, generate_series(1, 10) d;
INSERT INTO customer SELECT w, d, c, pg_temp.rnd(16), pg_temp.rnd(16), pg_temp.rnd(20), -10, 10, 1, pg_temp.rnd(300)
  FROM generate_series(1, :warehouses) w, generate_series(1, 10) d, generate_series(1, 1000) c;
INSERT INTO item SELECT i, pg_temp.rnd(24), 1 + (random() * 99)::numeric(5,2), pg_temp.rnd(50) FROM generate_series(1, 10000) i;
INSERT INTO stock SELECT w, i, 10 + (random() * 90)::int, 0, 0, pg_temp.rnd(50)
  FROM generate_series(1, :warehouses) w, generate_series(1, 10000) i;
VACUUM ANALYZE;
