#!/bin/bash
# systemd_ns_init.sh - PID 1 of a fresh PID + mount (+UTS, IPC) namespace: make the file
# system safe for a real systemd, then exec it. Started by tests/systemd_ns.py through
#   unshare --pid --fork --kill-child --mount --uts --ipc --mount-proc --propagation private
# never by hand. Environment (set by systemd_ns.py):
#   NS_STATE    the namespace's state folder on the host (kmsg file, overlay upper dirs)
#   NS_CG2      host cgroup2 mount + our delegated subtree, e.g. /sys/fs/cgroup/unified/x
#   NS_CG2MNT   host cgroup2 mount point
#   NS_OVERLAY  folders made writable by an overlay whose upper dir is in NS_STATE: writes
#               land there, never in the host's folder (install.sh's /etc, /opt, /var/lib)
#   NS_TMPFS    folders replaced by an empty private tmpfs
#
# Why each step (learnt the hard way; every layer protects the host):
#  1. container=gearqueue-test in PID 1's environment: systemd runs in container mode (no
#     kmod loading, no clock setup, no core_pattern/printk writes, no swap units, no
#     umount/loop/DM detach in systemd-shutdown).
#  2. Every unit in /usr/lib/systemd/system is MASKED in a private tmpfs /etc/systemd/system,
#     except targets, slices, journald and the poweroff services; generators are off. An
#     unmasked systemd-tmpfiles-setup wipes the host's /tmp; systemd-sysctl writes the host's
#     kernel settings; the SysV generator would wrap /etc/init.d/rabbitmq-server.
#  3. Kernel knobs are read-only inside (/proc/sys, /sys, /proc/sysrq-trigger, ...), and the
#     capability bounding set drops SYS_MODULE, SYS_TIME, NET_ADMIN (the network namespace
#     is the host's: that is how the broker on 127.0.0.1 is reachable) and AUDIT_*.
#  4. Private /run, /dev, /var/lib/systemd, /var/tmp, /var/log/journal; the root file system
#     is read-only in this namespace (only) apart from /tmp and the overlays.
#  5. systemd sees a pure cgroup2 tree rooted at our delegated subtree (NS_CG2), so its
#     cgroups are created below it and removed with it.
set -euo pipefail

UNITDIR=/usr/lib/systemd/system
KEEP_UNITS=" systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket
 systemd-poweroff.service systemd-halt.service systemd-reboot.service systemd-exit.service "
# Targets masked anyway: isolating to one of these would stop everything.
MASK_TARGETS=" emergency.target rescue.target kexec.target initrd.target initrd-fs.target
 initrd-root-device.target initrd-root-fs.target initrd-switch-root.target initrd-usr-fs.target "
DROP_CAPS="-sys_module,-sys_time,-net_admin,-audit_control,-audit_write,-audit_read"

[[ $$ == 1 ]] || { echo "systemd_ns_init.sh: must be PID 1 of a new pid namespace" >&2; exit 1; }
: "${NS_STATE:?}" "${NS_CG2:?}" "${NS_CG2MNT:?}"

# -n everywhere: libmount must not write /run/mount/utab on the host before /run is private.
mount -n --make-rprivate /
mount -n -t tmpfs -o mode=0755,nosuid,nodev,size=64m gearqueue-run /run
mkdir -p /run/ns/empty /run/ns/cg2 /run/ns/dev

# cgroups: join the delegated subtree, then show systemd the cgroup2 root (a bind, not a
# fresh mount: that would re-apply the host superblock's flags such as nsdelegate).
echo 0 > "$NS_CG2/cgroup.procs"
mount -n --bind "$NS_CG2MNT" /run/ns/cg2
umount -n -R -l /sys/fs/cgroup
mount -n --move /run/ns/cg2 /sys/fs/cgroup

# private /dev
dev=/run/ns/dev
mount -n -t tmpfs -o mode=0755,nosuid,size=4m gearqueue-dev "$dev"
for node in null zero full random urandom tty; do
    : > "$dev/$node"; mount -n --bind "/dev/$node" "$dev/$node"
done
: > "$dev/kmsg"; mount -n --bind "$NS_STATE/kmsg" "$dev/kmsg"   # early PID 1 logs -> a file
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"; ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
mkdir "$dev/pts" "$dev/shm" "$dev/mqueue"
mount -n -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$dev/pts"
ln -s pts/ptmx "$dev/ptmx"
mount -n -t tmpfs -o mode=1777,nosuid,nodev gearqueue-shm "$dev/shm"
mount -n -t mqueue mqueue "$dev/mqueue"
umount -n -R -l /dev
mount -n --move "$dev" /dev

# kernel knobs read-only (a per-mount flag of this namespace; host mounts are untouched)
for knob in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus; do
    [[ -e $knob ]] || continue
    mount -n --bind "$knob" "$knob"; mount -n -o remount,bind,ro "$knob"
done
mount -n -o remount,bind,ro /sys

# overlays before the tmpfs mounts below, which may sit inside them (/etc/systemd/system)
for folder in ${NS_OVERLAY:-}; do
    layer=$NS_STATE/overlay${folder//\//_}
    mkdir -p "$layer/upper" "$layer/work"
    mount -n -t overlay gearqueue-overlay \
        -o "lowerdir=$folder,upperdir=$layer/upper,workdir=$layer/work" "$folder"
done

# the unit set: a boot target, masks for everything the host ships
units=/etc/systemd/system
mount -n -t tmpfs -o mode=0755 gearqueue-units "$units"
cat > "$units/ns-boot.target" <<'EOF'
[Unit]
Description=gearqueue test namespace (basic.target + journald)
Requires=basic.target
Wants=systemd-journald.service
After=basic.target
AllowIsolate=yes
EOF
for path in "$UNITDIR"/* /usr/local/lib/systemd/system/*; do
    [[ -e $path || -L $path ]] || continue
    name=${path##*/}
    [[ -d $path || -e $units/$name || -L $units/$name ]] && continue
    [[ $KEEP_UNITS == *" $name "* || $name == *.slice ]] && continue
    [[ $name == *.target && $MASK_TARGETS != *" $name "* ]] && continue
    ln -s /dev/null "$units/$name"
done

mkdir -p /run/systemd/system-generators /run/systemd/system.conf.d /run/systemd/journald.conf.d
for path in /usr/lib/systemd/system-generators/* /usr/local/lib/systemd/system-generators/* \
            /etc/systemd/system-generators/*; do
    if [[ -e $path ]]; then ln -sf /dev/null "/run/systemd/system-generators/${path##*/}"; fi
done
cat > /run/systemd/system.conf.d/zz-gearqueue-test.conf <<'EOF'
[Manager]
LogTarget=journal-or-kmsg
LogColor=no
ShowStatus=no
DefaultTimeoutStartSec=30s
DefaultTimeoutStopSec=10s
DefaultLimitCORE=0
RuntimeWatchdogSec=0
RebootWatchdogSec=0
KExecWatchdogSec=0
CtrlAltDelBurstAction=none
EOF
cat > /run/systemd/journald.conf.d/zz-gearqueue-test.conf <<'EOF'
[Journal]
Storage=volatile
RuntimeMaxUse=64M
ReadKMsg=no
Audit=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
RateLimitBurst=0
EOF

for folder in /var/lib/systemd /var/tmp /var/log/journal ${NS_TMPFS:-}; do
    [[ -d $folder ]] || continue
    mount -n -t tmpfs -o "mode=$(stat -c %a "$folder")" gearqueue-tmp "$folder"
done
mount -n --bind /tmp /tmp
mount -n -o remount,bind,ro /

exec setpriv --bounding-set "$DROP_CAPS" \
    env -i container=gearqueue-test \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_GENERATOR_PATH=/run/ns/empty SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/ns/empty \
    /lib/systemd/systemd --unit=ns-boot.target
