#!/usr/bin/env bash
# Installs what fieldhub needs on a fresh Debian machine: the servers its tests and demo
# use (Debian packages, when running as root) and a virtualenv with the package.
set -euo pipefail
cd "$(dirname "$0")/.."

# servers for the tests and the demo (mosquitto_pub feeds the MQTT benchmark); a C compiler and
# Python's headers for fieldhub/sinks/influx/_lpenc.c; systemd-analyze and logrotate check deploy/
DEB_PACKAGES=(mosquitto mosquitto-clients influxdb victoria-metrics gcc libc6-dev python3-dev systemd logrotate)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
            apt-get update -q >/dev/null
            apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
        }
        # the packages may start system services on the default ports; tests use their own
        for svc in mosquitto influxdb victoria-metrics; do
            (service "$svc" stop || true) >/dev/null 2>&1
        done
    else
        echo "bootstrap: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        echo "bootstrap: tests that need them will fail; the demo runs without a broker" >&2
    fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: Python 3.11 or newer is needed (found $("$PY" --version 2>&1))" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fieldhub-installed
if [[ ! -f $stamp || setup.cfg -nt $stamp || setup.py -nt $stamp || fieldhub/sinks/influx/_lpenc.c -nt $stamp ]]; then
    echo "bootstrap: installing fieldhub and its dependencies into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
