#!/usr/bin/env bash
# Install everything the service needs on Debian 12, idempotently:
# system packages, the virtualenv with pinned deps, pycaffe (cached build).
# A second run on the same machine does no network or compile work.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages: only call apt when something is missing.
mapfile -t pkgs < <(grep -v '^\s*#' scripts/debian-packages.txt | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the system nginx (port 80, default site) on install; the
  # service runs its own nginx in front of gunicorn, so leave that one off.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null \
     && systemctl is-active --quiet nginx 2>/dev/null; then
    $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi

# 1b. As root: the unprivileged account `serve` runs the web and the worker as
#     (privilege separation, README). `serve` also creates it if missing.
if [ "$(id -u)" = 0 ] && ! getent passwd layerbench >/dev/null; then
  log "creating the system user layerbench"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group layerbench \
    || getent passwd layerbench >/dev/null
fi

# 2. Virtualenv on Debian's Python 3.11 (the one Debian's boost_python311 is
#    built for), with the pinned requirements.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  /usr/bin/python3.11 -m venv "$VENV"
fi
#    The test tools (requirements-dev.txt) only with DEV=1 (`make test`):
#    `make run` on a fresh machine installs a third less. A venv that has
#    them already serves `make run` as it is.
stamp="$VENV/.requirements.sha256"
REQS=(-r requirements.txt)
[ "${CAFFE_GPU:-0}" = 1 ] && REQS+=(-r requirements-gpu.txt)
with_dev=$(echo "${REQS[*]} -r requirements-dev.txt" | cat - requirements*.txt | sha256sum | cut -c1-64)
[ "${DEV:-0}" = 1 ] && REQS+=(-r requirements-dev.txt)
want=$(echo "${REQS[*]}" | cat - requirements*.txt | sha256sum | cut -c1-64)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ] && [ "$have" != "$with_dev" ]; then
  log "installing Python requirements"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "${REQS[@]}" 2> >(grep -v 'is ignored' >&2)
  echo "$want" > "$stamp"
fi

# 3. pycaffe, built from source (cached outside the checkout).
bash scripts/build_caffe.sh "$VENV"
log "ready"
