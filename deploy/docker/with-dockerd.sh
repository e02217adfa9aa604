#!/usr/bin/env bash
# Run a command with a Docker daemon: start one when none answers, and stop it afterwards
# only if this script started it.   deploy/docker/with-dockerd.sh CMD [ARGS...]
set -euo pipefail
here=$(dirname "$0")
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}
export DOCKER
state=$("$here/dockerd.sh" start)
[ "$state" = started ] && echo "dockerd started for this run (stopped at the end)" >&2
rc=0
"$@" || rc=$?
if [ "$state" = started ]; then "$here/dockerd.sh" stop >/dev/null; fi
exit $rc
