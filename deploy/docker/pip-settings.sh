#!/usr/bin/env bash
# The host's pip settings as build secrets for the image's build stage:
#   OUT/pipconf  a pip.conf with the host's index-url, extra-index-url and trusted-host
#                (from `pip config list`, which also reads PIP_* variables), timeout and retries
#   OUT/pipcert  the certificate bundle the host's pip trusts
# Entries that name a path on the host (file:// indexes, find-links folders, constraint
# files) cannot be seen inside the build and are left out, each named on stderr.
set -euo pipefail
OUT=${1:?usage: pip-settings.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
$PY -m pip config list 2>/dev/null | $PY -c '
import os, shlex, sys
out = sys.argv[1]
conf: dict[str, str] = {}
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    name = key.split(".", 1)[-1]
    conf[name] = shlex.split(value)[0] if value else ""   # later scopes (env) win
def urls(v: str) -> list[str]:
    keep = []
    for u in v.split():
        if u.startswith(("http://", "https://")):
            keep.append(u)
        else:
            print(f"pip-settings: {u} is a path on the host; not used in the image build", file=sys.stderr)
    return keep
lines = ["[global]"]
idx = urls(conf.get("index-url", ""))
if idx:  # otherwise the default index of pip, as on the host
    lines.append(f"index-url = {idx[0]}")
extra = urls(conf.get("extra-index-url", ""))
if extra:
    lines.append("extra-index-url = " + " ".join(extra))
if conf.get("trusted-host"):
    lines.append("trusted-host = " + conf["trusted-host"])
for k in ("find-links", "constraint"):
    if conf.get(k):
        print(f"pip-settings: {k} {conf[k]} is a path on the host; not used in the image build", file=sys.stderr)
lines.append("timeout = " + conf.get("default-timeout", conf.get("timeout", "60")))
lines.append("retries = 5")
lines.append("cert = /run/secrets/pipcert")
cert = conf.get("cert") or os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
open(os.path.join(out, "pipconf"), "w").write("\n".join(lines) + "\n")
open(os.path.join(out, "pipcert.src"), "w").write(cert)
' "$OUT"
cp "$(cat "$OUT/pipcert.src")" "$OUT/pipcert"
rm -f "$OUT/pipcert.src"
