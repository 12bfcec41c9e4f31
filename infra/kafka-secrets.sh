# shellcheck shell=bash
# The secured broker's secrets and security settings, shared by infra/kafka.sh (the test broker) and
# infra/compose/kafka-entrypoint.sh (docker-compose.yml), so both are secured the same way.
# Sourced, not run: it defines functions only; the caller provides say and die (infra/common.sh).
#
# What a secrets folder holds (the folder mode 700, every file 600; made once, never in git):
#   tls.password      password of the three PKCS12 stores below
#   ca.p12            the test CA's key pair (signs the broker certificate; nothing else)
#   ca.pem            the test CA's certificate: what clients trust (ssl.ca.location)
#   broker.p12        the broker's key and certificate (CN=broker; SANs given by the caller)
#   truststore.p12    the CA certificate, for the broker's own TLS clients and the controller listener
#   admin.password    SCRAM-SHA-512 password of User:admin, the provisioning super user
#   broker.password   SCRAM-SHA-512 password of User:broker, the broker's inter-broker login
#
# Principals: "admin" (SCRAM) and "broker" are the only super users. The broker is User:broker both on
# the SASL_SSL listener (SCRAM) and on the controller listener, where its TLS client certificate
# CN=broker maps to "broker" (ssl.principal.mapping.rules).

SCRAM_MECHANISM=SCRAM-SHA-512
SCRAM_LOGIN_MODULE=org.apache.kafka.common.security.scram.ScramLoginModule

# 48 hex characters (192 bits) from the kernel's random source: no quoting needed anywhere.
new_secret() {
  od -An -v -tx1 -N24 /dev/urandom | tr -d ' \n'
}

# ensure_secret FILE: a random password in FILE (mode 600), made once; sets SECRETS_CREATED=1 when it made one.
# shellcheck disable=SC2034 # read by the scripts that source this file
SECRETS_CREATED=0
ensure_secret() {
  local file="$1"
  if [[ ! -s "$file" ]]; then
    (
      umask 077
      new_secret >"$file.tmp"
    )
    mv -f "$file.tmp" "$file"
    # shellcheck disable=SC2034 # read by the scripts that source this file
    SECRETS_CREATED=1
  fi
  chmod 600 "$file"
}

# ensure_secrets_dir DIR: the folder, private to its owner.
ensure_secrets_dir() {
  mkdir -p "$1"
  chmod 700 "$1"
}

# ensure_tls DIR SANS KEYTOOL: the CA, the broker keystore and the truststore in DIR, made with the JDK's
# keytool (no openssl needed) when missing or made for other SANs (e.g. "ip:127.0.0.1,dns:localhost").
ensure_tls() {
  local dir="$1" sans="$2" keytool="$3"
  local stamp="$dir/tls.stamp" want="san=$sans ec=secp256r1 v1"
  if [[ -s "$dir/ca.pem" && -s "$dir/broker.p12" && -s "$dir/truststore.p12" && -f "$stamp" &&
    "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  ensure_secret "$dir/tls.password"
  local pass="$dir/tls.password" tmp="$dir/tls.tmp" log
  rm -rf "$tmp"
  mkdir -m 700 "$tmp"
  log="$tmp/keytool.log"
  _kt() {
    "$keytool" "$@" </dev/null >>"$log" 2>&1 || {
      cat "$log" >&2
      die "keytool $1 failed while making the broker's TLS files in $dir (see above)"
    }
  }
  # The CA: a self-signed certificate that may sign (basic constraints CA:true), 10 years.
  _kt -genkeypair -alias ca -keyalg EC -groupname secp256r1 -validity 3650 \
    -dname "CN=capital-allocator test CA" -ext bc:c -ext KU:c=keyCertSign,cRLSign \
    -keystore "$tmp/ca.p12" -storetype PKCS12 -storepass:file "$pass"
  _kt -exportcert -rfc -alias ca -keystore "$tmp/ca.p12" -storepass:file "$pass" -file "$tmp/ca.pem"
  # The broker: a key pair, a request, the CA's signature with the names clients connect to, and the
  # signed chain back into the keystore (keytool wants the CA certificate there first to build the chain).
  _kt -genkeypair -alias broker -keyalg EC -groupname secp256r1 -validity 825 -dname "CN=broker" \
    -keystore "$tmp/broker.p12" -storetype PKCS12 -storepass:file "$pass"
  _kt -certreq -alias broker -keystore "$tmp/broker.p12" -storepass:file "$pass" -file "$tmp/broker.csr"
  _kt -gencert -alias ca -keystore "$tmp/ca.p12" -storepass:file "$pass" -rfc -validity 825 \
    -infile "$tmp/broker.csr" -outfile "$tmp/broker.pem" \
    -ext "SAN=$sans" -ext KU:c=digitalSignature -ext EKU=serverAuth,clientAuth
  _kt -importcert -noprompt -alias ca -keystore "$tmp/broker.p12" -storepass:file "$pass" -file "$tmp/ca.pem"
  _kt -importcert -alias broker -keystore "$tmp/broker.p12" -storepass:file "$pass" -file "$tmp/broker.pem"
  _kt -importcert -noprompt -alias ca -keystore "$tmp/truststore.p12" -storetype PKCS12 \
    -storepass:file "$pass" -file "$tmp/ca.pem"
  local f
  for f in ca.p12 ca.pem broker.p12 truststore.p12; do
    chmod 600 "$tmp/$f"
    mv -f "$tmp/$f" "$dir/$f"
  done
  rm -rf "$tmp"
  printf '%s\n' "$want" >"$stamp"
  say "TLS: made a test CA and a broker certificate for $sans in $dir"
}

# ensure_scram_passwords DIR: the admin's and the broker's SCRAM passwords. SECRETS_CREATED=1 afterwards
# means a password is new and the storage must be formatted again (the credentials live in the metadata log).
ensure_scram_passwords() {
  ensure_secret "$1/admin.password"
  ensure_secret "$1/broker.password"
}

# write_format_args FILE SECRETS_DIR CLUSTER_ID PROPERTIES: the arguments of `StorageTool format`, one a line,
# for StorageTool's @FILE option, so that the SCRAM passwords never appear on a command line.
write_format_args() {
  local file="$1" dir="$2" cluster_id="$3" props="$4"
  (
    umask 077
    printf '%s\n' format --cluster-id "$cluster_id" --config "$props" --standalone \
      --add-scram "$SCRAM_MECHANISM=[name=admin,password=$(cat "$dir/admin.password")]" \
      --add-scram "$SCRAM_MECHANISM=[name=broker,password=$(cat "$dir/broker.password")]" >"$file"
  )
}

# StorageTool format prints its bootstrap records, the SCRAM ones with their salts and stored/server
# keys: enough to impersonate the broker to a client. Its output goes through this filter before anyone sees it.
hide_scram_records() {
  sed 's/UserScramCredentialRecord(.*/(SCRAM credential records not shown)/'
}

# broker_security_properties DIR SASL_LISTENER...: the server.properties lines that secure a broker whose
# SASL_SSL listeners are named SASL_LISTENER... (the first one carries inter-broker traffic) and whose
# controller listener is CONTROLLER over TLS with client certificates. The output holds passwords: write it
# to a mode-600 file only.
broker_security_properties() {
  local dir="$1" listener tls broker
  shift
  tls="$(cat "$dir/tls.password")"
  broker="$(cat "$dir/broker.password")"
  cat <<EOF
# --- security (infra/kafka-secrets.sh) ---
# Clients: SCRAM-SHA-512 over TLS only. Inter-broker traffic (for one node: the transaction coordinator
# writing markers to itself) uses the same SASL_SSL listener as User:broker, not admin, so the admin
# login serves provisioning alone and no second client-reachable port exists.
sasl.enabled.mechanisms=$SCRAM_MECHANISM
sasl.mechanism.inter.broker.protocol=$SCRAM_MECHANISM
inter.broker.listener.name=$1
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/broker.p12
ssl.keystore.password=$tls
ssl.key.password=$tls
ssl.truststore.type=PKCS12
ssl.truststore.location=$dir/truststore.p12
ssl.truststore.password=$tls
ssl.client.auth=none
# The KRaft controller listener is not a client listener: it serves the broker (registration, heartbeats,
# the metadata log). It is TLS too, and takes only connections with a certificate signed by the test CA
# (the broker's own), which maps CN=broker to User:broker. So no unauthenticated principal (ANONYMOUS)
# needs to be a super user, and nothing on this port is plaintext.
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([A-Za-z0-9._-]+)\$/\$1/,DEFAULT
# Deny whatever no ACL allows; admin provisions, broker is the broker.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:broker
EOF
  for listener in "$@"; do
    # Server side: SCRAM users come from the metadata log; client side (inter-broker): the broker's login.
    printf 'listener.name.%s.%s.sasl.jaas.config=%s required username="broker" password="%s";\n' \
      "${listener,,}" "${SCRAM_MECHANISM,,}" "$SCRAM_LOGIN_MODULE" "$broker"
  done
}

# write_admin_client_properties FILE SECRETS_DIR CA_PATH: the admin's librdkafka properties (mode 600).
write_admin_client_properties() {
  local file="$1" dir="$2" ca="$3"
  (
    umask 077
    cat >"$file.tmp" <<EOF
# The admin principal (a super user: provisioning only). Written by infra/kafka-secrets.sh; keep it private.
security.protocol=SASL_SSL
sasl.mechanism=$SCRAM_MECHANISM
sasl.username=admin
sasl.password=$(cat "$dir/admin.password")
ssl.ca.location=$ca
EOF
  )
  chmod 600 "$file.tmp"
  mv -f "$file.tmp" "$file"
}
