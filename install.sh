#!/usr/bin/env bash
# install.sh - set up gearqueue. Idempotent: run it again and it only does what is missing.
#
#   ./install.sh --dev          venv in ./.venv, ./gear.ini with data under ./var, and a local
#                               RabbitMQ broker if none answers at the configured URL
#   ./install.sh [--prefix DIR] production (root, systemd): user and group `gear`, a venv and
#                               the listeners under DIR (default /opt/gear), the `gearqueue`
#                               command in /usr/local/bin, /etc/gear/gear.ini
#                               from the example if absent, data under /var/lib/gear, the
#                               systemd units with real paths; enables the targets and each
#                               type's `workers` instances. Starts nothing: see docs/operations.md
#   ./install.sh --uninstall [--prefix DIR]
#                               remove what production mode installed; gear.ini, the data, the
#                               user and the broker (with its queued jobs) are left alone
#
# Environment: PYTHON (default python3 for --dev, /usr/bin/python3 for production: the
# service user must be able to run it), GEAR_RABBITMQ_URL (broker to check for),
# GEAR_SKIP_APT=1 (do not call apt-get; fail if something is missing instead).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-}
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

ensure_venv() {  # ensure_venv DIR EXTRAS [editable|copy] : a venv with gearqueue in it
    local venv=$1 extras=$2 mode=${3:-editable} stage
    [[ -x $venv/bin/python ]] || "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    # rpy2 from source in API mode against Debian's R (3.6 needs R >= 4.5). Its ABI mode
    # needs write+execute memory, which the units forbid (MemoryDenyWriteExecute), and a
    # wheel in pip's cache may be an ABI-only build: hence API and --no-cache-dir.
    if ! "$venv/bin/python" -c 'import _rinterface_cffi_api' 2>/dev/null; then
        RPY2_CFFI_MODE=API "$venv/bin/python" -m pip install -q --no-cache-dir \
            --force-reinstall --no-binary rpy2 'rpy2>=3.5.17,<3.6'
    fi
    if [[ $mode == editable ]]; then
        "$venv/bin/python" -m pip install -q -e "$HERE[$extras]"
        return 0
    fi
    # A copy, built from a clean staging folder so the checkout is never written to.
    stage=$(mktemp -d)
    cp -a "$HERE/pyproject.toml" "$HERE/lib" "$stage/"
    rm -rf "$stage"/lib/*.egg-info
    "$venv/bin/python" -m pip install -q "$stage[$extras]"  # a folder: always reinstalled
    rm -rf "$stage"
}

write_dev_config() {
    [[ -f $HERE/gear.ini ]] && return 0
    log "writing ./gear.ini (data under ./var)"
    # The broker URL goes into [rabbitmq] only: [state] has a url key of its own.
    sed -e "/^\[rabbitmq\]/,/^\[/ s|^;\?\s*url = .*|url = $BROKER_URL|" \
        -e "s|^;\?\s*\([a-z_]*_dir\) = /var/lib/gear/\(.*\)|\1 = var/\2|" \
        "$HERE/gear.ini.example" > "$HERE/gear.ini"
}

install_dev() {
    apt_install "${APT_PACKAGES[@]}"
    # The tests of the PostgreSQL job-state backend use the server at 127.0.0.1:5432 and
    # start private clusters of their own with initdb + pg_ctl.
    apt_install postgresql-15
    ensure_broker
    ensure_venv "$HERE/.venv" "r,h5ad,figures,systemd,postgresql,test"
    write_dev_config
    mkdir -p "$HERE"/var/{state,datasets,carts,projections,uploads,exports}
    log "done: .venv ready, gear.ini in $HERE"
}

# --- production --------------------------------------------------------------------------
PREFIX=/opt/gear
CONFIG=/etc/gear/gear.ini
DATA_DIR=/var/lib/gear
UNIT_DIR=/etc/systemd/system
BIN_LINK=/usr/local/bin/gearqueue
GEAR_USER=gear
TYPES=()  # the job types, dashed as in unit names: read from the venv (load_job_types)
# First line of every file we install, so --uninstall removes ours and nothing else.
MARK="# Installed by gearqueue install.sh; edit the source in systemd/ and re-run it."

need_root_and_systemd() {
    [[ $(id -u) == 0 ]] || die "production mode needs root"
    [[ -d /run/systemd/system ]] || die "systemd is not running (PID 1 must be systemd)"
}

ensure_user() {
    getent group "$GEAR_USER" >/dev/null || groupadd --system "$GEAR_USER"
    getent passwd "$GEAR_USER" >/dev/null ||
        useradd --system --gid "$GEAR_USER" --home-dir "$DATA_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "gearqueue consumers" "$GEAR_USER"
}

ensure_config() {
    install -d -m 0750 -o root -g "$GEAR_USER" "${CONFIG%/*}"
    if [[ ! -f $CONFIG ]]; then
        log "writing $CONFIG from gear.ini.example (every key commented, with its default)"
        install -m 0640 -o root -g "$GEAR_USER" "$HERE/gear.ini.example" "$CONFIG"
    fi
    "$PREFIX/venv/bin/gearqueue" --config "$CONFIG" check-config >/dev/null ||
        die "$CONFIG is not valid (see above); fix it and re-run"
}

data_dirs() {  # the folders of gear.ini the consumers write: [paths], [metrics] textfile_dir
    "$PREFIX/venv/bin/python" - "$CONFIG" <<'EOF'
import dataclasses, sys
from gearqueue.config import load_settings
settings = load_settings(sys.argv[1])
for path in dataclasses.astuple(settings.paths):
    print(path)
if settings.metrics.textfile_dir is not None:  # for node_exporter's textfile collector
    print(settings.metrics.textfile_dir)
EOF
}

job_types() {  # gearqueue.jobtypes.JOB_TYPES as systemd names them (dashes), one a line
    "$PREFIX/venv/bin/python" - <<'EOF'
from gearqueue.jobtypes import JOB_TYPES
for job_type in JOB_TYPES:
    print(job_type.replace("_", "-"))
EOF
}

load_job_types() {  # TYPES from the installed code; each type must have its unit files
    local type
    mapfile -t TYPES < <(job_types)
    ((${#TYPES[@]})) || die "cannot read the job types from $PREFIX/venv (see above)"
    for type in "${TYPES[@]}"; do
        [[ -f $HERE/systemd/$type-consumer@.service && -f $HERE/systemd/$type-consumer.target ]] ||
            die "job type $type needs systemd/$type-consumer@.service and $type-consumer.target"
    done
}

installed_job_types() {  # the types whose targets we installed (when the venv cannot say)
    local file
    for file in "$UNIT_DIR"/*-consumer.target; do
        [[ -f $file && $(head -n1 "$file") == "$MARK" ]] || continue
        file=${file##*/}
        echo "${file%-consumer.target}"
    done
}

ensure_data_dirs() {
    local dir
    install -d -m 0750 -o "$GEAR_USER" -g "$GEAR_USER" "$DATA_DIR"
    while read -r dir; do
        # Created for gear (setgid: the web server's user joins group gear to share them);
        # an existing folder keeps its owner, but gear must be able to write to it.
        [[ -d $dir ]] || install -d -m 2770 -o "$GEAR_USER" -g "$GEAR_USER" "$dir"
        setpriv --reuid "$GEAR_USER" --regid "$GEAR_USER" --init-groups test -w "$dir" ||
            log "warning: user $GEAR_USER cannot write to $dir"
    done < <(data_dirs)
}

render_units() {  # render_units DIR : the units of systemd/ with real paths, into DIR
    local out=$1 file rw
    rw=$(data_dirs | sort -u | tr '\n' ' ')
    for file in "$HERE"/systemd/*; do
        { echo "$MARK"
          sed -e "s|@GEAR_PREFIX@|$PREFIX|g" -e "s|@GEAR_CONFIG@|$CONFIG|g" \
              -e "s|@GEAR_RW_PATHS@|${rw% }|g" "$file"; } > "$out/${file##*/}"
    done
    ! grep -n '@GEAR_[A-Z_]*@' "$out"/* || die "placeholders left in the rendered units"
}

install_units() {
    local stage file changed=0 type dropin verify
    stage=$(mktemp -d)
    render_units "$stage"
    # verify warns on stderr and may still exit 0: any output is a failure here.
    verify=$(cd "$stage" && systemd-analyze verify ./*.service ./*.target ./*.slice 2>&1) ||
        { rm -rf "$stage"; die "systemd-analyze verify failed: $verify"; }
    [[ -z $verify ]] || { rm -rf "$stage"; die "systemd-analyze verify is not clean: $verify"; }
    for file in "$stage"/*; do
        if ! cmp -s "$file" "$UNIT_DIR/${file##*/}"; then
            install -m 0644 "$file" "$UNIT_DIR/${file##*/}"
            changed=1
        fi
    done
    rm -rf "$stage"
    # A broker on this host: instances want it started (and are already ordered after it).
    if broker_is_local && [[ $(systemctl is-enabled rabbitmq-server.service 2>/dev/null) == enabled ]]
    then
        for type in "${TYPES[@]}"; do
            dropin=$UNIT_DIR/$type-consumer@.service.d/gear-local-broker.conf
            mkdir -p "${dropin%/*}"
            printf '%s\n[Unit]\nWants=rabbitmq-server.service\n' "$MARK" > "$dropin"
        done
    fi
    ((changed)) && log "installed the units in $UNIT_DIR"
    systemctl daemon-reload
}

broker_is_local() {
    local hostport=${BROKER_URL#*://}
    hostport=${hostport#*@}; hostport=${hostport%%/*}
    [[ ${hostport%:*} =~ ^(127\.0\.0\.1|localhost|\[::1\])$ ]]
}

enable_units() {
    local type
    systemctl enable --quiet gear-consumers.target "${TYPES[@]/%/-consumer.target}"
    for type in "${TYPES[@]}"; do
        "$PREFIX/venv/bin/gearqueue" --config "$CONFIG" scale "$type" --no-start
    done
}

install_production() {
    need_root_and_systemd
    apt_install "${APT_PACKAGES[@]}"
    ensure_broker
    ensure_user
    install -d -m 0755 "$PREFIX" "$PREFIX/listeners" "$PREFIX/share/doc"
    # Marks our prefix (for --uninstall) and names the checkout, which doctor compares
    # the installed code with.
    printf 'source=%s\n' "$HERE" > "$PREFIX/.gearqueue-install"
    PYTHON=${PYTHON:-/usr/bin/python3} ensure_venv "$PREFIX/venv" "r,h5ad,figures,systemd,postgresql" copy
    install -m 0755 "$HERE"/listeners/*_consumer.py "$PREFIX/listeners/"
    ln -sfn "$PREFIX/venv/bin/gearqueue" "$BIN_LINK"
    install -m 0644 "$HERE/gear.ini.example" "$HERE"/docs/*.md "$PREFIX/share/doc/"
    load_job_types
    ensure_config
    ensure_data_dirs
    install_units
    enable_units
    log "done. Start: systemctl start gear-consumers.target (or <type>-consumer.target);"
    log "after an upgrade: systemctl restart gear-consumers.target (jobs finish first)"
}

uninstall_production() {
    need_root_and_systemd
    local file type units=()
    mapfile -t TYPES < <(job_types 2>/dev/null || installed_job_types)
    for type in "${TYPES[@]}"; do
        units+=("$type-consumer.target")
        for file in "$UNIT_DIR/$type-consumer.target.wants/$type-consumer@"*.service; do
            [[ -e $file || -L $file ]] && units+=("${file##*/}")
        done
    done
    # Stopping the group stops every instance (PartOf=); jobs in progress finish first.
    systemctl stop gear-consumers.target "${TYPES[@]/#/gear-scale@}" || true
    systemctl disable --quiet gear-consumers.target "${units[@]}" 2>/dev/null || true
    for file in "$UNIT_DIR"/* "$UNIT_DIR"/*.d/*; do
        [[ -f $file && ! -L $file ]] && [[ $(head -n1 "$file") == "$MARK" ]] && rm -f "$file"
    done
    rmdir "$UNIT_DIR"/*-consumer@.service.d "$UNIT_DIR"/*-consumer.target.wants 2>/dev/null || true
    systemctl daemon-reload
    systemctl reset-failed "${TYPES[@]/%/-consumer@*}" "${TYPES[@]/#/gear-scale@}" 2>/dev/null || true
    [[ $(readlink "$BIN_LINK" 2>/dev/null) == "$PREFIX"/* ]] && rm -f "$BIN_LINK"
    if [[ -f $PREFIX/.gearqueue-install ]]; then
        rm -rf "$PREFIX"
        log "removed $PREFIX"
    fi
    log "done. Left alone: $CONFIG, $DATA_DIR, the user and group $GEAR_USER, the broker"
}

main() {
    local mode=install
    while (($#)); do
        case $1 in
            --dev) install_dev; return ;;
            -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; return ;;
            --prefix) [[ -n ${2:-} ]] || die "--prefix needs a folder"
                      PREFIX=$(realpath -m "$2"); shift ;;
            --uninstall) mode=uninstall ;;
            *) die "unknown argument $1 (see --help)" ;;
        esac
        shift
    done
    if [[ $mode == install ]]; then install_production; else uninstall_production; fi
}

main "$@"
