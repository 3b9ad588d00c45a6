#!/bin/sh
# Starts one Patroni node of the demo cluster. The member name (PATRONI_NAME)
# is also the node's host name on the compose network, so the addresses other
# members and Switchyard use follow from it.
set -eu

: "${PATRONI_NAME:?set PATRONI_NAME to the node name (pg1, pg2, pg3)}"
: "${PATRONI_SUPERUSER_PASSWORD:?set PATRONI_SUPERUSER_PASSWORD}"
: "${PATRONI_REPLICATION_PASSWORD:?set PATRONI_REPLICATION_PASSWORD}"
: "${PATRONI_REWIND_PASSWORD:?set PATRONI_REWIND_PASSWORD}"
# Needed only by the node that bootstraps the cluster, but checked on every
# node so a missing variable fails at once rather than on a later re-bootstrap.
: "${SWITCHYARD_APP_PASSWORD:?set SWITCHYARD_APP_PASSWORD (the app role password)}"

export PATRONI_RESTAPI_CONNECT_ADDRESS="${PATRONI_RESTAPI_CONNECT_ADDRESS:-${PATRONI_NAME}:8008}"
export PATRONI_POSTGRESQL_CONNECT_ADDRESS="${PATRONI_POSTGRESQL_CONNECT_ADDRESS:-${PATRONI_NAME}:5432}"

# Patroni as PID 1 reaps PostgreSQL's children and passes SIGTERM on, so it is
# exec'd directly.
exec patroni "${PATRONI_CONFIG:-/etc/patroni/patroni.yml}"
