"""cleanup_old_data for partitioned signals, keeping the anomalies still waiting for an
analyst (docs/design.md, "Retention").

Signals go a whole day's partition at a time: those whose day ended before the cutoff. The
count it returns for them is PostgreSQL's estimate of each partition's rows where it has
one (counting a day of billions of rows is not worth it), else a count. Anomalies that are
new or acknowledged and not held back by a mute stay unless `p_include_open`; how many
stayed is the fourth column. `manage.py cleanup` does the same in short transactions; this
function, for SQL users, does it all in theirs.
"""

from django.db import migrations

CLEANUP = r"""
DROP FUNCTION IF EXISTS cleanup_old_data(integer);
CREATE FUNCTION cleanup_old_data(p_days integer DEFAULT 30, p_include_open boolean DEFAULT false)
RETURNS TABLE (
    signals_deleted bigint, anomalies_deleted bigint, dead_letters_deleted bigint, anomalies_kept bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(days => p_days);
    cutoff_ms bigint := (extract(epoch FROM now() - make_interval(days => p_days)) * 1000)::bigint;
    day record;
    day_rows bigint;
BEGIN
    IF p_days IS NULL OR p_days < 1 THEN
        RAISE EXCEPTION 'cleanup_old_data: days must be at least 1, got %', p_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    signals_deleted := 0;
    FOR day IN
        SELECT c.relname AS name, c.reltuples::bigint AS estimate,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(-?\d+)''?\)'))[1]::bigint AS end_ms
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'signals'::regclass
    LOOP
        CONTINUE WHEN day.end_ms IS NULL OR day.end_ms > cutoff_ms;
        day_rows := day.estimate;
        IF day_rows < 0 THEN
            EXECUTE format('SELECT count(*) FROM %I', day.name) INTO day_rows;
        END IF;
        EXECUTE format('DROP TABLE %I', day.name);
        signals_deleted := signals_deleted + day_rows;
    END LOOP;
    DELETE FROM anomalies
    WHERE detection_timestamp < cutoff
      AND (p_include_open OR suppressed OR status NOT IN ('new', 'acknowledged'));
    GET DIAGNOSTICS anomalies_deleted = ROW_COUNT;
    SELECT count(*) INTO anomalies_kept FROM anomalies WHERE detection_timestamp < cutoff;
    DELETE FROM dead_letters WHERE received_at < cutoff;
    GET DIAGNOSTICS dead_letters_deleted = ROW_COUNT;
    RETURN NEXT;
END
$$;
"""

# 0002's function, for migrating back.
CLEANUP_BEFORE = """
DROP FUNCTION IF EXISTS cleanup_old_data(integer, boolean);
CREATE FUNCTION cleanup_old_data(p_days integer DEFAULT 30)
RETURNS TABLE (signals_deleted bigint, anomalies_deleted bigint, dead_letters_deleted bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := now() - make_interval(days => p_days);
BEGIN
    IF p_days IS NULL OR p_days < 1 THEN
        RAISE EXCEPTION 'cleanup_old_data: days must be at least 1, got %', p_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM signals WHERE timestamp < (extract(epoch FROM cutoff) * 1000)::bigint;
    GET DIAGNOSTICS signals_deleted = ROW_COUNT;
    DELETE FROM anomalies WHERE detection_timestamp < cutoff;
    GET DIAGNOSTICS anomalies_deleted = ROW_COUNT;
    DELETE FROM dead_letters WHERE received_at < cutoff;
    GET DIAGNOSTICS dead_letters_deleted = ROW_COUNT;
    RETURN NEXT;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("anomalies_app", "0010_triage_queue_index"),
        ("signals_app", "0002_partitioned_signals"),
    ]

    operations = [migrations.RunSQL(CLEANUP, CLEANUP_BEFORE)]
