-- The read-only ClickHouse user for Grafana's ClickHouse datasource (and anything else that only
-- reads: `beacon dashboard`, a notebook), for a server with SQL-driven access control. Run it
-- once as a user that may create users, with the password as a query parameter, so that it is
-- in no file and no shell history:
--   read -rs BEACON_GRAFANA_CLICKHOUSE_PASSWORD
--   clickhouse-client --multiquery --param_reader_password="$BEACON_GRAFANA_CLICKHOUSE_PASSWORD" \
--     < deploy/clickhouse/users.sql
-- (query parameters in CREATE USER need a recent server; on an older one, type the password in
-- place of {reader_password:String}.) On a cluster, add ON CLUSTER '{cluster}' after each name,
-- or use replicated access storage. The same user for servers configured by files:
-- deploy/clickhouse/users.d/beacon-reader.xml (the compose setup mounts that one).
--
-- readonly = 1: SELECT only, no INSERT, ALTER, DROP or SET, except max_execution_time, which the
-- datasource sets on every query (its query timeout): changeable in read-only mode, up to 300 s.
-- Grafana's panels read the rollups (deploy/grafana/dashboards/traffic.json), never `events
-- FINAL`; the limits below stop a hand-written query from taking the server with it.

CREATE SETTINGS PROFILE IF NOT EXISTS beacon_reader SETTINGS
    readonly = 1,
    max_execution_time = 60 MAX 300 CHANGEABLE_IN_READONLY,
    max_memory_usage = 4000000000,
    max_threads = 4;

CREATE USER IF NOT EXISTS beacon_reader
    IDENTIFIED WITH sha256_password BY {reader_password:String}
    SETTINGS PROFILE beacon_reader;

GRANT SELECT ON beacon.* TO beacon_reader;
