#!/bin/sh
# One-shot OpenBao setup for the compose example (dev only): the database
# engine at redis/, a role whose ACL rules cover exactly what the plugin
# sends, a policy, and a renewable token for the plugin written to a file.
# Inputs come from the environment (see docker-compose.yaml).
set -eu

until bao status >/dev/null 2>&1; do sleep 1; done

bao secrets list | grep -q '^redis/' || bao secrets enable -path=redis database

# Vault connects as a Redis user that may only run ACL and connection
# commands; the dynamic users it creates hold the cache rules.
bao write redis/config/cache \
  plugin_name=redis-database-plugin \
  host="$REDIS_HOST" port="$REDIS_PORT" \
  username="$REDIS_VAULT_USER" password="$REDIS_VAULT_PASSWORD" \
  allowed_roles=cache-rw

bao write redis/roles/cache-rw \
  db_name=cache \
  creation_statements="$CACHE_ACL_RULES" \
  default_ttl="$CREDS_TTL" max_ttl="$CREDS_MAX_TTL"

bao policy write cache-plugin - <<'POLICY'
path "redis/creds/cache-rw" { capabilities = ["read"] }
path "sys/leases/renew"     { capabilities = ["update"] }
path "sys/leases/revoke"    { capabilities = ["update"] }
POLICY

# A periodic orphan token: the plugin renews it for as long as it runs, and
# the credentials it reads are not revoked with the root token.
umask 077
bao token create -orphan -period=1h -policy=cache-plugin -field=token >"$PLUGIN_TOKEN_FILE.tmp"
mv "$PLUGIN_TOKEN_FILE.tmp" "$PLUGIN_TOKEN_FILE"
chown 65532:65532 "$PLUGIN_TOKEN_FILE" 2>/dev/null || true
echo "openbao: database engine ready; plugin token in $PLUGIN_TOKEN_FILE"
