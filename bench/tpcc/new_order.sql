-- TPC-C-like new-order: one district counter, an order, 5-15 order lines, 5-15 stock rows.
\set w_id random(1, :warehouses)
\set d_id random(1, 10)
\set c_id random(1, 1000)
\set ol_cnt random(5, 15)
BEGIN;
UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = :w_id AND d_id = :d_id RETURNING d_next_o_id - 1 AS o_id \gset
INSERT INTO orders VALUES (:o_id, :d_id, :w_id, :c_id, now(), :ol_cnt);
INSERT INTO new_order VALUES (:o_id, :d_id, :w_id);
INSERT INTO order_line
  SELECT :o_id, :d_id, :w_id, n, 1 + (random() * 9999)::int, :w_id, 5, (random() * 99)::numeric(6,2),
         encode(sha256((random()::text || n)::bytea), 'base64')
    FROM generate_series(1, :ol_cnt) n;
UPDATE stock SET s_quantity = CASE WHEN s_quantity > 14 THEN s_quantity - 5 ELSE s_quantity + 86 END,
                 s_ytd = s_ytd + 5, s_order_cnt = s_order_cnt + 1
 WHERE s_w_id = :w_id AND s_i_id IN (SELECT 1 + (random() * 9999)::int FROM generate_series(1, :ol_cnt));
END;
