#!/usr/bin/env bash
# Build a small Linux test guest from Debian packages only.
#
# Outputs (default GUEST_DIR = <repo>/.cache/guest, git-ignored):
#   $GUEST_DIR/vmlinuz      kernel of the package that linux-image-cloud-amd64 depends on
#   $GUEST_DIR/initrd.img   gzip'd cpio (newc): busybox-static, virtio/ACPI/pvpanic modules, /init
# On success the two absolute paths are printed on stdout, one per line (kernel first);
# progress goes to stderr. If both outputs exist and are newer than this script, nothing is
# rebuilt. Usage: scripts/build-guest.sh [--force]
#
# Guest behaviour (boot with -append "console=ttyS0 quiet ..."):
#   - loads evdev, button, virtio_ring, virtio, virtio_pci_modern_dev, virtio_pci_legacy_dev,
#     virtio_pci, virtio_blk, pvpanic, pvpanic-pci, failover, net_failover, virtio_net
#     (then the vsock modules), skipping any that are absent;
#   - eth0 (if present): 10.0.2.15/24, default route via 10.0.2.2 (QEMU user networking);
#     busybox httpd on port 80 serves /www/index.html ("plasmavmc test guest");
#   - ACPI power button (QMP system_powerdown) -> sync; poweroff -f (QEMU exits);
#   - prints the line PLASMAVMC-GUEST-READY on /dev/console when init is done;
#   - then runs a root shell (prompt "# ") on the console, respawned forever.
#   Kernel command line switches:
#     plasma.powerdown=ignore   no acpid: ACPI powerdown requests are ignored
#     plasma.poweroff=now       poweroff -f right after the ready line
#     plasma.panic=now          kernel panic (sysrq c) right after the ready line
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force|-f) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-guest: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT")/.." && pwd)
GUEST_DIR=${GUEST_DIR:-$REPO_ROOT/.cache/guest}
# Fixed timestamp for every file in the initramfs, so the build is reproducible byte for byte.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
export LC_ALL=C
umask 022
META_PACKAGE=linux-image-cloud-amd64

log() { echo "build-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$GUEST_DIR"
GUEST_DIR=$(cd "$GUEST_DIR" && pwd)
KERNEL_OUT=$GUEST_DIR/vmlinuz
INITRD_OUT=$GUEST_DIR/initrd.img

up_to_date() {
    [[ $FORCE == 0 && -s $KERNEL_OUT && -s $INITRD_OUT && $KERNEL_OUT -nt $SCRIPT && $INITRD_OUT -nt $SCRIPT ]]
}
print_outputs() { printf '%s\n%s\n' "$KERNEL_OUT" "$INITRD_OUT"; }

if up_to_date; then print_outputs; exit 0; fi

# One build at a time per GUEST_DIR; a waiter reuses what the first one built.
exec 9>"$GUEST_DIR/.build.lock"
flock 9
if up_to_date; then print_outputs; exit 0; fi

# apt-get update/install need root: run them through sudo when not root.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        env DEBIAN_FRONTEND=noninteractive "$@"
    elif command -v sudo >/dev/null; then
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    else
        die "not root and no sudo: cannot run $*"
    fi
}

APT_UPDATED=0
apt_update() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "running apt-get update"
        as_root apt-get update -qq >&2
        APT_UPDATED=1
    fi
}

# --- build dependencies -----------------------------------------------------------------
pkg_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}
missing=()
pkg_installed busybox-static || missing+=(busybox-static)
pkg_installed cpio || missing+=(cpio)
command -v gzip >/dev/null || missing+=(gzip)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if ! as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
        apt_update
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
fi
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing after installing busybox-static"
APPLETS=$("$BUSYBOX" --list)
for applet in sh acpid httpd ip insmod setsid cttyhack poweroff mount hostname; do
    grep -qx "$applet" <<<"$APPLETS" || die "busybox lacks the '$applet' applet"
done

# --- kernel package ---------------------------------------------------------------------
kernel_package() {
    { apt-cache depends "$META_PACKAGE" 2>/dev/null || true; } |
        awk '!found && $1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; found = 1 }'
}
KPKG=$(kernel_package)
if [[ -z $KPKG ]]; then
    apt_update
    KPKG=$(kernel_package)
    [[ -n $KPKG ]] || die "apt-cache cannot resolve $META_PACKAGE to a linux-image-*-cloud-amd64 package"
fi

WORK=$(mktemp -d /tmp/guestbuild-XXXXXX)
trap 'rm -rf "$WORK"; rm -f "$KERNEL_OUT.tmp" "$INITRD_OUT.tmp"' EXIT

DL_OPTS=()
# apt drops to user _apt for downloads, which cannot write to a root-only mktemp dir.
[[ $EUID -eq 0 ]] && DL_OPTS=(-o APT::Sandbox::User=root)
log "downloading $KPKG"
mkdir "$WORK/deb"
if ! (cd "$WORK/deb" && apt-get download -qq "${DL_OPTS[@]}" "$KPKG" >&2); then
    # Stale package lists name a version the mirror no longer has.
    [[ $APT_UPDATED == 0 ]] || die "apt-get download $KPKG failed"
    apt_update
    KPKG=$(kernel_package)
    (cd "$WORK/deb" && apt-get download -qq "${DL_OPTS[@]}" "$KPKG" >&2) || die "apt-get download $KPKG failed"
fi
debs=("$WORK"/deb/*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || die "expected one .deb in $WORK/deb"
dpkg-deb -x "${debs[0]}" "$WORK/kernel"

vmlinuz=("$WORK"/kernel/boot/vmlinuz-*)
[[ ${#vmlinuz[@]} -eq 1 && -f ${vmlinuz[0]} ]] || die "no single boot/vmlinuz-* in $KPKG"
KVER=${vmlinuz[0]##*/vmlinuz-}
MODSRC=$WORK/kernel/lib/modules/$KVER
[[ -d $MODSRC ]] || die "no lib/modules/$KVER in $KPKG"

# --- initramfs tree ---------------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,www,etc/acpi/PWRF,lib/modules}
mkdir -p "$ROOT/var/log"
ln -s ../run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
# Symlinks for every applet (same layout as `busybox --install -s`, done on the host).
"$BUSYBOX" --list-full | while read -r path; do
    [[ -e $ROOT/$path || -L $ROOT/$path ]] && continue
    rel=$(realpath -m --relative-to="$(dirname "/$path")" /bin/busybox)
    ln -s "$rel" "$ROOT/$path"
done

# Modules, in load order (dependencies first). The vsock ones are extras for hosts with vsock.
MODULES=(evdev button virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    virtio_blk pvpanic pvpanic-pci failover net_failover virtio_net
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)
for m in "${MODULES[@]}"; do
    src=$(find "$MODSRC/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n 1)
    if [[ -z $src ]]; then
        grep -q "/$m.ko\$" "$MODSRC/modules.builtin" 2>/dev/null || log "warning: module $m not in $KPKG"
        continue
    fi
    dst=$ROOT/lib/modules/$m.ko
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) "$BUSYBOX" xz -dc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    esac
    chmod 0644 "$dst"
done
echo "$KVER" >"$ROOT/etc/kernel-version"

cat >"$ROOT/www/index.html" <<'EOF'
<html><body>plasmavmc test guest</body></html>
EOF

cat >"$ROOT/etc/profile" <<'EOF'
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
export PS1='# '
cd /root
EOF
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
echo 'plasmavmc-guest' >"$ROOT/etc/hostname"
echo 'nameserver 10.0.2.3' >"$ROOT/etc/resolv.conf"

# PID 1 is /init (a shell script), not busybox init: busybox poweroff/reboot/halt without -f
# only signal PID 1, which ignores the signal. So these sync and act at once instead: as
# scripts in /sbin for callers that exec them by path (the ACPI handler), and as shell functions
# in /etc/profile, because this busybox's ash runs its own applets before searching PATH.
for cmd in poweroff reboot halt; do
    rm -f "$ROOT/sbin/$cmd"
    printf '#!/bin/sh\nsync\nexec /bin/busybox %s -f\n' "$cmd" >"$ROOT/sbin/$cmd"
    chmod 0755 "$ROOT/sbin/$cmd"
    echo "$cmd() { sync; busybox $cmd -f; }" >>"$ROOT/etc/profile"
done

# busybox acpid maps the power button to the event PWRF/00000080 and runs this file.
cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
exec /sbin/poweroff
EOF
chmod 0755 "$ROOT/etc/acpi/PWRF/00000080"

cat >"$ROOT/init" <<EOF
#!/bin/sh
# plasmavmc test guest init (generated by scripts/build-guest.sh)
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
MODULES="${MODULES[*]}"
EOF
cat >>"$ROOT/init" <<'EOF'

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The archive has no /dev/console node, so the kernel started us with no stdin/stdout/stderr.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
echo 1 >/proc/sys/kernel/printk
echo 1 >/proc/sys/kernel/sysrq
hostname -F /etc/hostname

POWERDOWN=acpi
POWEROFF=
PANIC=
read -r CMDLINE </proc/cmdline
for arg in $CMDLINE; do
    case "$arg" in
        plasma.powerdown=ignore) POWERDOWN=ignore ;;
        plasma.poweroff=now) POWEROFF=now ;;
        plasma.panic=now) PANIC=now ;;
    esac
done

for m in $MODULES; do
    [ -f "/lib/modules/$m.ko" ] && insmod "/lib/modules/$m.ko" >/dev/null 2>&1
done

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2 dev eth0
fi
httpd -p 80 -h /www

if [ "$POWERDOWN" = acpi ]; then
    # -l: the default log file /var/log/acpid.log cannot be opened, and acpid then exits silently.
    acpid -l /dev/null
fi

echo PLASMAVMC-GUEST-READY >/dev/console

if [ "$POWEROFF" = now ]; then
    sync
    poweroff -f
fi
if [ "$PANIC" = now ]; then
    echo c >/proc/sysrq-trigger
fi

# Root shell on the console, respawned forever. cttyhack opens the real console device
# (ttyS0 with console=ttyS0) and makes it the controlling tty of the new session.
while true; do
    setsid cttyhack sh -l
    sleep 0.2
done
EOF
chmod 0755 "$ROOT/init"

# --- pack -------------------------------------------------------------------------------
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
install -m 0644 "${vmlinuz[0]}" "$WORK/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$WORK/vmlinuz"
(cd "$ROOT" && find . | sort | cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9 -n) >"$WORK/initrd.img"

mv -f "$WORK/vmlinuz" "$KERNEL_OUT.tmp"
mv -f "$WORK/initrd.img" "$INITRD_OUT.tmp"
# Fresh mtimes (newer than this script) mark the outputs as up to date.
touch "$KERNEL_OUT.tmp" "$INITRD_OUT.tmp"
mv -f "$KERNEL_OUT.tmp" "$KERNEL_OUT"
mv -f "$INITRD_OUT.tmp" "$INITRD_OUT"
log "built from $KPKG ($KVER): kernel $(stat -c %s "$KERNEL_OUT") bytes, initrd $(stat -c %s "$INITRD_OUT") bytes"
print_outputs
