"""SQL functions and views that users call directly (docs/design.md, "Database extras")."""

from __future__ import annotations

from django.db import migrations

RISK_SCORE = """
CREATE OR REPLACE FUNCTION get_user_risk_score(p_user_id bigint, p_days integer DEFAULT 30)
RETURNS TABLE (
    user_id bigint,
    total_signals bigint,
    total_anomalies bigint,
    high_severity bigint,
    medium_severity bigint,
    low_severity bigint,
    risk_score integer,
    risk_level text
)
LANGUAGE sql STABLE AS $$
    WITH a AS (
        SELECT
            count(*) AS total,
            count(*) FILTER (WHERE severity = 'high') AS high,
            count(*) FILTER (WHERE severity = 'medium') AS medium,
            count(*) FILTER (WHERE severity = 'low') AS low
        FROM anomalies
        WHERE anomalies.user_id = p_user_id
          AND detection_timestamp >= now() - make_interval(days => p_days)
          AND status <> 'false_positive'
    ), s AS (
        SELECT count(*) AS total
        FROM signals
        WHERE signals.user_id = p_user_id
          AND signals.timestamp >= (extract(epoch FROM now() - make_interval(days => p_days)) * 1000)::bigint
    ), score AS (
        SELECT least(100, 10 * a.high + 5 * a.medium + 2 * a.low)::integer AS value FROM a
    )
    SELECT p_user_id, s.total, a.total, a.high, a.medium, a.low, score.value,
           CASE WHEN score.value >= 50 THEN 'high' WHEN score.value >= 20 THEN 'medium' ELSE 'low' END
    FROM a, s, score
$$;
"""

CLEANUP = """
CREATE OR REPLACE FUNCTION cleanup_old_data(p_days integer DEFAULT 30)
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

SIGNAL_STATS = """
CREATE OR REPLACE VIEW recent_signal_stats AS
SELECT
    type AS signal_type,
    count(*) AS signal_count,
    count(DISTINCT user_id) AS unique_users,
    to_timestamp(min(timestamp) / 1000.0) AS first_seen,
    to_timestamp(max(timestamp) / 1000.0) AS last_seen
FROM signals
WHERE timestamp >= (extract(epoch FROM now() - interval '24 hours') * 1000)::bigint
GROUP BY type;
"""

ANOMALY_STATS = """
CREATE OR REPLACE VIEW recent_anomaly_stats AS
SELECT
    anomaly_type,
    severity,
    count(*) AS anomaly_count,
    count(DISTINCT user_id) AS unique_users,
    max(detection_timestamp) AS latest_detection
FROM anomalies
WHERE detection_timestamp >= now() - interval '24 hours'
GROUP BY anomaly_type, severity;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("anomalies_app", "0001_initial"),
        ("signals_app", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(RISK_SCORE, "DROP FUNCTION IF EXISTS get_user_risk_score(bigint, integer);"),
        migrations.RunSQL(CLEANUP, "DROP FUNCTION IF EXISTS cleanup_old_data(integer);"),
        migrations.RunSQL(SIGNAL_STATS, "DROP VIEW IF EXISTS recent_signal_stats;"),
        migrations.RunSQL(ANOMALY_STATS, "DROP VIEW IF EXISTS recent_anomaly_stats;"),
    ]
