#!/usr/bin/env bash
# Deploy (or update) modelgate on a Docker Swarm: `docker stack deploy` of
# deploy/swarm/stack.yaml with what Swarm needs around it. Run from the repository root
# on a manager node, after `make init` (certificates, secrets, model store) and with the
# images present on every node (built with `docker compose build`, or in your registry:
# MG_IMAGE_PREFIX, MG_IMAGE_TAG).
#
#   deploy/swarm/deploy.sh [-c extra-stack-file.yaml ...]
#
# Settings (environment): MG_STACK_NAME (modelgate), MG_HTTPS_PORT / MG_HTTP_PORT
# (8443 / 8080), MG_INFERENCE_REPLICAS (3), MG_AUTH_REPLICAS (2), MG_CRYPTO_REPLICAS (2),
# MG_POSTGRES_IMAGE (postgres:16-bookworm), MG_SWARM_RESOLVE_IMAGE (always; `never` for
# images that exist only locally), MG_SWARM_WAIT (300 s to converge; 0: do not wait).
#
# What it adds to a plain `docker stack deploy`:
# - every secret named by the hash of its content: Swarm secrets are immutable, so a
#   rotated key becomes a new secret and the services that use it roll onto it;
# - the newest JWT signing key found in secrets/jwks.json (only it is handed to auth);
# - absolute paths for the secrets, certificates and model store;
# - a wait until every service runs all its replicas, healthy.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
extra=()
while (($#)); do
    case $1 in
        -c) extra+=(-c "$2"); shift 2 ;;
        # The header comment, whatever its length: every line from 2 up to the first code.
        -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "deploy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "deploy.sh: $*" >&2; exit 1; }

SECRETS=${MG_SECRETS_DIR:-$ROOT/secrets}
CERTS=${MG_CERTS_DIR:-$ROOT/certs}
STORE=${MG_MODEL_STORE:-$ROOT/model_store}
STACK=${MG_STACK_NAME:-modelgate}
for needed in "$SECRETS/jwks.json" "$SECRETS/fernet_keyring.json" "$SECRETS/database_url" \
    "$SECRETS/postgres_password" "$SECRETS/redis_users.acl" "$SECRETS/redis_auth_password" \
    "$SECRETS/redis_inference_password" "$SECRETS/redis_crypto_password" "$CERTS/server.pem" \
    "$STORE"; do
    [[ -e $needed ]] || die "$needed is missing: run \`make init\` first"
done
[[ $(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) == active ]] ||
    die "this Docker engine is not in a swarm (docker swarm init, or join one)"
if [[ -f .env ]]; then
    # MG_UID / MG_GID: the owner the images were built for, which must own the secret files.
    set -a && . ./.env && set +a
fi

content_id() { sha256sum "$1" | cut -c1-12; }
kid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys"][0]["kid"])' \
    "$SECRETS/jwks.json") || die "no signing key in $SECRETS/jwks.json"
[[ -f $SECRETS/jwt/$kid.pem ]] || die "the newest key $kid has no private key in $SECRETS/jwt"
export MG_JWT_KID=$kid
export MG_SECRETS_DIR_ABS=$SECRETS MG_CERTS_DIR_ABS=$CERTS MG_MODEL_STORE_DIR=$STORE
export MG_SECRET_SERVER_PEM=$(content_id "$CERTS/server.pem")
export MG_SECRET_SERVER_KEY=$(content_id "$CERTS/server-key.pem")
export MG_SECRET_ADMIN_PASSWORD=$(content_id "$SECRETS/admin_password")
export MG_SECRET_JWKS=$(content_id "$SECRETS/jwks.json")
export MG_SECRET_JWT_KEY=$(content_id "$SECRETS/jwt/$kid.pem")
export MG_SECRET_FERNET=$(content_id "$SECRETS/fernet_keyring.json")
export MG_SECRET_MODEL_PUB=$(content_id "$SECRETS/model_signing_key.pub")
export MG_SECRET_POSTGRES_PASSWORD=$(content_id "$SECRETS/postgres_password")
export MG_SECRET_DATABASE_URL=$(content_id "$SECRETS/database_url")
export MG_SECRET_REDIS_AUTH=$(content_id "$SECRETS/redis_auth_password")
export MG_SECRET_REDIS_INFERENCE=$(content_id "$SECRETS/redis_inference_password")
export MG_SECRET_REDIS_CRYPTO=$(content_id "$SECRETS/redis_crypto_password")
export MG_SECRET_REDIS_ACL=$(content_id "$SECRETS/redis_users.acl")

echo "deploy.sh: stack $STACK (signing key $kid)"
deployed_at=$(date +%s)
docker stack deploy --prune --resolve-image "${MG_SWARM_RESOLVE_IMAGE:-always}" \
    -c deploy/swarm/stack.yaml "${extra[@]}" "$STACK"

wait=${MG_SWARM_WAIT:-300}
((wait > 0)) || exit 0
deadline=$((SECONDS + wait))
while :; do
    services=$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK")
    # "<name> <running>/<wanted>" per service; global services say e.g. 1/1 too.
    pending=$(docker service ls --filter "label=com.docker.stack.namespace=$STACK" \
        --format '{{.Name}} {{.Replicas}}' | awk '{split($2, r, "[/ ]"); if (r[1] != r[2]) print}')
    # A rolling update in progress, or one that failed since this deploy began.
    updates=$(docker service inspect --format \
        '{{.Spec.Name}} {{with .UpdateStatus}}{{.State}} {{.StartedAt.Unix}}{{end}}' $services)
    failed=$(awk -v since="$deployed_at" '$3 >= since && $2 ~ /paused|rollback/' <<<"$updates")
    [[ -z $failed ]] || die "update failed (docker service ps <name> says why): $failed"
    updating=$(awk '$2 == "updating"' <<<"$updates")
    [[ -z $pending$updating ]] && break
    ((SECONDS < deadline)) || die "not converged within ${wait} s: ${pending}${updating}"
    sleep 2
done
echo "deploy.sh: every service of $STACK runs all its replicas"
docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '   {{.Name}} {{.Replicas}}'
