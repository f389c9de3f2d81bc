#!/bin/sh
# Runs once, when the PostgreSQL container initialises its data directory: the role the query
# API connects as, with a password (the migrations create it without one when it is missing,
# which only suits trust authentication). It owns nothing and is subject to row-level security.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$ZAPFLOW_APP_DB_PASSWORD" <<'SQL'
CREATE ROLE zapflow_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'password';
SQL
