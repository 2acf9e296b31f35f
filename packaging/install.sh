#!/bin/sh
# Install gpuctl from this offline bundle, with no network:  sudo ./install.sh [agent] [coordinator] [cli]
# (default: cli). Checks SHA256SUMS first, then installs the .deb files with apt-get, or the .rpm files with
# dnf (or yum, or rpm), from this folder only.
set -eu
cd "$(dirname "$0")"
sha256sum -c --quiet SHA256SUMS
[ $# -gt 0 ] || set -- cli
names=""
for part in "$@"; do
    case $part in
        agent|gpuctl-agent) names="$names gpuctl-agent" ;;
        coordinator|gpuctl-coordinator) names="$names gpuctl-coordinator" ;;
        cli|gpuctl) names="$names gpuctl" ;;
        *) echo "usage: install.sh [agent] [coordinator] [cli]" >&2; exit 2 ;;
    esac
done
files=""
if command -v apt-get >/dev/null 2>&1; then
    for name in $names; do files="$files $PWD/$(ls "$name"_*.deb)"; done
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y $files
elif command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1; then
    for name in $names; do files="$files $(ls ./"$name"-[0-9]*.rpm)"; done
    # shellcheck disable=SC2086
    "$(command -v dnf || command -v yum)" install -y --disablerepo='*' $files
elif command -v rpm >/dev/null 2>&1; then
    for name in $names; do files="$files $(ls ./"$name"-[0-9]*.rpm)"; done
    # shellcheck disable=SC2086
    rpm -Uvh $files
else
    echo "install.sh: neither apt-get nor dnf, yum or rpm found" >&2
    exit 1
fi
