#!/usr/bin/env bash
# docker-compose.yml's one-shot "kafka-secrets" service (apache/kafka image, as root): makes the
# broker's secrets once, with the same code as the test broker (infra/kafka-secrets.sh), in two volumes:
#   /etc/kafka/secrets   the broker's: CA, keystore, truststore, SCRAM passwords, and the admin's Java
#                        client properties for the healthcheck; owned by the image's Kafka user, mode 600
#   /etc/kafka/client    what the allocator's containers read: ca.pem and admin.properties (librdkafka
#                        style, KAFKA_CONFIG_FILE); owned by the allocator image's user, mode 600
# Nothing here is in git or in docker-compose.yml. The SCRAM passwords are written into the metadata log
# when the broker formats its storage, so new passwords need new storage: `docker compose down -v`.
set -euo pipefail
umask 077
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR/.. source=common.sh
source "$HERE/../common.sh"
# shellcheck source-path=SCRIPTDIR/.. source=kafka-secrets.sh
source "$HERE/../kafka-secrets.sh"

SECRETS="${ALLOCATOR_KAFKA_SECRETS:-/etc/kafka/secrets}"
CLIENT="${ALLOCATOR_KAFKA_CLIENT:-/etc/kafka/client}"
# The names the broker is reached by: "kafka" in the compose network, 127.0.0.1/localhost from the host.
SANS="${ALLOCATOR_KAFKA_TLS_SAN:-dns:kafka,dns:localhost,ip:127.0.0.1}"
KAFKA_OWNER="${ALLOCATOR_KAFKA_OWNER:-$(id -u appuser 2>/dev/null || echo 1000)}"
# The allocator image's user (Dockerfile: useradd --uid 1000 allocator).
CLIENT_OWNER="${ALLOCATOR_CLIENT_OWNER:-1000}"

keytool="$(command -v keytool || true)"
[[ -n "$keytool" ]] || keytool="${JAVA_HOME:?no keytool on PATH and no JAVA_HOME}/bin/keytool"

ensure_secrets_dir "$SECRETS"
ensure_tls "$SECRETS" "$SANS" "$keytool"
ensure_scram_passwords "$SECRETS"
cat >"$SECRETS/admin-java.properties" <<PROPS
# The admin's Java client settings (kafka-topics.sh --command-config), for the healthcheck.
security.protocol=SASL_SSL
sasl.mechanism=$SCRAM_MECHANISM
sasl.jaas.config=$SCRAM_LOGIN_MODULE required username="admin" password="$(cat "$SECRETS/admin.password")";
ssl.truststore.type=PKCS12
ssl.truststore.location=$SECRETS/truststore.p12
ssl.truststore.password=$(cat "$SECRETS/tls.password")
PROPS
chown -R "$KAFKA_OWNER" "$SECRETS"
chmod 600 "$SECRETS"/*

ensure_secrets_dir "$CLIENT"
cp "$SECRETS/ca.pem" "$CLIENT/ca.pem"
# ca.pem relative: the CA beside the file (eventlog/kafka_properties.py), in the containers and in a copy on the host.
write_admin_client_properties "$CLIENT/admin.properties" "$SECRETS" ca.pem
chown -R "$CLIENT_OWNER" "$CLIENT"
chmod 600 "$CLIENT"/*
say "secrets ready in $SECRETS (broker, owner $KAFKA_OWNER) and $CLIENT (clients, owner $CLIENT_OWNER)"
