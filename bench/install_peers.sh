#!/usr/bin/env bash
# Install the bench tools and the peers the comparison runs against, each into its own
# bench-only environment under var/bench/ (never into the project's .venv). Every step is
# timed and may fail on its own: the outcome goes to var/bench/install.json, which
# bench/peers.py reads to say "not installed" in its table instead of failing.
# Idempotent: a step already recorded as installed, with the same pin, whose program is still
# there, is skipped (BENCH_REINSTALL=1 redoes it); a failed step is tried again.
# tera-proxy itself, uvicorn/granian (its [servers] extra) and the bare Starlette+aiohttp peer
# run from the project's .venv (`make venv`), not from here.
#   usage: bench/install_peers.sh [PY] [step...]   steps: tools mock nginx vllm-router sglang-router litellm
set -u
PY=${1:-python3}; shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=$ROOT/var/bench
mkdir -p "$VAR/peers"
STEPS=${*:-tools mock nginx vllm-router sglang-router litellm}
# Pins: the versions this harness was written against (override from make).
VLLM_ROUTER_PKG=${VLLM_ROUTER_PKG:-vllm-router==0.1.17}
SGLANG_ROUTER_PKG=${SGLANG_ROUTER_PKG:-sglang-router==0.3.2}
# LiteLLM 1.107.0 was a compromised release, and 1.101+ needs a certifi newer than the
# registry mirror here has: 1.100.5 installs and predates both.
LITELLM_PKG=${LITELLM_PKG:-litellm[proxy]==1.100.5}
STATUS=$VAR/install.json
test -f "$STATUS" || echo '{}' > "$STATUS"

record() {  # name ok seconds detail
  "$PY" - "$STATUS" "$1" "$2" "$3" "$4" <<'PYEOF'
import json, sys, time
path, name, ok, secs, detail = sys.argv[1:]
data = json.load(open(path))
data[name] = {"ok": ok == "1", "seconds": int(secs), "detail": detail, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
json.dump(data, open(path, "w"), indent=2)
PYEOF
}

installed() {  # name detail: recorded as installed with this detail (pin)?
  test "${BENCH_REINSTALL:-0}" = 1 && return 1
  "$PY" - "$STATUS" "$1" "$2" <<'PYEOF'
import json, sys
path, name, detail = sys.argv[1:]
got = json.load(open(path)).get(name) or {}
sys.exit(0 if got.get("ok") and got.get("detail") == detail else 1)
PYEOF
}

venv_pip() {  # dir packages...
  local dir=$1; shift
  { test -x "$dir/bin/python" || "$PY" -m venv "$dir"; } && "$dir/bin/pip" install -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
}

TOOLS_PKGS="aiohttp orjson uvloop psutil matplotlib numpy"

skip_step() {  # name: already installed and still there?
  case $1 in
    tools) installed tools "$TOOLS_PKGS" && "$VAR/venv/bin/python" -c 'import aiohttp, orjson, uvloop, psutil, matplotlib' 2>/dev/null;;
    vllm-router) installed vllm-router "$VLLM_ROUTER_PKG" && test -x "$VAR/peers/vllm-router/bin/vllm-router";;
    sglang-router) installed sglang-router "$SGLANG_ROUTER_PKG" && "$VAR/peers/sglang-router/bin/python" -c 'import sglang_router' 2>/dev/null;;
    litellm) installed litellm "$LITELLM_PKG" && test -x "$VAR/peers/litellm/bin/litellm";;
    *) return 1;;  # mock (make decides) and nginx (checks for itself) are cheap to rerun
  esac
}

run_step() {
  local name=$1 start=$SECONDS ok=1 detail=""
  if skip_step "$name"; then echo "== $name: already installed" >&2; return; fi
  echo "== $name" >&2
  case $name in
    tools) venv_pip "$VAR/venv" $TOOLS_PKGS || ok=0
           detail=$TOOLS_PKGS;;
    mock)  make -s -C "$ROOT/bench/mock" || ok=0; detail="gcc bench/mock/mockllm.c";;
    nginx) if ! command -v nginx >/dev/null && ! test -x /usr/sbin/nginx; then
             { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; } \
             || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } || ok=0
           fi
           detail=$( (/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1) | head -1);;
    vllm-router) venv_pip "$VAR/peers/vllm-router" "$VLLM_ROUTER_PKG" || ok=0
           test -x "$VAR/peers/vllm-router/bin/vllm-router" || ok=0; detail=$VLLM_ROUTER_PKG;;
    sglang-router) venv_pip "$VAR/peers/sglang-router" "$SGLANG_ROUTER_PKG" || ok=0
           "$VAR/peers/sglang-router/bin/python" -c 'import sglang_router' || ok=0; detail=$SGLANG_ROUTER_PKG;;
    litellm) venv_pip "$VAR/peers/litellm" "$LITELLM_PKG" || ok=0
           test -x "$VAR/peers/litellm/bin/litellm" || ok=0; detail=$LITELLM_PKG;;
    *) echo "unknown step $name" >&2; ok=0;;
  esac
  local took=$((SECONDS - start))
  record "$name" "$ok" "$took" "$detail"
  if [ $ok = 1 ]; then echo "   $name: installed in ${took}s" >&2; else echo "   $name: FAILED after ${took}s (the bench will mark it unavailable)" >&2; fi
}

for s in $STEPS; do run_step "$s"; done
exit 0
