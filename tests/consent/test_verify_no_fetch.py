"""``verify(fetch=False)`` (the coordinator checks a Score's token on its event loop with
it): the same answer as a normal verify when the key set and the status list held are
fresh, and FetchNeeded -- nothing fetched, nothing decided, nothing counted -- whenever a
normal verify would first have to fetch something. A normal verify then does it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcredit.consent import errors as E
from fedcredit.consent.service import stop
from fedcredit.consent.verify import FetchNeeded
from tests.conftest import Pki
from tests.consent.conftest import BANK, enterprise_code
from tests.consent.test_service import bank_args, start, terms


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_no_fetch_verifies_from_fresh_caches_and_refuses_to_fetch_otherwise(
    pki: Pki, tmp_path: Path
) -> None:
    import time

    service, server = start(pki, tmp_path)
    clock = Clock(time.time())
    v = service.verifier(subscribe=False, clock=clock, jwks_ttl=300.0, status_ttl=60.0)
    try:
        ent = enterprise_code(31)
        g = service.client(ent, "enterprise").grant(terms(ent))
        tok = service.client(BANK).token(g.consent_id).token or ""
        args = bank_args(pki, ent)
        # Nothing held yet: a no-fetch verify fetches nothing and decides nothing.
        with pytest.raises(FetchNeeded):
            v.verify(tok, fetch=False, **args)  # type: ignore[arg-type]
        assert (v.keys.fetches, v.status.fetches) == (0, 0)
        warm = v.verify(tok, **args)  # type: ignore[arg-type]
        fetched = (v.keys.fetches, v.status.fetches)
        assert v.verify(tok, fetch=False, **args) == warm  # type: ignore[arg-type]
        assert (v.keys.fetches, v.status.fetches) == fetched
        # The status list is due (past its ttl): refused to fetch, then fetched normally.
        clock.t += 61
        with pytest.raises(FetchNeeded):
            v.verify(tok, fetch=False, **args)  # type: ignore[arg-type]
        assert (v.keys.fetches, v.status.fetches) == fetched
        v.verify(tok, **args)  # type: ignore[arg-type]
        assert v.status.fetches == fetched[1] + 1
        # Counting a use may call the service: never without fetching.
        with pytest.raises(FetchNeeded):
            v.verify(tok, fetch=False, count_use=True, **args)  # type: ignore[arg-type]
        # A refusal is still a refusal (decided from what is held).
        service.client(ent, "enterprise").revoke(g.consent_id)
        v.status.refresh()
        with pytest.raises(E.ConsentRevoked):
            v.verify(tok, fetch=False, **args)  # type: ignore[arg-type]
    finally:
        v.close()
        stop(server, service.authority)  # type: ignore[arg-type]
