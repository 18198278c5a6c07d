#!/usr/bin/env bash
# Make this machine able to build and run the madrec images without a Docker engine:
#   - Debian's podman, buildah, runc (and debootstrap for the base image), installed when missing;
#   - the base image $BASE_IMAGE (default localhost/python:3.11-bookworm): no container registry
#     is reachable here, so it is made from Debian packages with debootstrap (bookworm's
#     python3 is 3.11, as in the official python:3.11-*-bookworm images that users build on);
#   - podman's settings through CONTAINERS_CONF (docker/podman/containers.conf).
# Idempotent: a second run installs nothing and keeps the existing base image.
# Needs root (apt-get, debootstrap). Usage: docker/podman/setup.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BASE_IMAGE="${BASE_IMAGE:-localhost/python:3.11-bookworm}"
SUITE="${SUITE:-bookworm}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
NICE=(nice -n 19)
command -v ionice >/dev/null && NICE+=(ionice -c3)

say() { echo "podman-setup: $*"; }

need=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if ((${#need[@]})); then
    say "installing ${need[*]}"
    "${NICE[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

if podman image exists "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE present"
    exit 0
fi

# The mirror apt already uses (deb822 or one-line sources), so debootstrap needs no other host.
mirror="$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -m1 -E '/debian/?( |$)' | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//' || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/madrec-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
say "debootstrap $SUITE from $mirror (a few minutes)"
"${NICE[@]}" debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -30 "$root.log"; exit 1; }
rm -f "$root.log"
# As in the official image: `python` on PATH, and this machine's CA bundle, so pip inside a
# build reaches the package registry through this network's TLS proxy.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
say "importing as $BASE_IMAGE"
tar -C "$root" -c . | "${NICE[@]}" podman import \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
podman image exists "$BASE_IMAGE"
say "base image $BASE_IMAGE ready ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
