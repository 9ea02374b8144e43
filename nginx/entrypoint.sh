#!/bin/sh
# Render the nginx/ templates with this container's MG_* environment, the same
# ${MG_*} placeholders `modelgate render-nginx` fills for the native stack, then run
# nginx in the foreground. Only MG_* names are substituted: nginx's own $variables stay.
set -eu
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
