#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# Build (or reuse) the Debian 12 root filesystem the systemd tests boot with
# systemd-nspawn (test/systemd/*.test.ts). Prints its directory.
#
# The cache is keyed by the package list: /var/cache/bootc-prestage-tests/
# rootfs-<sha256 of PACKAGES>. It is built in a temporary directory next to
# it and renamed into place only when mmdebstrap succeeded, so a killed
# build never leaves a half cache (a stale temporary directory of a killed
# build is removed by the next build). Tests never write to the cache: they
# boot an overlay of it.
#
# BOOTC_PRESTAGE_TEST_CACHE overrides the cache directory.
set -eu

# What the tests need inside: systemd as PID 1, the system bus, real
# ostree (sysroots made with ostree admin), procps for pgrep, python3
# for JSON checks, podman (the hardening test's hook loads an image with
# it; mmdebstrap installs no Recommends, so this is podman with conmon,
# crun and containers-common only). Keep sorted; changing it builds a new
# cache.
PACKAGES="dbus,ostree,podman,procps,python3-minimal,systemd,systemd-sysv"

cache=${BOOTC_PRESTAGE_TEST_CACHE:-/var/cache/bootc-prestage-tests}
key=$(printf '%s\n' "bookworm $PACKAGES" | sha256sum | cut -c1-16)
dir="$cache/rootfs-$key"
if [ -d "$dir" ] && [ -f "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi
mkdir -p "$cache"
# Serialize concurrent builders; the second one finds the cache complete.
exec 9>"$cache/.lock"
flock 9
if [ -d "$dir" ] && [ -f "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi
for stale in "$cache"/tmp-rootfs-*; do
    [ -e "$stale" ] && rm -rf "$stale"
done
tmp="$cache/tmp-rootfs-$key-$$"
mkdir "$tmp"
mmdebstrap --quiet --variant=apt --include="$PACKAGES" bookworm "$tmp" >&2
touch "$tmp/.complete"
mv "$tmp" "$dir"
echo "$dir"
