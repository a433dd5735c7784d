-- The fpw_pushdown.* prefix is reserved (MarkGUCPrefixReserved in _PG_init). The library is
-- preloaded in this suite, so every session refuses a mistyped fpw_pushdown setting instead
-- of creating a placeholder that silently does nothing.
SET fpw_pushdown.max_helper_lagg = '1MB';
SELECT set_config('fpw_pushdown.slot_nmae', 'x', false);
SELECT current_setting('fpw_pushdown.max_helper_lagg', true) IS NULL AS no_placeholder;
-- The real settings exist (and are SIGHUP: SET is refused for that other reason).
SET fpw_pushdown.max_helper_lag = '1MB';
SHOW fpw_pushdown.max_helper_lag;
-- Other prefixes still take placeholders.
SET fpw_regress_other.x = 'y';
SHOW fpw_regress_other.x;
RESET fpw_regress_other.x;
