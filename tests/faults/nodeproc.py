"""One department node in a process of its own (for kill -9 and SIGSTOP): run as
``python -m tests.faults.nodeproc '<json>'``; prints ``PORT <n>`` once serving."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcredit.common.departments import BY_ID
from fedcredit.common.tls import TlsFiles
from fedcredit.consent.verify import remote_verifier
from fedcredit.ledger.log import Log
from fedcredit.node.engine import FeatureEngine
from fedcredit.node.service import FeatureServicer, build_node_server
from fedcredit.node.store import NodeStore


def main(args: dict[str, str]) -> None:
    dep = args["department"]
    d = BY_ID[dep]
    tmp = Path(args["dir"])
    tls = TlsFiles(Path(args["ca"]), Path(args["cert"]), Path(args["key"]))
    store = NodeStore(f"sqlite:///{tmp / f'node-{dep}.sqlite'}", dep)
    store.create_schema()
    if not store_loaded(tmp, dep):
        store.load(Path(args["city"]))
        (tmp / f"node-{dep}.loaded").touch()
    key_file = tmp / f"disclosures-{dep}.key"  # the same log key after a restart
    if not key_file.exists():
        key_file.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
    log = Log.open(
        f"sqlite:///{tmp / f'disclosures-{dep}.sqlite'}",
        Ed25519PrivateKey.from_private_bytes(key_file.read_bytes()),
        f"{d.org_id}/disclosures",
    )
    verifier = remote_verifier(
        consent_address=args["consent"], tls=tls, server_org="consent-service",
        issuer=args["issuer"],
    )  # fmt: skip
    servicer = FeatureServicer(
        node_org=d.org_id, engine=FeatureEngine(store), verifier=verifier, disclosures=log
    )
    server = build_node_server(servicer=servicer, address=f"127.0.0.1:{args['port']}", tls=tls)
    server.start()
    print(f"PORT {server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0.2)


def store_loaded(tmp: Path, dep: str) -> bool:
    return (tmp / f"node-{dep}.loaded").exists()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
