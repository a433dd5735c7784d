-- TLS from the extension to a redo helper over TCP: the helper's certificate must chain to
-- fpw_pushdown.helper_ca_file and name the host of helper_address (as libpq's verify-full),
-- and a helper off loopback is not contacted without TLS. The helper here never reaches a
-- server (port 1): its API answers /status while it retries.
\getenv tls_port FPW_HELPER_TLS_PORT
\getenv test_tmp FPW_TEST_TMP
SELECT '127.0.0.1:' || :'tls_port' AS tls_addr,
       :'test_tmp' || '/tls/helper/api.token' AS tls_token,
       :'test_tmp' || '/tls/ca.pem' AS tls_ca,
       :'test_tmp' || '/tls/other.pem' AS tls_other_ca \gset
\! mkdir -m 700 "$FPW_TEST_TMP/tls" && cd "$FPW_TEST_TMP/tls" && { openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=fpw test CA" -keyout ca.key -out ca.pem && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" -keyout other.key -out other.pem && chown -R postgres:postgres . ; } >/dev/null 2>&1
\! setpriv --reuid=postgres --regid=postgres --init-groups -- "$FPW_HELPER_BIN" run --connect "host=127.0.0.1 port=1" --data-dir "$FPW_TEST_TMP/tls/helper" --listen "127.0.0.1:$FPW_HELPER_TLS_PORT" --tls-cert "$FPW_TEST_TMP/tls/server.pem" --tls-key "$FPW_TEST_TMP/tls/server.key" >"$FPW_TEST_TMP/tls-helper.log" 2>&1 & echo $! >"$FPW_TEST_TMP/tls-helper.pid"

ALTER SYSTEM SET fpw_pushdown.helper_address = :'tls_addr';
ALTER SYSTEM SET fpw_pushdown.helper_token_file = :'tls_token';
ALTER SYSTEM SET fpw_pushdown.helper_ca_file = :'tls_ca';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT regress.wait_for($$SELECT regress.try('SELECT fpw_pushdown.helper_status()::text') LIKE 'ok:%'$$, '30s') AS served_over_tls;
SELECT fpw_pushdown.helper_status()->>'slot' AS slot_over_tls;

-- A certificate from another CA is not trusted.
ALTER SYSTEM SET fpw_pushdown.helper_ca_file = :'tls_other_ca';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT regress.try('SELECT fpw_pushdown.helper_status()::text') ~* 'certificate' AS other_ca_refused;

-- Plain HTTP to the TLS listener gets no answer.
ALTER SYSTEM RESET fpw_pushdown.helper_ca_file;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT regress.try('SELECT fpw_pushdown.helper_status()::text') ~ '^error' AS plaintext_fails;

-- A helper that is not on loopback is not contacted without helper_ca_file.
ALTER SYSTEM SET fpw_pushdown.helper_address = '192.0.2.1:7432';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SELECT regress.try('SELECT fpw_pushdown.helper_status()::text');

\! kill -9 "$(cat "$FPW_TEST_TMP/tls-helper.pid")"
ALTER SYSTEM RESET fpw_pushdown.helper_address;
ALTER SYSTEM RESET fpw_pushdown.helper_token_file;
SELECT pg_reload_conf();
