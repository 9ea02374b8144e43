#!/bin/sh
# Render the nginx/ templates with this container's MG_* environment, the same
# ${MG_*} placeholders `modelgate render-nginx` fills for the native stack, then run
# nginx in the foreground. Only MG_* names are substituted: nginx's own $variables stay.
set -eu

# Defaults for every ${MG_*} the templates use, taken when a setting is unset or empty
# (compose.yaml passes `${MG_X:-}`). The native stack's own are in modelgate_cli/_render.py.
: "${MG_NGINX_WORKERS:=auto}"
: "${MG_NGINX_CONF_DIR:=/tmp/nginx}"
: "${MG_NGINX_RUN_DIR:=/tmp/nginx/run}"
: "${MG_NGINX_ERROR_LOG:=stderr}"
: "${MG_NGINX_ACCESS_LOG:=/dev/stdout}"
: "${MG_NGINX_MAX_BODY:=1m}"
: "${MG_NGINX_RATE:=100r/s}"
: "${MG_NGINX_BURST:=200}"
: "${MG_NGINX_BURST_DELAY:=50}"
: "${MG_NGINX_CONN_PER_IP:=256}"
: "${MG_NGINX_LOGIN_RATE:=1r/s}"
: "${MG_NGINX_LOGIN_BURST:=10}"
: "${MG_CERTS_DIR:=/etc/modelgate/certs}"
: "${MG_HTTPS_LISTEN:=8443}"
: "${MG_HTTP_LISTEN:=8080}"
: "${MG_HTTPS_PORT:=8443}"
: "${MG_NGINX_UPSTREAMS:=static}"
: "${MG_NGINX_RESOLVER:=127.0.0.11}"
: "${MG_NGINX_RESOLVER_VALID:=5s}"
: "${MG_DOCS_DIR:=/etc/modelgate/docs}"
: "${MG_AUTH_UPSTREAM:=auth:8000}"
: "${MG_INFERENCE_UPSTREAM:=inference:8000}"
: "${MG_CRYPTO_UPSTREAM:=crypto:8000}"
export MG_NGINX_WORKERS MG_NGINX_CONF_DIR MG_NGINX_RUN_DIR MG_NGINX_ERROR_LOG \
    MG_NGINX_ACCESS_LOG MG_NGINX_MAX_BODY MG_NGINX_RATE MG_NGINX_BURST MG_NGINX_BURST_DELAY \
    MG_NGINX_CONN_PER_IP MG_NGINX_LOGIN_RATE MG_NGINX_LOGIN_BURST MG_CERTS_DIR \
    MG_HTTPS_LISTEN MG_HTTP_LISTEN MG_HTTPS_PORT MG_AUTH_UPSTREAM MG_INFERENCE_UPSTREAM \
    MG_CRYPTO_UPSTREAM \
    MG_NGINX_UPSTREAMS MG_NGINX_RESOLVER MG_NGINX_RESOLVER_VALID MG_DOCS_DIR

# /docs and /openapi.json (MG_PUBLIC_DOCS, off by default): the files come from
# `modelgate docs --out DIR` (the CLI image), mounted at MG_DOCS_DIR.
case "$(printf '%s' "${MG_PUBLIC_DOCS:-}" | tr '[:upper:]' '[:lower:]')" in
1 | true | yes | on)
    MG_NGINX_DOCS=on
    for file in openapi.json ui/index.html ui/swagger-ui-bundle.js; do
        [ -f "$MG_DOCS_DIR/$file" ] || {
            echo "modelgate-nginx: MG_PUBLIC_DOCS is on but $MG_DOCS_DIR/$file is missing" >&2
            exit 1
        }
    done
    ;;
'' | 0 | false | no | off) MG_NGINX_DOCS=off ;;
*)
    echo "modelgate-nginx: MG_PUBLIC_DOCS must be 1 or 0, not '$MG_PUBLIC_DOCS'" >&2
    exit 1
    ;;
esac
export MG_NGINX_DOCS

src=/etc/modelgate/nginx
conf="$MG_NGINX_CONF_DIR"
mkdir -p "$conf/snippets" "$MG_NGINX_RUN_DIR"
names=$(env | sed -n 's/^\(MG_[A-Z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
envsubst "$names" <"$src/nginx.conf.template" >"$conf/nginx.conf"
for snippet in "$src"/snippets/*.conf; do
    envsubst "$names" <"$snippet" >"$conf/snippets/${snippet##*/}"
done
cp "$src/ffdhe2048.pem" "$conf/"
if grep -n '\${MG_' "$conf/nginx.conf" "$conf"/snippets/*.conf >&2; then
    echo "modelgate-nginx: the settings above are not set" >&2
    exit 1
fi
exec nginx -p "$conf" -c "$conf/nginx.conf" -e stderr -g 'daemon off;' "$@"
