#!/usr/bin/env bash
# Install the system packages hotluks and its test suite need (Debian 12, root).
# Enables bookworm-backports from the same mirror as the machine's Debian source.
set -euo pipefail

log() { printf 'setup-system: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }

debian_uri() {
    # deb822 sources first, then legacy one-line sources.
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (ok && u) { print u; exit } ok=0; u="" ; next }
            /^URIs:/   { u=$2 }
            /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="bookworm") ok=1 }
            END        { if (ok && u) print u }' "$f" | head -n1)
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        uri=$(awk '$1=="deb" && $3=="bookworm" { print $2; exit }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
}

backports=/etc/apt/sources.list.d/hotluks-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(debian_uri)
    [ -n "$uri" ] || { log "cannot find the Debian bookworm source URI"; exit 1; }
    log "enabling bookworm-backports from $uri"
    cat >"$backports" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    need_update=1
fi

# deb-src lines (one shared file, hotluks-src.sources): libvirt's source from bookworm-backports
# gives the integration tests libvirt's own <disk> test data. Idempotent: an existing file only
# gains the suites it lacks, so other callers can add theirs (e.g. bookworm for cryptsetup).
ensure_deb_src() {
    local f=/etc/apt/sources.list.d/hotluks-src.sources suite uri
    if [ ! -e "$f" ]; then
        uri=$(debian_uri)
        [ -n "$uri" ] || { log "cannot find the Debian source URI for deb-src"; return 0; }
        log "enabling deb-src ($*) from $uri"
        printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
            "$uri" "$*" /usr/share/keyrings/debian-archive-keyring.gpg >"$f"
        need_update=1
        return 0
    fi
    for suite in "$@"; do
        if ! grep -Eq "^Suites:(.*[[:space:]])?${suite}([[:space:]]|\$)" "$f"; then
            sed -i "s/^Suites:.*/& ${suite}/" "$f"
            need_update=1
        fi
    done
}
ensure_deb_src bookworm-backports
ensure_deb_src bookworm

stamp=/var/lib/apt/periodic/hotluks-update-stamp
if [ "${need_update:-0}" = 1 ] || [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
    apt-get update -qq
    mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi

export DEBIAN_FRONTEND=noninteractive
# Daemons are started by hotluks' fixtures, never by package scripts.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi

BACKPORTS_PKGS=(
    qemu-system-x86 qemu-utils qemu-block-extra
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-secret libvirt-clients libvirt-dev
)
BASE_PKGS=(
    cryptsetup-bin busybox-static cpio xz-utils kmod openssl tgt
    python3-botan jq dpkg-dev
    pkg-config gcc python3-venv
    ceph-mon ceph-osd ceph-common
)
missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}
mapfile -t todo_bp < <(missing "${BACKPORTS_PKGS[@]}")
mapfile -t todo_base < <(missing "${BASE_PKGS[@]}")
if [ "${#todo_bp[@]}" -gt 0 ]; then
    log "installing from bookworm-backports: ${todo_bp[*]}"
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${todo_bp[@]}" >/dev/null
fi
if [ "${#todo_base[@]}" -gt 0 ]; then
    log "installing: ${todo_base[*]}"
    apt-get install -y -qq --no-install-recommends "${todo_base[@]}" >/dev/null
fi
[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d && trap - EXIT
log "qemu: $(qemu-system-x86_64 --version | head -n1)"
