"""The one consent-token verifier every service uses (nodes, coordinator, consent service).

:class:`ConsentVerifier` checks, in this order, and raises one typed error per
failure (see :mod:`consent.errors`):

1. compact JWS form, JSON header and payload, no duplicate members;
2. ``alg`` on the allow-list (EdDSA only: ``none`` and HMAC are refused before
   any key is touched), ``typ`` = ``consent+jwt``, no unknown ``crit``
   (RFC 7515 §4.1.11), ``kid`` well-formed and present in the cached JWKS
   (unknown ``kid``: one rate-limited refresh; keys whose retention is over are
   named as such);
3. the Ed25519 signature (RFC 8037);
4. every required claim and the shape of ``authorization_details``, ``cnf`` and
   ``status``; exact ``iss``; the status list is the trusted one;
   (steps 1-4 depend only on the token string and are cached per token, so a
   warm verify skips the signature; the key is still looked up every time;
   :meth:`ConsentVerifier.precheck` runs them for a whole batch with the
   signatures verified together, e.g. on other cores)
5. the key was not retired when the token was issued; ``exp``/``nbf``/``iat``
   with at most 60 s leeway;
6. holder binding: ``cnf.x5t#S256`` equals the presenting bank's certificate
   thumbprint (RFC 8705 §3), then ``aud`` equals that bank, ``sub`` the enterprise;
7. purpose, category (scope), node coverage, and release of a score-only consent;
8. the token's entry in the signed status list (revoked / suspended);
9. the use count (counted only with ``count_use=True``; otherwise the caller reserves
   the use, :meth:`UseCounter.reserve`, before anything is disclosed).

Keys and status come from pluggable sources (:class:`KeyCache`,
:class:`StatusCache`) fed by a fetch function: in-process from the consent
authority, or over gRPC (:func:`remote_verifier`), where the consent service
also pushes every status change to subscribed verifiers. Nodes and the coordinator
program against the protocols :class:`TokenVerifier` and :class:`UseCounter`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from fedcredit.common import metrics
from fedcredit.common.errors import FedcreditError
from fedcredit.common.tls import TlsFiles
from fedcredit.consent import errors as E
from fedcredit.consent.keys import KeySet, PublicKey, Tombstone, parse_jwks
from fedcredit.consent.policy import DEFAULT_CAPS, PurposeCap
from fedcredit.consent.statuslist import (
    INVALID,
    STATUS_NAMES,
    STATUSLIST_TYP,
    SUSPENDED,
    StatusArray,
    b64url,
    parse_status_list_claims,
)
from fedcredit.consent.token import (
    CONSENT_TYP,
    Grant,
    check_header,
    check_required,
    covers,
    decode_segment,
    decode_signature,
    parse_binding,
    parse_grant,
    parse_status,
    split_jws,
)
from fedcredit.consent.useref import Reservation, UseRef

if TYPE_CHECKING:
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.remote import StatusWatch

log = logging.getLogger(__name__)

MAX_LEEWAY = 60

Clock = Callable[[], float]


class FetchNeeded(Exception):
    """A ``verify(fetch=False)`` that would first have to fetch the key set or the status
    list (or count a use remotely): nothing was decided; verify again where blocking is
    allowed. Never a refusal, never sent to anyone."""


@dataclass(frozen=True)
class VerifiedConsent:
    """What a verified token grants."""

    jti: str
    enterprise: str
    bank: str
    purpose: str
    categories: frozenset[str]  # category ids from common.departments, empty if score_only
    score_only: bool  # features may be used to compute a score, never released
    nodes: frozenset[str]  # node org ids covered
    max_uses: int
    retention_days: int
    expires_at: int
    status_idx: int
    claims: Mapping[str, Any] = field(repr=False)
    uses: int | None = None  # the use count after this use, when counted

    @property
    def consent_id(self) -> str:
        return str(self.claims["authorization_details"][0].get("consent_id", self.jti))

    def covers(self, category: str, node: str) -> bool:
        """Whether ``node``'s ``category`` features may feed a score (:meth:`Grant.covers`:
        the rule each node's verifier enforces again for itself)."""
        return covers(self.score_only, self.categories, self.nodes, category, node)


# --- decoding helpers: strict compact form, in consent.token (split_jws, decode_segment,
# check_header, decode_signature) -------------------------------------------------------


def verify_signature(key: PublicKey, h: str, p: str, s: str) -> None:
    sig = decode_signature(s)
    try:
        good = key.verifier.verify(sig, f"{h}.{p}".encode("ascii"))
    except UnicodeEncodeError:
        good = False
    if not good:
        raise E.BadSignature(
            f"the signature does not verify with key {key.kid}; the token was altered or forged"
        )


# --- key cache ------------------------------------------------------------------


class KeyCache:
    """The consent service's JWKS, cached for ``ttl`` seconds.

    An unknown ``kid`` triggers at most one refresh per ``min_refresh_interval``
    (a flood of random kids cannot hammer the service). A failed fetch keeps
    the last good key set; with none at all, verification fails closed.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        ttl: float = 300.0,
        min_refresh_interval: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._set: KeySet | None = None
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")
        self.fetches = 0

    def refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS now (rate-limited unless forced); True if a new set was loaded."""
        with self._lock:
            now = self._clock()
            if not force and now - self._last_attempt < self.min_refresh_interval:
                return False
            self._last_attempt = now
            try:
                doc = self._fetch()
                new = parse_jwks(doc)
            except Exception as exc:  # keep the last good set, whatever went wrong
                log.warning("JWKS fetch failed, keeping the last good key set: %s", exc)
                return False
            self.fetches += 1
            self._set, self._fetched_at = new, now
            return True

    @property
    def epoch(self) -> str:
        """:func:`consent.keys.jwks_epoch` of the key set held ("" before the first)."""
        ks = self._set
        return ks.epoch if ks is not None else ""

    def knows(self, kid: str) -> bool:
        """Whether the key set held publishes or has withdrawn ``kid``."""
        ks = self._set
        return ks is not None and (kid in ks.keys or kid in ks.tombstones)

    def lookup(self, kid: str, *, fetch: bool = True) -> PublicKey:
        """``fetch=False``: raise :class:`FetchNeeded` instead of fetching the JWKS."""
        now = self._clock()
        if self._set is None or now - self._fetched_at >= self.ttl:
            if not fetch:
                raise FetchNeeded("the key set is due for a refresh")
            self.refresh(force=self._set is None)
        ks = self._set
        if ks is not None and kid in ks.keys:
            return ks.keys[kid]
        if not fetch:
            raise FetchNeeded(f"key {kid} is not in the key set held")
        # One rate-limited refresh for an unknown kid (a key published late).
        if (ks is None or kid not in ks.tombstones) and self.refresh():
            ks = self._set
            if ks is not None and kid in ks.keys:
                return ks.keys[kid]
        if ks is None:
            raise E.KeysUnavailable(
                "the consent service's signing keys (JWKS) could not be fetched"
            )
        tomb: Tombstone | None = ks.tombstones.get(kid)
        if tomb is not None and tomb.compromised_at is not None:
            raise E.SigningKeyCompromised(
                f"the token is signed with key {kid}, declared compromised at "
                f"{tomb.compromised_at}; nothing it signed is accepted",
                kid=kid,
            )
        if tomb is not None:
            raise E.SigningKeyExpired(
                f"the token is signed with key {kid}, retired at {tomb.retired_at} and expired at "
                f"{tomb.expired_at}; no token signed with it can still be valid",
                kid=kid,
            )
        raise E.UnknownSigningKey(
            f"no key {kid} in the consent service's JWKS ({len(ks.keys)} keys published)", kid=kid
        )


# --- status list cache ----------------------------------------------------------


class StatusCache:
    """The signed status list, cached and refreshed at its TTL; pushes replace it sooner.

    ``offer`` accepts a newer signed list (from a push or a fetch) after
    verifying it with the JWKS. If the list cannot be refreshed it is used
    until its own ``exp``; after that the verifier fails closed.
    """

    def __init__(
        self,
        fetch: Callable[[], str],
        keys: KeyCache,
        *,
        uri: str,
        issuer: str,
        max_ttl: float = 60.0,
        clock: Clock = time.time,
    ) -> None:
        self._fetch = fetch
        self._keys = keys
        self.uri = uri
        self.issuer = issuer
        self.max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._array: StatusArray | None = None
        self._seq = -1
        self._exp = 0
        self._fresh_until = float("-inf")
        self.updated_at = float("-inf")  # clock time the current list was accepted
        self.fetches = 0

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def exp(self) -> int:
        """``exp`` of the list held (0 before the first); past it the verifier fails closed."""
        return self._exp

    def offer(self, token: str) -> bool:
        """Verify a ``statuslist+jwt`` and adopt it if newer; True if adopted."""
        h, p, s = split_jws(token)
        header = decode_segment(h, "header")
        kid = check_header(header, typ=STATUSLIST_TYP)
        if not self._keys.knows(kid):
            # Signed by a key we do not hold yet: after a rotation the list is the first
            # thing the new key signs. Refetch now, not after the rate limit.
            self._keys.refresh(force=True)
        verify_signature(self._keys.lookup(kid), h, p, s)
        claims = decode_segment(p, "payload")
        epoch = claims.get("keys")
        if isinstance(epoch, str) and epoch != self._keys.epoch:
            # The key set changed (a rotation, a compromised key withdrawn): pushed with
            # the list, so every subscribed verifier refuses a withdrawn key within the push.
            self._keys.refresh(force=True)
        try:
            payload = parse_status_list_claims(claims)
        except ValueError as exc:
            raise E.TokenMalformed(f"the status list token is malformed: {exc}") from exc
        if payload.uri != self.uri or claims.get("iss") != self.issuer:
            raise E.UnknownStatusList(
                f"status list for {payload.uri!r} from {claims.get('iss')!r}; "
                f"expected {self.uri!r} from {self.issuer!r}"
            )
        seq = claims.get("seq")
        if not isinstance(seq, int):
            raise E.TokenMalformed("the status list token has no integer seq claim")
        now = self._clock()
        if payload.exp < now:
            raise E.StatusUnavailable(f"the status list offered expired at {payload.exp}")
        with self._lock:
            if seq < self._seq:
                return False
            if seq == self._seq:
                # The same content re-signed (heartbeat or poll): it is fresh again, and its
                # later `exp` must be adopted too, or a list nobody changes expires under us.
                self._fresh_until = now + min(payload.ttl, self.max_ttl)
                if payload.exp > self._exp:
                    self._array, self._exp = payload.array, payload.exp
                return False
            self._array, self._seq, self._exp = payload.array, seq, payload.exp
            self._fresh_until = now + min(payload.ttl, self.max_ttl)
            self.updated_at = now
            return True

    def refresh(self) -> None:
        try:
            token = self._fetch()
            self.fetches += 1
            self.offer(token)
        except Exception as exc:
            log.warning("status list fetch failed, keeping the cached list: %s", exc)

    def status(self, idx: int, *, fetch: bool = True) -> int:
        """``fetch=False``: raise :class:`FetchNeeded` instead of fetching the list."""
        now = self._clock()
        if now >= self._fresh_until:
            if not fetch:
                raise FetchNeeded("the status list is due for a refresh")
            self.refresh()
        array = self._array
        if array is None or now >= self._exp:
            raise E.StatusUnavailable(
                "the consent status list could not be fetched or has expired; refusing to guess"
            )
        try:
            return array.get(idx)
        except IndexError:
            if not fetch:
                raise FetchNeeded(f"status index {idx} is past the list held") from None
        # Past the end of the list held: the list may have grown (a new index range) since
        # it was fetched; fetch it once before refusing.
        self.refresh()
        array = self._array or array  # a refresh replaces the list, never drops it
        try:
            return array.get(idx)
        except IndexError:
            raise E.UnknownStatusList(
                f"status index {idx} is past the end of the status list ({array.capacity} entries)",
                idx=idx,
            ) from None


# --- use counting -----------------------------------------------------------------


class UseCounter(Protocol):
    """Counts uses of a consent (by jti) against its ``max_uses``.

    A use is named by the bank's use id (one Score, one training fetch round): it is
    reserved before anything is disclosed (:meth:`reserve`, which also joins a use
    another verifier opened under the same id), then committed once the answer is out or
    released if the work failed (:meth:`settle`).
    """

    def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """Reserve (or join) use ``use_id`` of each token; per token its reservation or
        the error that refused it. Raises if the counter cannot answer at all.

        ``pin``: the caller discloses straight to the bank, so a use it JOINS can no
        longer be given back by its opener (nor by the lease reaper)."""
        ...

    def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        """Commit or release the uses this counter's owner opened under ``use_id``."""
        ...

    def use(self, jti: str, max_uses: int, expires_at: int) -> int:
        """Count one use atomically; return the count; raise UsesExhausted past the max."""
        ...

    def use_many(self, items: Sequence[tuple[str, int, int]]) -> list[int | FedcreditError]:
        """Count one use per ``(jti, max_uses, expires_at)``, in one round trip where the
        counter is remote (a scored portfolio); per item its count or its error."""
        ...

    def check(self, jti: str, max_uses: int) -> None:
        """Raise UsesExhausted if the known count already reached the max (counts nothing)."""
        ...


def exhausted(jti: str, max_uses: int) -> E.UsesExhausted:
    return E.UsesExhausted(
        f"consent {jti} allows {max_uses} uses and all have been used", jti=jti, max_uses=max_uses
    )


class MemoryUseCounter(UseCounter):
    """In-process counter (one coordinator process); forgets tokens once they expire."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}
        self._open: set[tuple[str, str]] = set()  # (jti, use id) reserved
        self._pinned: set[tuple[str, str]] = set()  # joined by a verifier that disclosed
        self._clock = clock
        self._next_purge = 0.0

    def use(self, jti: str, max_uses: int, expires_at: int) -> int:
        with self._lock:
            now = self._clock()
            if now >= self._next_purge:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now - MAX_LEEWAY}
                self._next_purge = now + 60
            count, _ = self._counts.get(jti, (0, expires_at))
            if count >= max_uses:
                raise exhausted(jti, max_uses)
            self._counts[jti] = (count + 1, expires_at)
            return count + 1

    def use_many(self, items: Sequence[tuple[str, int, int]]) -> list[int | FedcreditError]:
        out: list[int | FedcreditError] = []
        for jti, max_uses, expires_at in items:
            try:
                out.append(self.use(jti, max_uses, expires_at))
            except E.UsesExhausted as exc:
                out.append(exc)
        return out

    def check(self, jti: str, max_uses: int) -> None:
        count, _ = self._counts.get(jti, (0, 0))
        if count >= max_uses:
            raise exhausted(jti, max_uses)

    def count(self, jti: str) -> int:
        return self._counts.get(jti, (0, 0))[0]

    def reserve(
        self, use_id: str, refs: Sequence[UseRef], *, pin: bool = False
    ) -> list[Reservation | FedcreditError]:
        """In-process: the token's own ``max_uses`` is all this counter knows (it has no
        store); a use id seen before for a token joins that use."""
        out: list[Reservation | FedcreditError] = []
        with self._lock:
            for ref in refs:
                key = (ref.jti, use_id)
                count, exp = self._counts.get(ref.jti, (0, 0))
                if key in self._open:
                    if pin:
                        self._pinned.add(key)
                    out.append(Reservation(count, False))
                    continue
                if count >= ref.max_uses:
                    out.append(exhausted(ref.jti, ref.max_uses))
                    continue
                self._open.add(key)
                self._counts[ref.jti] = (count + 1, exp)
                out.append(Reservation(count + 1, True))
        return out

    def settle(self, use_id: str, refs: Sequence[UseRef], *, commit: bool) -> None:
        if commit:
            return
        with self._lock:
            for ref in refs:
                if (ref.jti, use_id) in self._open - self._pinned:
                    self._open.discard((ref.jti, use_id))
                    count, exp = self._counts.get(ref.jti, (1, 0))
                    self._counts[ref.jti] = (max(0, count - 1), exp)


# A batch's signatures, verified together: (raw Ed25519 public key, signing input,
# signature) each. The answer comes in chunks, in job order, one bool per job, True only
# if it verifies; a chunk is used as soon as it arrives (the rest may still be running).
SignatureJob = tuple[bytes, bytes, bytes]
VerifyMany = Callable[[Sequence[SignatureJob]], Iterable[Sequence[bool]]]


class TokenVerifier(Protocol):
    """What a node or the coordinator holds to check consent tokens (:class:`ConsentVerifier`
    fed in-process, :func:`remote_verifier` fed over gRPC).

    ``counter``: the verifier's use counter, for a caller that counts uses itself (apart
    from :meth:`verify`, e.g. concurrently with its fan-out, in batches); ``None`` when
    uses can be counted only through ``verify(count_use=True)``.
    """

    @property
    def counter(self) -> UseCounter | None: ...

    def verify(
        self,
        token: str,
        *,
        bank_org: str,
        bank_cert_sha256: bytes,
        enterprise: str,
        purposes: Collection[str],
        category: str | None = None,
        node: str | None = None,
        count_use: bool = False,
        release: bool = False,
        fetch: bool = True,
    ) -> VerifiedConsent:
        """Verify ``token`` for this request; raise the typed error of the first failure.
        ``fetch=False``: raise :class:`FetchNeeded` rather than block on a fetch (a caller
        on an event loop verifies there when nothing has to be fetched)."""
        ...

    def precheck(self, tokens: Sequence[str], verify_many: VerifyMany) -> int:
        """Check a batch's signatures together ahead of :meth:`verify` (a verifier that
        cannot batch returns 0); how many tokens were newly checked."""
        ...

    def close(self) -> None:
        """Release background resources (streams, channels, threads)."""
        ...


@dataclass(frozen=True, slots=True)
class _Checked:
    kid: str
    claims: Mapping[str, Any]  # read-only: shared by every verification of the token
    grant: Grant
    bound: str
    status_idx: int


# --- the verifier -------------------------------------------------------------------


class ConsentVerifier(TokenVerifier):
    """The verifier: checks 1-9 of this module, keys and status from the caches given."""

    def __init__(
        self,
        *,
        issuer: str,
        keys: KeyCache,
        status: StatusCache,
        counter: UseCounter | None = None,
        leeway: int = 30,
        clock: Clock = time.time,
        cache_size: int = 65536,
        caps: Mapping[str, PurposeCap] | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} s, got {leeway}")
        self.issuer = issuer
        # Longest exp - iat per purpose: the deployment's caps ([consent.caps]), else the
        # defaults. A stolen key cannot mint a token that outlives its purpose's cap.
        self.max_lifetime = {
            p: c.max_validity_days * 86400 + leeway for p, c in (caps or DEFAULT_CAPS).items()
        }
        self.keys = keys
        self.status = status
        self._counter: UseCounter = counter if counter is not None else MemoryUseCounter(clock)
        self.leeway = leeway
        self._clock = clock
        # Tokens whose signature and shape were already checked (exact string -> result):
        # a warm verify redoes every time-, key-, status- and request-dependent check but
        # not the Ed25519 verification. Only validly signed tokens enter it.
        self.cache_size = cache_size
        self._checked: dict[str, _Checked] = {}
        # Header segment -> kid for headers that passed check_header (a pure function of
        # the segment; the tokens of one key share their header).
        self._headers: dict[str, str] = {}

    @property
    def counter(self) -> UseCounter:
        """The counter of this verifier's uses (``verify(count_use=True)`` counts with it)."""
        return self._counter

    def _kid(self, h: str) -> str:
        kid = self._headers.get(h)
        if kid is None:
            kid = check_header(decode_segment(h, "header"), typ=CONSENT_TYP)
            if len(self._headers) >= 64:
                self._headers.clear()
            self._headers[h] = kid
        return kid

    def close(self) -> None:
        """Release background resources (subclasses with subscriptions override)."""

    def _check_token(self, token: str, *, fetch: bool = True) -> _Checked:
        """What never changes for a given token string: form, header, signature, claim shapes."""
        h, p, s = split_jws(token)
        kid = self._kid(h)
        verify_signature(self.keys.lookup(kid, fetch=fetch), h, p, s)
        return self._check_claims(kid, p)

    def _check_claims(self, kid: str, p: str) -> _Checked:
        """Steps 1 and 4 for the payload of a token whose signature verified."""
        claims = decode_segment(p, "payload")
        check_required(claims)
        if claims["iss"] != self.issuer:
            raise E.WrongIssuer(f"issuer must be {self.issuer!r}, got {claims['iss']!r}")
        bound = parse_binding(claims)
        grant = parse_grant(claims)
        lifetime, cap = claims["exp"] - claims["iat"], self.max_lifetime.get(grant.purpose, 0)
        if lifetime > cap:
            raise E.LifetimeExceedsCap(
                f"the token lives {lifetime} s from iat to exp; {grant.purpose} consents "
                f"live at most {cap} s",
                purpose=grant.purpose,
            )
        idx, uri = parse_status(claims)
        if uri != self.status.uri:
            raise E.UnknownStatusList(
                f"the token's status list is {uri!r}; expected {self.status.uri!r}"
            )
        return _Checked(
            kid=kid, claims=MappingProxyType(claims), grant=grant, bound=bound, status_idx=idx
        )

    def _remember(self, token: str, checked: _Checked) -> None:
        if len(self._checked) >= self.cache_size:
            # FIFO eviction; dict order is insertion order.
            self._checked.pop(next(iter(self._checked)), None)
        self._checked[token] = checked

    def precheck(self, tokens: Sequence[str], verify_many: VerifyMany) -> int:
        """Run steps 1-4 for the tokens not checked yet, their signatures verified together
        by ``verify_many`` (see :data:`VerifyMany`; e.g. spread over worker processes).

        Only tokens that pass every step are remembered, exactly as :meth:`verify` would
        remember them; anything else (malformed, unknown key, bad signature, bad claims,
        ``verify_many`` failing or answering more or fewer jobs than asked) is left for
        :meth:`verify` to refuse with its precise error. Returns how many tokens were newly
        checked.
        """
        jobs: list[SignatureJob] = []
        todo: list[tuple[str, str, str]] = []  # token, kid, payload segment
        raw_keys: dict[str, bytes] = {}
        for token in dict.fromkeys(tokens):
            if not isinstance(token, str) or token in self._checked:
                continue
            try:
                h, p, s = split_jws(token)
                kid = self._kid(h)
                key = self.keys.lookup(kid)
                sig = decode_signature(s)
                msg = f"{h}.{p}".encode("ascii")
            except (FedcreditError, ValueError):
                continue
            raw = raw_keys.get(kid)
            if raw is None:
                raw = raw_keys[kid] = key.verifier.raw
            jobs.append((raw, msg, sig))
            todo.append((token, kid, p))
        if not jobs:
            return 0
        n = 0
        done = 0
        try:
            for chunk in verify_many(jobs):
                answers = list(chunk)
                if done + len(answers) > len(jobs):
                    log.warning("batch signature verification answered more jobs than asked")
                    break
                for (token, kid, p), good in zip(todo[done:], answers, strict=False):
                    if good is not True:
                        continue
                    try:
                        checked = self._check_claims(kid, p)
                    except FedcreditError:
                        continue
                    self._remember(token, checked)
                    n += 1
                done += len(answers)
        except Exception as exc:
            log.warning("batch signature verification failed, verifying one by one: %s", exc)
        return n

    def verify(
        self,
        token: str,
        *,
        bank_org: str,
        bank_cert_sha256: bytes,
        enterprise: str,
        purposes: Collection[str],
        category: str | None = None,
        node: str | None = None,
        count_use: bool = False,
        release: bool = False,
        fetch: bool = True,
    ) -> VerifiedConsent:
        """Verify ``token`` for this request (:meth:`_verify`), counted by result for the
        operator's /metrics (``fedcredit_consent_verifications_total``; a
        :class:`FetchNeeded` decided nothing and is not counted)."""
        try:
            vc = self._verify(
                token, bank_org=bank_org, bank_cert_sha256=bank_cert_sha256,
                enterprise=enterprise, purposes=purposes, category=category, node=node,
                count_use=count_use, release=release, fetch=fetch,
            )  # fmt: skip
        except FedcreditError as exc:
            metrics.verification(exc.reason)
            raise
        metrics.verification("ok")
        return vc

    def _verify(
        self,
        token: str,
        *,
        bank_org: str,
        bank_cert_sha256: bytes,
        enterprise: str,
        purposes: Collection[str],
        category: str | None = None,
        node: str | None = None,
        count_use: bool = False,
        release: bool = False,
        fetch: bool = True,
    ) -> VerifiedConsent:
        """Verify ``token`` for this request; raise the typed error of the first failure.

        ``bank_org``/``bank_cert_sha256`` are the bank's identity: the caller's
        own certificate when a bank presents its token, or the identity a
        coordinator vouches for. ``category``/``node`` given means the token
        must cover them; ``release=True`` means features go to the bank, which
        a score-only consent never allows.
        """
        if count_use and not fetch:
            raise FetchNeeded("counting a use may call the consent service")
        checked = self._checked.get(token)
        if checked is None:  # steps 1-4
            checked = self._check_token(token, fetch=fetch)
            self._remember(token, checked)
        # Looked up on every call, so a key that left the JWKS stops verifying at once.
        key = self.keys.lookup(checked.kid, fetch=fetch)
        claims, grant = checked.claims, checked.grant
        self._check_times(key, claims)  # step 5
        self._check_holder(checked, bank_org, bank_cert_sha256, enterprise)  # step 6
        _check_coverage(grant, purposes, category, node, release)  # step 7
        jti = claims["jti"]
        self._check_status(checked.status_idx, jti, fetch=fetch)  # step 8
        uses = None  # step 9
        if count_use:
            uses = self._counter.use(jti, grant.max_uses, claims["exp"])
        # Otherwise the caller reserves the use (UseCounter.reserve) before disclosing: a
        # token whose uses are all taken may still join the use it is part of (the other
        # nodes of one Score), which only the consent service can tell.
        return VerifiedConsent(
            jti=jti,
            enterprise=claims["sub"],
            bank=claims["aud"],
            purpose=grant.purpose,
            categories=grant.categories,
            score_only=grant.score_only,
            nodes=grant.nodes,
            max_uses=grant.max_uses,
            retention_days=grant.retention_days,
            expires_at=claims["exp"],
            status_idx=checked.status_idx,
            claims=claims,
            uses=uses,
        )

    def _check_times(self, key: PublicKey, claims: Mapping[str, Any]) -> None:
        """Step 5: the key was not retired at issuance; ``exp``/``nbf``/``iat`` with leeway."""
        now = int(self._clock())
        lw = self.leeway
        iat, nbf, exp = claims["iat"], claims["nbf"], claims["exp"]
        if key.retired_at is not None and iat > key.retired_at + lw:
            raise E.SigningKeyRetired(
                f"the token was issued at {iat}, after its key {key.kid} was retired at {key.retired_at}",
                kid=key.kid,
            )
        if now > exp + lw:
            raise E.TokenExpired(f"the consent expired at {exp}; it is now {now}", expired_at=exp)
        if now + lw < nbf:
            raise E.TokenNotYetValid(f"the consent is valid from {nbf}; it is now {now}")
        if now + lw < iat:
            raise E.TokenNotYetValid(
                f"the token claims to be issued at {iat}, in the future; now {now}"
            )

    @staticmethod
    def _check_holder(
        checked: _Checked, bank_org: str, bank_cert_sha256: bytes, enterprise: str
    ) -> None:
        """Step 6: bound to the presenting bank's certificate, issued to it, for ``enterprise``."""
        presented = b64url(bank_cert_sha256)
        if checked.bound != presented:
            raise E.HolderMismatch(
                f"the token is bound to certificate {checked.bound} but was presented with certificate {presented}"
            )
        claims = checked.claims
        aud = claims["aud"]
        if aud != bank_org:
            raise E.WrongAudience(f"the consent was issued to {aud!r}, not to {bank_org!r}")
        if claims["sub"] != enterprise:
            raise E.EnterpriseMismatch(
                f"the consent is for enterprise {claims['sub']}, not {enterprise}"
            )

    def _check_status(self, idx: int, jti: str, *, fetch: bool = True) -> None:
        """Step 8: the token's entry in the signed status list is valid."""
        value = self.status.status(idx, fetch=fetch)
        if value == INVALID:
            raise E.ConsentRevoked(f"consent {jti} has been revoked", jti=jti)
        if value == SUSPENDED:
            raise E.ConsentSuspended(f"consent {jti} is paused by the enterprise", jti=jti)
        if value != 0:
            raise E.ConsentRevoked(
                f"consent {jti} has status {STATUS_NAMES.get(value, value)}", jti=jti
            )


def _check_coverage(
    grant: Grant,
    purposes: Collection[str],
    category: str | None,
    node: str | None,
    release: bool,
) -> None:
    """Step 7: purpose, category (scope), node coverage, and release of a score-only consent."""
    if grant.purpose not in purposes:
        raise E.PurposeNotCovered(
            f"the consent is for purpose {grant.purpose!r}; this request needs one of {sorted(purposes)}",
            purpose=grant.purpose,
        )
    if category is not None:
        if grant.score_only and release:
            raise E.ScoreOnly(
                f"the consent is score-only: category {category!r} may feed a score but is never released"
            )
        if not grant.covers_category(category):
            raise E.CategoryNotCovered(
                f"the consent covers {sorted(grant.categories)}, not category {category!r}",
                category=category,
            )
    elif grant.score_only and release:
        raise E.ScoreOnly("the consent is score-only: nothing may be released to the bank")
    if node is not None and not grant.covers_node(node):
        raise E.NodeNotCovered(
            f"the consent covers nodes {sorted(grant.nodes)}, not {node!r}", node=node
        )


# --- fed over gRPC ------------------------------------------------------------------


class RemoteVerifier(ConsentVerifier):
    """A verifier fed over gRPC by the consent service (built by :func:`remote_verifier`):
    it owns the client its caches fetch with and the push stream of status changes."""

    def __init__(
        self,
        *,
        client: ConsentClient,
        watch: StatusWatch,
        issuer: str,
        keys: KeyCache,
        status: StatusCache,
        counter: UseCounter,
        leeway: int = 30,
        clock: Clock = time.time,
        caps: Mapping[str, PurposeCap] | None = None,
    ) -> None:
        super().__init__(
            issuer=issuer, keys=keys, status=status, counter=counter, leeway=leeway, clock=clock,
            caps=caps,
        )  # fmt: skip
        self.client = client
        self.watch = watch

    @property
    def connected(self) -> threading.Event:
        """Set while the push stream is open and has delivered a list."""
        return self.watch.connected

    @property
    def reconnects(self) -> int:
        """Streams reopened after a break."""
        return self.watch.reconnects

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """True once the push stream delivered its first list."""
        return self.watch.connected.wait(timeout)

    def close(self) -> None:
        self.watch.close()
        self.client.close()


def remote_verifier(
    *,
    consent_address: str,
    tls: TlsFiles,
    server_org: str,
    issuer: str,
    jwks_ttl: float = 300.0,
    status_ttl: float = 60.0,
    min_refresh_interval: float = 10.0,
    leeway: int = 30,
    counter: UseCounter | None = None,
    subscribe: bool = True,
    insecure: bool = False,
    clock: Clock = time.time,
    stall_s: float | None = None,
    caps: Mapping[str, PurposeCap] | None = None,
) -> RemoteVerifier:
    """A verifier fed over gRPC by the consent service (JWKS, status list, pushed changes).

    ``jwks_ttl`` (s), ``status_ttl`` (s), ``min_refresh_interval`` (s) and ``leeway``
    (s, max 60) as for the caches and :class:`ConsentVerifier`; ``counter`` default:
    counts at the consent service; ``subscribe``: keep the push stream open (else the
    list is refetched at its ttl); ``stall_s``: a push stream silent this long is
    reopened (default 30); ``caps``: the deployment's ``[consent.caps]`` (default: the
    built-in caps), bounding ``exp - iat`` per purpose.
    """
    from fedcredit.consent.client import ConsentClient
    from fedcredit.consent.remote import STALL_S, RemoteUseCounter, StatusWatch

    client = ConsentClient(consent_address, tls, server_org=server_org, insecure=insecure)
    keys = KeyCache(
        client.jwks, ttl=jwks_ttl, min_refresh_interval=min_refresh_interval, clock=clock
    )
    status = StatusCache(
        client.status_list_token,
        keys,
        uri=f"{issuer}/statuslists/1",
        issuer=issuer,
        max_ttl=status_ttl,
        clock=clock,
    )
    watch = StatusWatch(
        client, status.offer, lambda: status.seq, stall_s=STALL_S if stall_s is None else stall_s
    )
    verifier = RemoteVerifier(
        client=client,
        watch=watch,
        issuer=issuer,
        keys=keys,
        status=status,
        counter=counter if counter is not None else RemoteUseCounter(client),
        leeway=leeway,
        clock=clock,
        caps=caps,
    )
    if subscribe:
        watch.start()
    return verifier
