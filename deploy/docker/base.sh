#!/usr/bin/env bash
# fedcredit-base: a Debian root file system made by debootstrap (minbase) from the
# same Debian mirror and suite the host's apt uses, imported with `docker import`.
# No registry is contacted. The image is tagged with a digest of this recipe (this
# file, the suite, the mirror and the package list), so it is rebuilt only when the
# recipe changes; `fedcredit-base:latest` points at the current one.
#
#   deploy/docker/base.sh            build when missing, print the tag
#   FORCE=1 deploy/docker/base.sh    rebuild
set -euo pipefail
DOCKER=${DOCKER:-docker}
# What every fedcredit image needs at run time: Python 3.11 (bookworm's), venv for the
# build stage's virtualenv, CA certificates, libgomp1 (LightGBM), tini as PID 1 (signals
# and zombie reaping for the services' worker processes).
PACKAGES=python3,python3-venv,ca-certificates,libgomp1,tini

# The host's apt source: the first deb.sources / sources.list entry for Debian.
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '/^URIs:/ {print $2; exit}' "$f" && return 0
    done
    awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}
host_suite() { . /etc/os-release && echo "${VERSION_CODENAME:?}"; }

MIRROR=${MIRROR:-$(host_mirror)}
SUITE=${SUITE:-$(host_suite)}
[ -n "$MIRROR" ] || { echo "base.sh: no Debian mirror found in the host's apt sources" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }

RECIPE=$( { cat "$0"; echo "$SUITE $MIRROR $PACKAGES"; } | sha256sum | cut -c1-12)
TAG="fedcredit-base:$RECIPE"
if [ -z "${FORCE:-}" ] && $DOCKER image inspect "$TAG" >/dev/null 2>&1; then
    $DOCKER tag "$TAG" fedcredit-base:latest
    echo "$TAG"
    exit 0
fi

ROOT=$(mktemp -d /var/tmp/fedcredit-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "base.sh: debootstrap --variant=minbase $SUITE from $MIRROR ($PACKAGES)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >&2
# The image's apt uses the same mirror (the postgres stage installs from it).
echo "deb $MIRROR $SUITE main" > "$ROOT/etc/apt/sources.list"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* \
    "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" --numeric-owner -c . | $DOCKER import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.fedcredit.base.recipe=$RECIPE" \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >&2
$DOCKER tag "$TAG" fedcredit-base:latest
echo "$TAG"
