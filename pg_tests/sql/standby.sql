-- On a standby the switch is refused: recovery is in progress.
SELECT pg_is_in_recovery();
SELECT fpw_pushdown.disable_full_page_writes(force => true);
SELECT fpw_pushdown.enable_full_page_writes();
SELECT full_page_writes, slot_active, slot_lag_bytes FROM fpw_pushdown.status();
