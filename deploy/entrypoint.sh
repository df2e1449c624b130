#!/bin/sh
# The container's entry point: create the node directory on first start, then run the node.
#
#   serve   (default) `node init` if $NODE_DIR holds no node yet, then `node serve`
#   health  exit 0 when the node answers GET /healthz (the image's HEALTHCHECK)
#   ...     anything else is passed to `trusted-space` (e.g. `node admit ...`)
#
# First start needs NODE_NAME, NODE_ROLES (comma-separated) and PUBLIC_URL (how the other nodes
# reach this one); a member also needs OPERATOR_URL (the trust anchor is fetched from it: compare
# the fingerprint printed in the log with the operator's, as docs/operations.md says).
set -eu
NODE_DIR="${NODE_DIR:-/var/lib/trusted-space/node}"

case "${1:-serve}" in
serve)
    if [ ! -f "$NODE_DIR/node.toml" ]; then
        : "${NODE_NAME:?NODE_NAME is needed on first start}"
        : "${NODE_ROLES:?NODE_ROLES is needed on first start}"
        : "${PUBLIC_URL:?PUBLIC_URL is needed on first start}"
        if [ -n "${OPERATOR_URL:-}" ]; then set -- --operator "$OPERATOR_URL"; else set --; fi
        trusted-space node init --name "$NODE_NAME" --role "$NODE_ROLES" --dir "$NODE_DIR" \
            --host 0.0.0.0 --port "${NODE_PORT:-8700}" --public-url "$PUBLIC_URL" "$@"
    fi
    exec trusted-space node serve --dir "$NODE_DIR"
    ;;
health)
    exec python - <<'PY'
import os
import sys

import httpx

from connectors.common.settings import load_settings
from connectors.common.tls import client_context

settings = load_settings(os.environ["NODE_DIR"])
scheme = "https" if settings.tls_cert else "http"
url = os.environ.get("HEALTH_URL") or f"{scheme}://localhost:{settings.port}/healthz"
try:
    answer = httpx.get(url, timeout=4, verify=client_context(settings))
except httpx.HTTPError as exc:
    sys.exit(f"{url}: {exc}")
sys.exit(0 if answer.status_code == 200 else f"{url}: HTTP {answer.status_code}")
PY
    ;;
*)
    exec trusted-space "$@"
    ;;
esac
