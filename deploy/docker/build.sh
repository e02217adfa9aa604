#!/usr/bin/env bash
# `make image`: fedcredit-base (debootstrap + docker import, cached by recipe), then the
# fedcredit image (runtime stage) and fedcredit-postgres from the multi-stage Dockerfile.
# Needs a running daemon (deploy/docker/dockerd.sh start) and root for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Debian's docker client speaks BuildKit itself (a newer client elsewhere on PATH may
# need a buildx plugin this machine does not have).
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}
export DOCKER
T0=$(date +%s)
BASE=$(deploy/docker/base.sh)
echo "base image: $BASE ($(( $(date +%s) - T0 )) s)"
SECRETS=build/docker/pip
deploy/docker/pip-settings.sh "$SECRETS"
# The build reaches the package index with the host's network; containers never get a
# bridge here (the daemon runs without one).
DEPENDENCIES=$(python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
build() {
    DOCKER_BUILDKIT=1 $DOCKER build --network host --progress plain \
        --build-arg BASE="$BASE" --build-arg DEPENDENCIES="$DEPENDENCIES" \
        --secret id=pipconf,src="$SECRETS/pipconf" --secret id=pipcert,src="$SECRETS/pipcert" \
        "$@" . > "build/docker/build-$2.log" 2>&1 || {
            echo "docker build $* failed; last lines of build/docker/build-$2.log:" >&2
            tail -n 30 "build/docker/build-$2.log" >&2
            exit 1
        }
}
build --target runtime -t fedcredit:latest
echo "fedcredit:latest built ($(( $(date +%s) - T0 )) s)"
build --target postgres -t fedcredit-postgres:latest
echo "fedcredit-postgres:latest built ($(( $(date +%s) - T0 )) s)"
$DOCKER image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^fedcredit(-base|-postgres)?:latest ' || true
