#!/bin/sh
# Patroni's bootstrap.post_bootstrap hook: runs once, on the node that
# initialised the cluster, with a superuser connection string as $1. Creates
# the role and database Switchyard logs in with (users[].name: app).
set -eu

: "${SWITCHYARD_APP_PASSWORD:?set SWITCHYARD_APP_PASSWORD}"

# psql reads the password from the environment itself (\getenv, psql 15+), so
# it is neither on a command line nor in the SQL text; :'app_password' quotes
# it as a literal. password_encryption is scram-sha-256.
psql "$1" --no-psqlrc --set ON_ERROR_STOP=1 <<'SQL'
\getenv app_password SWITCHYARD_APP_PASSWORD
CREATE ROLE app LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER app;
SQL
