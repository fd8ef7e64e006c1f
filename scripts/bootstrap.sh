# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: installs what the project needs on a fresh
# Debian / Raspberry Pi OS machine (Debian packages, then a virtual environment in .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGENCE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

ensure_debian_packages() {
    # $@: "command:package" pairs; installs the packages whose command is missing.
    need_apt=()
    for pair in "$@"; do
        have_cmd "${pair%%:*}" || need_apt+=("${pair#*:}")
    done
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        need_apt+=(python3-venv)
    fi
    if [ "${#need_apt[@]}" -gt 0 ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "missing: ${need_apt[*]} (no apt-get here: install them by hand)" >&2
            exit 1
        fi
        echo "installing Debian packages: ${need_apt[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "${need_apt[@]}" >/dev/null
        # The Debian package starts a system-wide broker on :1883; the agent's demo and tests
        # run their own on free loopback ports and do not need it.
    fi
}

fast_extra() {
    # uvloop ships wheels for amd64 and arm64; elsewhere (32-bit Raspberry Pi OS) it would be
    # compiled from source, so the agent runs on asyncio's own loop there.
    case "$(uname -m)" in
        x86_64|aarch64|arm64) echo "fast" ;;
        *) echo "" ;;
    esac
}

ensure_venv() {
    # $1: extras, e.g. "" or "dev"
    local extras="${1:-}" spec="$ROOT"
    [ -n "$extras" ] && spec="$ROOT[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating the Python environment in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-${extras:-base}"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e "$spec"
        touch "$stamp"
    fi
}

ensure_node_modules() {
    # The contracts toolchain (solcjs, anvil) pinned in package.json / package-lock.json.
    # Node.js and npm come from Debian where the machine has none.
    ensure_debian_packages node:nodejs npm:npm
    local stamp="$ROOT/node_modules/.installed"
    if [ ! -f "$stamp" ] || [ "$ROOT/package-lock.json" -nt "$stamp" ]; then
        echo "installing the contracts toolchain (npm ci)"
        (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$stamp"
    fi
}

build_contracts() {
    # contracts/*.sol -> agent/resources/contracts/*.json (skipped when nothing changed)
    "$VENV/bin/python" -m agent.chainclient.build
}

check_contracts() {
    # The committed artifacts must equal a fresh solc build of the committed sources.
    "$VENV/bin/python" -m agent.chainclient.build --check
}

ensure_firmware_node_modules() {
    # MicroPython's WebAssembly port, which runs the firmware's core in tests
    # (firmware/micropython/tests/package.json). Node.js and npm come from Debian if missing.
    ensure_debian_packages node:nodejs npm:npm
    local dir="$ROOT/firmware/micropython/tests"
    local stamp="$dir/node_modules/.installed"
    if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
        echo "installing MicroPython (WebAssembly) for the firmware tests (npm ci)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$stamp"
    fi
}
