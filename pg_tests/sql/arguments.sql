-- Bad arguments are clear errors, and nothing is switched.
SELECT regress.try($$SELECT fpw_pushdown.disable_full_page_writes(timeout => '0s')$$);
SELECT regress.try($$SELECT fpw_pushdown.disable_full_page_writes(timeout => '-5s')$$);
SELECT regress.try($$SELECT fpw_pushdown.disable_full_page_writes(timeout => NULL)$$);
SELECT regress.try($$SELECT fpw_pushdown.disable_full_page_writes(force => NULL)$$);
SELECT regress.try($$SELECT fpw_pushdown.enable_full_page_writes(timeout => '0s')$$);
SELECT regress.try($$SELECT fpw_pushdown.enable_full_page_writes(NULL)$$);
-- Already on: NULL with a NOTICE.
SELECT fpw_pushdown.enable_full_page_writes() IS NULL AS no_switch;
SHOW full_page_writes;
