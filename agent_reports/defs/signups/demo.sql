-- Demo sign-ups for 2024-01-01 to 2027-12-31, the same rows on every machine: each row's
-- time and attributes are fixed functions of its id (no random()), about 41 a day.
CREATE TABLE signups (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,   -- UTC, 'YYYY-MM-DD HH:MM:SS'
    channel TEXT NOT NULL,
    country TEXT NOT NULL,
    plan TEXT NOT NULL
);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
INSERT INTO signups (id, created_at, channel, country, plan)
SELECT
    i,
    datetime('2024-01-01', '+' || ((i * 2654435761) % (1461 * 86400)) || ' seconds'),
    CASE (i * 31) % 10
        WHEN 0 THEN 'paid_search' WHEN 1 THEN 'paid_search' WHEN 2 THEN 'referral'
        WHEN 3 THEN 'social' WHEN 4 THEN 'social' ELSE 'organic' END,
    CASE (i * 17) % 8
        WHEN 0 THEN 'DE' WHEN 1 THEN 'FR' WHEN 2 THEN 'GB' WHEN 3 THEN 'GB'
        ELSE 'US' END,
    CASE WHEN (i * 13) % 100 < 18 THEN 'pro' ELSE 'free' END
FROM n;
CREATE INDEX signups_created_at ON signups (created_at);
