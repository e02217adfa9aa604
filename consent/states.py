"""The consent state machine: states, who may do what, and the status-list value of each state
(:mod:`consent.lifecycle` walks it, one transaction per step).

::

    request ──► PENDING ──approve──► ACTIVE ◄──resume── PAUSED
                  │                    │  └────pause─────►  │
                reject              revoke / narrow       revoke / narrow
                  ▼                    ▼                    ▼
               REJECTED             REVOKED ◄───────────────┘
    grant ─────────────────────────► ACTIVE
    (time) PENDING / ACTIVE / PAUSED ──► EXPIRED

Narrowing revokes the consent and creates its replacement in the same state.
REJECTED, REVOKED and EXPIRED are terminal.
"""

from __future__ import annotations

from enum import StrEnum

from fedcredit.consent.errors import TransitionNotAllowed
from fedcredit.consent.statuslist import INVALID, SUSPENDED, VALID


class State(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    REJECTED = "REJECTED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


class Action(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    PAUSE = "pause"
    RESUME = "resume"
    REVOKE = "revoke"
    NARROW = "narrow"
    EXPIRE = "expire"


TERMINAL = frozenset({State.REJECTED, State.REVOKED, State.EXPIRED})

TRANSITIONS: dict[tuple[State, Action], State] = {
    (State.PENDING, Action.APPROVE): State.ACTIVE,
    (State.PENDING, Action.REJECT): State.REJECTED,
    (State.ACTIVE, Action.PAUSE): State.PAUSED,
    (State.PAUSED, Action.RESUME): State.ACTIVE,
    (State.ACTIVE, Action.REVOKE): State.REVOKED,
    (State.PAUSED, Action.REVOKE): State.REVOKED,
    (State.ACTIVE, Action.NARROW): State.REVOKED,
    (State.PAUSED, Action.NARROW): State.REVOKED,
    (State.PENDING, Action.EXPIRE): State.EXPIRED,
    (State.ACTIVE, Action.EXPIRE): State.EXPIRED,
    (State.PAUSED, Action.EXPIRE): State.EXPIRED,
}

# The event each transition writes (ledger kind `consent_event`, payload.event).
EVENT_OF: dict[Action, str] = {
    Action.APPROVE: "granted",
    Action.REJECT: "rejected",
    Action.PAUSE: "paused",
    Action.RESUME: "resumed",
    Action.REVOKE: "revoked",
    Action.NARROW: "revoked",
    Action.EXPIRE: "expired",
}


def next_state(state: State, action: Action) -> State:
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        allowed = sorted(a.value for (s, a) in TRANSITIONS if s == state and a != Action.EXPIRE)
        raise TransitionNotAllowed(
            f"cannot {action.value} a consent that is {state.value}; "
            f"allowed: {', '.join(allowed) or 'nothing, it is final'}",
            state=state.value,
            action=action.value,
        ) from None


def sources_of(action: Action) -> list[State]:
    return [s for (s, a) in TRANSITIONS if a == action]


def status_value(state: State) -> int:
    """The 2-bit status-list value of a consent in ``state``."""
    if state == State.ACTIVE:
        return VALID
    if state == State.PAUSED:
        return SUSPENDED
    return INVALID if state in TERMINAL else VALID
