#!/usr/bin/env bash
# install.sh - set up gearqueue. Idempotent: run it again and it only does what is missing.
#
#   ./install.sh --dev          venv in ./.venv, ./gear.ini with data under ./var, and a local
#                               RabbitMQ broker if none answers at the configured URL
#   ./install.sh [--prefix DIR] production: /opt/gear venv, /etc/gear/gear.ini, systemd units
#   ./install.sh --uninstall    remove what production mode installed; data is left alone
#
# Environment: PYTHON (default python3), GEAR_RABBITMQ_URL (broker to check for),
# GEAR_SKIP_APT=1 (do not call apt-get; fail if something is missing instead).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
BROKER_URL=${GEAR_RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}

# Debian packages: R with limma and nnls for ProjectR, headers to build rpy2 (API mode)
# and systemd-python, and a compiler.
APT_PACKAGES=(r-base-core r-base-dev r-bioc-limma r-cran-nnls libsystemd-dev pkg-config gcc
              python3-venv python3-dev libopenblas0-pthread curl ca-certificates)

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

APT_UPDATED=0
apt_install() {  # apt_install PKG... : install those not yet installed
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ ${GEAR_SKIP_APT:-0} == 1 ]] && die "missing Debian packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing Debian packages (run as root): ${missing[*]}"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
}

broker_answers() {  # broker_answers URL : an AMQP server accepts a TCP connection there
    local hostport host port
    hostport=${1#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
    host=${hostport%:*}; port=${hostport##*:}
    [[ $port == "$hostport" ]] && port=5672
    # An AMQP 0-9-1 server answers our protocol header with a Connection.Start frame.
    timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'AMQP\x00\x00\x09\x01' >&3 &&
        head -c 1 <&3 | od -An -tx1" 2>/dev/null | grep -q 01
}

ensure_broker() {
    if broker_answers "$BROKER_URL"; then
        log "a broker answers at ${BROKER_URL%%@*}@…; using it"
        return 0
    fi
    log "no broker answers; installing and starting RabbitMQ on 127.0.0.1"
    apt_install rabbitmq-server
    mkdir -p /etc/rabbitmq
    if ! grep -qs '^NODE_IP_ADDRESS=' /etc/rabbitmq/rabbitmq-env.conf; then
        echo 'NODE_IP_ADDRESS=127.0.0.1' >> /etc/rabbitmq/rabbitmq-env.conf
    fi
    # The broker closes channels whose delivery stays unacked past consumer_timeout (30 min
    # by default); our jobs may run longer and keep their connection alive, so lift it.
    if ! grep -qs '^consumer_timeout' /etc/rabbitmq/rabbitmq.conf; then
        echo 'consumer_timeout = 86400000' >> /etc/rabbitmq/rabbitmq.conf
    fi
    rabbitmq-plugins --offline enable rabbitmq_management >/dev/null 2>&1 || true
    # PID 1 may not be systemd and policy-rc.d may block `service`: start it directly.
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        rabbitmq-server -detached
    fi
    local i
    for ((i = 0; i < 30; i++)); do
        if timeout 20 rabbitmqctl -q await_startup >/dev/null 2>&1; then break; fi
        sleep 2
    done
    broker_answers "$BROKER_URL" || die "RabbitMQ did not come up (see /var/log/rabbitmq)"
    log "RabbitMQ is up"
}

ensure_venv() {  # ensure_venv DIR EXTRAS
    local venv=$1 extras=$2
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    # rpy2 from source, so it runs in API mode against Debian's R (3.6 needs R >= 4.5).
    if ! "$venv/bin/python" -c 'import rpy2' 2>/dev/null; then
        RPY2_CFFI_MODE=BOTH "$venv/bin/python" -m pip install -q --no-binary rpy2 \
            'rpy2>=3.5.17,<3.6'
    fi
    "$venv/bin/python" -m pip install -q -e "$HERE[$extras]"
}

write_dev_config() {
    [[ -f $HERE/gear.ini ]] && return 0
    log "writing ./gear.ini (data under ./var)"
    sed -e "s|^;\?\s*url = .*|url = $BROKER_URL|" \
        -e "s|^;\?\s*\([a-z_]*_dir\) = /var/lib/gear/\(.*\)|\1 = var/\2|" \
        "$HERE/gear.ini.example" > "$HERE/gear.ini"
}

install_dev() {
    apt_install "${APT_PACKAGES[@]}"
    ensure_broker
    ensure_venv "$HERE/.venv" "r,h5ad,systemd,test"
    write_dev_config
    mkdir -p "$HERE"/var/{state,datasets,carts,projections,uploads,exports}
    log "done: .venv ready, gear.ini in $HERE"
}

case ${1:-} in
    --dev) install_dev ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) [[ -f $HERE/install-production.sh ]] || die "production mode not available yet"
       exec "$HERE/install-production.sh" "$@" ;;
esac
