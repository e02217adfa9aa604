"""The consent token's shape: header, claims and its RFC 9396 authorization detail.

A consent token is a JWS (RFC 7515) in compact form::

    header  {"alg": "EdDSA", "typ": "consent+jwt", "kid": "<RFC 7638 thumbprint>"}
    payload {"iss", "sub": <credit code>, "aud": <bank org id>, "iat", "nbf", "exp", "jti",
             "authorization_details": [{"type": "fedcredit_consent", "purpose": ...,
                                        "scope": [categories] | ["score_only"],
                                        "nodes": [node org ids], "max_uses": n,
                                        "retention_days": d, "consent_id": ...}],
             "cnf": {"x5t#S256": <bank certificate thumbprint>},          # RFC 8705 §3.1
             "status": {"status_list": {"idx": i, "uri": <list uri>}}}    # status-list draft §6

Everything here is pure: building claims, parsing the compact form strictly (one token,
one string: see :func:`split_jws`, :func:`decode_segment`) and checking shapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedcredit.common.departments import BY_CATEGORY, BY_ORG, CATEGORIES, PURPOSES
from fedcredit.consent import errors as E
from fedcredit.consent.errors import ClaimInvalid, ClaimMissing
from fedcredit.consent.keys import KID_RE
from fedcredit.consent.statuslist import b64url_decode

CONSENT_TYP = "consent+jwt"
DETAIL_TYPE = "fedcredit_consent"
SCORE_ONLY = "score_only"
ALLOWED_ALGS = frozenset({"EdDSA"})
REQUIRED_CLAIMS = (
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "jti",
    "authorization_details",
    "cnf",
    "status",
)
_REQUIRED = frozenset(REQUIRED_CLAIMS)
_CATEGORY_SET = frozenset(CATEGORIES)
X5T = "x5t#S256"

# Bounds on what a verifier parses before any signature is checked. A consent token is
# about 900 characters, its header under 150; these leave ample room and stop a
# megabyte header or a 50,000-deep nesting from costing anything (or recursing).
MAX_TOKEN_CHARS = 16_384
MAX_HEADER_CHARS = 1_024
MAX_DEPTH = 8  # object -> list -> object -> list is the deepest claim (authorization_details)
SIGNATURE_BYTES = 64  # Ed25519 (RFC 8037 §3.1)
# Header parameters we understand; a `crit` listing anything else is refused.
UNDERSTOOD_CRIT: frozenset[str] = frozenset()
# Registered header parameters (RFC 7515 §4.1) whose value must be a string when present
# (``kid`` too, refused below with its own reason).
_STR_HEADERS = ("alg", "typ", "cty", "jku", "x5u", "x5t", "x5t#S256")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one consent allows: the authorization detail, in Python terms."""

    purpose: str
    categories: frozenset[str]  # empty when score_only
    score_only: bool
    nodes: frozenset[str]
    max_uses: int
    retention_days: int

    def scope_list(self) -> list[str]:
        return [SCORE_ONLY] if self.score_only else sorted(self.categories)

    # The coverage rule, written once: the verifier's step 7 (with its typed refusals)
    # and the coordinator's fan-out plan both ask these.
    def covers_category(self, category: str) -> bool:
        """Whether ``category``'s features may feed a score under this consent (a
        score-only consent covers every category, but releases none)."""
        return self.score_only or category in self.categories

    def covers_node(self, node: str) -> bool:
        return node in self.nodes

    def covers(self, category: str, node: str) -> bool:
        """Whether ``node``'s ``category`` features may feed a score."""
        return covers(self.score_only, self.categories, self.nodes, category, node)


def covers(
    score_only: bool, categories: frozenset[str], nodes: frozenset[str], category: str, node: str
) -> bool:
    """The coverage rule over a consent's scope (:meth:`Grant.covers`), for callers that
    hold the scope without a :class:`Grant` (a verified consent in a hot loop)."""
    return (score_only or category in categories) and node in nodes


def nodes_for(categories: frozenset[str] | None) -> frozenset[str]:
    """The default node org ids serving ``categories`` (all nodes when None = score only)."""
    if categories is None:
        return frozenset(BY_ORG)
    return frozenset(BY_CATEGORY[c].org_id for c in categories)


def authorization_detail(grant: Grant, consent_id: str) -> dict[str, Any]:
    return {
        "type": DETAIL_TYPE,
        "purpose": grant.purpose,
        "scope": grant.scope_list(),
        "nodes": sorted(grant.nodes),
        "max_uses": grant.max_uses,
        "retention_days": grant.retention_days,
        "consent_id": consent_id,
    }


def build_claims(
    *,
    issuer: str,
    enterprise: str,
    bank: str,
    jti: str,
    consent_id: str,
    grant: Grant,
    issued_at: int,
    not_before: int,
    expires_at: int,
    bank_x5t: str,
    status_idx: int,
    status_uri: str,
) -> dict[str, Any]:
    return {
        "iss": issuer,
        "sub": enterprise,
        "aud": bank,
        "iat": issued_at,
        "nbf": not_before,
        "exp": expires_at,
        "jti": jti,
        "authorization_details": [authorization_detail(grant, consent_id)],
        "cnf": {X5T: bank_x5t},
        "status": {"status_list": {"idx": status_idx, "uri": status_uri}},
    }


def _int(value: Any, claim: str, *, minimum: int = 0) -> int:
    # bool is an int in Python; a JSON true is not a number of uses.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ClaimInvalid(
            f"claim {claim} must be an integer >= {minimum}, got {value!r}", claim=claim
        )
    return value


def _str_list(value: Any, claim: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClaimInvalid(f"claim {claim} must be a list of strings, got {value!r}", claim=claim)
    return value


def check_required(claims: Mapping[str, Any]) -> None:
    if not claims.keys() >= _REQUIRED:  # one C-level check; the loop names the first gap
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise ClaimMissing(
                    f"the consent token has no '{name}' claim; it is required", claim=name
                )
    for name in ("iss", "sub", "aud", "jti"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise ClaimInvalid(
                f"claim {name} must be a non-empty string, got {claims[name]!r}", claim=name
            )
    for name in ("iat", "nbf", "exp"):
        _int(claims[name], name)


def parse_grant(claims: Mapping[str, Any]) -> Grant:
    """The single fedcredit authorization detail of verified ``claims``."""
    details = claims["authorization_details"]
    if not isinstance(details, list) or len(details) != 1 or not isinstance(details[0], dict):
        raise ClaimInvalid(
            "authorization_details must be a list holding exactly one object, "
            f"got {type(details).__name__} of length {len(details) if isinstance(details, list) else '-'}",
            claim="authorization_details",
        )
    d = details[0]
    if d.get("type") != DETAIL_TYPE:
        raise ClaimInvalid(
            f"authorization_details[0].type must be '{DETAIL_TYPE}', got {d.get('type')!r}",
            claim="authorization_details.type",
        )
    purpose = d.get("purpose")
    if purpose not in PURPOSES:
        raise ClaimInvalid(
            f"authorization_details[0].purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}",
            claim="authorization_details.purpose",
        )
    scope = _str_list(d.get("scope"), "authorization_details.scope")
    nodes = _str_list(d.get("nodes"), "authorization_details.nodes")
    score_only = scope == [SCORE_ONLY]
    categories = frozenset() if score_only else frozenset(scope)  # strings: checked above
    if not score_only and (not scope or not categories <= _CATEGORY_SET):
        raise ClaimInvalid(
            f"authorization_details[0].scope must be ['{SCORE_ONLY}'] or known categories, got {scope!r}",
            claim="authorization_details.scope",
        )
    return Grant(
        purpose=purpose,
        categories=categories,
        score_only=score_only,
        nodes=frozenset(nodes),
        max_uses=_int(d.get("max_uses"), "authorization_details.max_uses", minimum=1),
        retention_days=_int(d.get("retention_days"), "authorization_details.retention_days"),
    )


def parse_binding(claims: Mapping[str, Any]) -> str:
    cnf = claims["cnf"]
    if not isinstance(cnf, dict) or not isinstance(cnf.get(X5T), str):
        raise ClaimInvalid(f"claim cnf must hold a '{X5T}' thumbprint, got {cnf!r}", claim="cnf")
    return str(cnf[X5T])


def parse_status(claims: Mapping[str, Any]) -> tuple[int, str]:
    status = claims["status"]
    sl = status.get("status_list") if isinstance(status, dict) else None
    if not isinstance(sl, dict) or not isinstance(sl.get("uri"), str):
        raise ClaimInvalid(
            f"claim status must be {{'status_list': {{'idx', 'uri'}}}}, got {status!r}",
            claim="status",
        )
    return _int(sl.get("idx"), "status.status_list.idx"), str(sl["uri"])


def covers_all(have: Sequence[str] | frozenset[str], want: Sequence[str]) -> list[str]:
    """The items of ``want`` not in ``have``."""
    return [w for w in want if w not in have]


# --- strict compact form (RFC 7515 §7.1, RFC 7519 §7.2) ------------------------------


def split_jws(token: str) -> tuple[str, str, str]:
    """The three segments of a compact JWS, bounded in size; TokenMalformed otherwise."""
    if not isinstance(token, str):
        raise E.TokenMalformed(f"a consent token is a string, got {type(token).__name__}")
    if len(token) > MAX_TOKEN_CHARS:
        raise E.TokenMalformed(
            f"a consent token has at most {MAX_TOKEN_CHARS} characters, got {len(token)}"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise E.TokenMalformed(f"a compact JWS has 3 dot-separated parts, got {len(parts)}")
    if len(parts[0]) > MAX_HEADER_CHARS:
        raise E.TokenMalformed(
            f"the token's header has at most {MAX_HEADER_CHARS} characters, got {len(parts[0])}"
        )
    return parts[0], parts[1], parts[2]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        # RFC 7519 §4: a JWT with duplicate claim names may be rejected; we do.
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate member {dup!r}")
    return out


def _no_constant(name: str) -> Any:
    # NaN and Infinity are Python extensions, not JSON (RFC 8259 §6).
    raise ValueError(f"{name} is not JSON")


# One decoder for every segment: ``json.loads(..., object_pairs_hook=...)`` builds a new
# JSONDecoder per call, which costs as much as decoding a token's payload.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _check_tree(value: Any, depth: int) -> None:
    """Bounded depth, and strings that are real Unicode (a ``\\ud800`` escape decodes to a
    lone surrogate that no UTF-8 encoder accepts further down)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii():
            value.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_tree(k, depth)
            _check_tree(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_tree(v, depth + 1)


def decode_segment(segment: str, what: str) -> dict[str, Any]:
    """A header or payload segment: strict base64url of UTF-8 JSON holding one object of
    bounded depth, no duplicate members; TokenMalformed naming what is wrong otherwise."""
    try:
        raw = b64url_decode(segment)
        text = raw.decode("utf-8")  # RFC 7515 §2: UTF-8, nothing else
        value = _DECODER.decode(text)
        # The walk costs as much as the decoding, and it can only find something when the
        # text has more brackets than the depth allowed or an escape (valid UTF-8 holds no
        # lone surrogate; only a \uD800-style escape makes one): a verifier's first sight
        # of every token in a batch pays this.
        if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
            _check_tree(value, 1)
    except (ValueError, UnicodeError, RecursionError) as exc:
        # RecursionError: the JSON scanner recurses per level; the size bound keeps it rare,
        # but a refusal is the answer either way, never a crash.
        shown = str(exc)[:120] if not isinstance(exc, RecursionError) else "nested too deep"
        raise E.TokenMalformed(
            f"the token's {what} must be base64url of a UTF-8 JSON object: {shown}"
        ) from None
    if not isinstance(value, dict):
        raise E.TokenMalformed(
            f"the token's {what} must be a JSON object, got {type(value).__name__}"
        )
    return value


def check_header(header: Mapping[str, Any], *, typ: str) -> str:
    """Check the member types, alg, typ and crit; return the kid."""
    for name in _STR_HEADERS:
        value = header.get(name)
        if value is not None and not isinstance(value, str):
            raise E.TokenMalformed(
                f"header {name} must be a string, got {type(value).__name__}", member=name
            )
    crit = header.get("crit")
    if crit is not None and (
        not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit)
    ):
        raise E.TokenMalformed(
            f"header crit must be a non-empty list of strings, got {type(crit).__name__}",
            member="crit",
        )
    alg = header.get("alg")
    if alg is None or alg.lower() == "none":
        raise E.TokenUnsigned(
            "the token is unsigned (alg none); a consent must be signed with EdDSA"
        )
    if alg not in ALLOWED_ALGS:
        raise E.AlgorithmNotAllowed(
            f"algorithm {alg[:40]!r} is not allowed; expected one of {sorted(ALLOWED_ALGS)}",
            alg=alg[:40],
        )
    if header.get("typ") != typ:
        raise E.WrongTokenType(f"header typ must be {typ!r}, got {header.get('typ')!r:.60}")
    if crit is not None:
        unknown = [c for c in crit if c not in UNDERSTOOD_CRIT]
        if unknown:
            raise E.UnknownCritical(
                f"header crit lists parameters this verifier does not understand: {unknown!r:.200}"
            )
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID_RE.match(kid):
        shown = repr(kid)[:60]
        raise E.InvalidKeyId(
            f"header kid must be a base64url key id of 8-128 characters, got {shown}"
        )
    return kid


def decode_signature(segment: str) -> bytes:
    """The signature segment: strict base64url of exactly one Ed25519 signature."""
    try:
        sig = b64url_decode(segment)
    except ValueError as exc:
        raise E.TokenMalformed(f"the token's signature: {exc}") from None
    if len(sig) != SIGNATURE_BYTES:
        raise E.TokenMalformed(
            f"the token's signature must be {SIGNATURE_BYTES} bytes (Ed25519), got {len(sig)}"
        )
    return sig
