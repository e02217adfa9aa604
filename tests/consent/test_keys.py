"""Key rotation rules (consent.keys), on a frozen clock: no service, no store."""

from __future__ import annotations

from fedcredit.consent import keys as K

RETENTION = 3_600
LEAD = 600


def _first(now: int) -> K.KeyRecord:
    new, changed = K.rotate([], now=now, publish_lead=0, retention=RETENTION, immediate=True)
    assert changed == []
    return new


def _apply(
    keys: list[K.KeyRecord], new: K.KeyRecord, changed: list[K.KeyRecord]
) -> list[K.KeyRecord]:
    by_kid = {k.kid: k for k in keys}
    by_kid.update({k.kid: k for k in changed})
    by_kid[new.kid] = new
    return list(by_kid.values())


def test_scheduled_rotation_publishes_before_it_signs() -> None:
    a = _first(1_000)
    new, changed = K.rotate([a], now=1_000, publish_lead=LEAD, retention=RETENTION)
    keys = _apply([a], new, changed)
    assert new.state(1_000) == "next"
    assert K.signing_key(keys, 1_000) == changed[0]  # the old key, now with a retirement date
    assert changed[0].retired_at == 1_000 + LEAD
    assert K.signing_key(keys, 1_000 + LEAD) == new


def test_immediate_rotation_in_the_same_second_signs_with_the_new_key() -> None:
    # The CI failure this guards: first key, scheduled rotation and immediate rotation
    # all within one whole second tied on (activate_at, created_at).
    a = _first(1_000)
    b, changed = K.rotate([a], now=1_000, publish_lead=LEAD, retention=RETENTION)
    keys = _apply([a], b, changed)
    c, changed2 = K.rotate(keys, now=1_000, publish_lead=LEAD, retention=RETENTION, immediate=True)
    keys = _apply(keys, c, changed2)
    assert K.signing_key(keys, 1_000) == c
    states = {k.kid: k.state(1_000) for k in keys}
    assert states == {a.kid: "retired", b.kid: "retired", c.kid: "active"}
    # The never-used next key does not come back to sign when its old date arrives.
    assert K.signing_key(keys, 1_000 + LEAD) == c


def test_immediate_rotation_pulls_a_later_retirement_forward() -> None:
    a = _first(1_000)
    b, changed = K.rotate([a], now=1_500, publish_lead=LEAD, retention=RETENTION)
    keys = _apply([a], b, changed)
    c, changed2 = K.rotate(keys, now=1_600, publish_lead=LEAD, retention=RETENTION, immediate=True)
    retired = {k.kid: k.retired_at for k in changed2}
    assert retired == {a.kid: 1_600, b.kid: 1_600}
    assert all(k.expires_at == 1_600 + RETENTION for k in changed2)
    assert K.signing_key(_apply(keys, c, changed2), 1_600) == c


def test_expired_keys_are_left_alone() -> None:
    a = _first(1_000)
    b, changed = K.rotate([a], now=1_000, publish_lead=0, retention=10, immediate=True)
    keys = _apply([a], b, changed)
    c, changed2 = K.rotate(keys, now=5_000, publish_lead=LEAD, retention=RETENTION, immediate=True)
    assert [k.kid for k in changed2] == [b.kid]
    assert K.signing_key(_apply(keys, c, changed2), 5_000) == c
