"""Ed25519 signature checks of a batch spread over worker processes (more than one core).

A cold batch verifies one consent token per enterprise, and the signature is most of
that work. Two threads verify little faster than one (the GIL is held between the
libsodium calls; measured for issue 5), so :class:`SignaturePool`
runs ``python -m fedcredit.node.sigpool`` workers and verifies a share of each batch in every
idle worker while the calling thread verifies its own share.

What a worker gets is public: raw Ed25519 public keys (from the consent service's
JWKS), signing inputs and signatures. It answers one byte per signature, 1 only when
:class:`common.ed25519.Ed25519Key` (the same libsodium check the verifier runs) accepts it.
A worker that is busy, not started yet, dies, answers late or answers garbage is
simply not used: its share is verified in the calling thread, so a failure can make a
batch slower but never lets a signature through. The workers run this module's code
and their answers are trusted as the calling thread's own would be. The pool only
answers "does this signature verify"; every other check stays in ``ConsentVerifier``.

Wire format (pipes, big-endian): the worker writes ``R`` once it is ready. A request
is ``!I`` job count, then per job the 32-byte key, ``!I`` signature length, the
signature, ``!I`` message length, the message; the answer is one byte (0/1) per job.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from fedcredit.common.ed25519 import Ed25519Key

log = logging.getLogger(__name__)

Job = tuple[bytes, bytes, bytes]  # raw public key, signing input, signature
_U32 = struct.Struct("!I")
RESTART_AFTER_S = 10.0
PIECE = 32  # signatures per piece of shared work
QUEUED = 4  # pieces sent ahead to each worker


def verify_jobs(jobs: Sequence[Job]) -> list[bool]:
    """True for each job whose signature verifies (the reference; also used in-process)."""
    keys: dict[bytes, Ed25519Key | None] = {}
    out: list[bool] = []
    for raw, msg, sig in jobs:
        if raw in keys:
            key = keys[raw]
        else:
            try:
                key = Ed25519Key(raw)
            except ValueError:
                key = None
            keys[raw] = key
        out.append(key is not None and key.verify(sig, msg))
    return out


def encode_jobs(jobs: Sequence[Job]) -> bytes:
    parts = [_U32.pack(len(jobs))]
    for raw, msg, sig in jobs:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        parts += (raw, _U32.pack(len(sig)), sig, _U32.pack(len(msg)), msg)
    return b"".join(parts)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def decode_jobs(stream: BinaryIO) -> list[Job]:
    (n,) = _U32.unpack(_read_exact(stream, 4))
    jobs: list[Job] = []
    for _ in range(n):
        raw = _read_exact(stream, 32)
        sig = _read_exact(stream, _U32.unpack(_read_exact(stream, 4))[0])
        msg = _read_exact(stream, _U32.unpack(_read_exact(stream, 4))[0])
        jobs.append((raw, msg, sig))
    return jobs


def worker_main(inp: BinaryIO, out: BinaryIO) -> None:
    """The worker loop: read a request, answer it; stop at end of input."""
    out.write(b"R")
    out.flush()
    while True:
        try:
            jobs = decode_jobs(inp)
        except EOFError:
            return
        try:
            out.write(bytes(verify_jobs(jobs)))
            out.flush()
        except BrokenPipeError:  # the node closed the pool or is gone
            return


class _Worker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.failed_at = float("-inf")
        self.owes = 0  # answer bytes of a share done without it, still to be read

    def start(self) -> None:
        self.ready = False
        self.owes = 0
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fedcredit.node.sigpool"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                env={**os.environ, "PYTHONPATH": _source_root()},
            )
        except OSError as exc:
            log.warning("cannot start a signature worker: %s", exc)
            self.proc = None
            self.failed_at = time.monotonic()

    def usable(self) -> bool:
        """Started and said it is ready (never waits). Call with ``lock`` held."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.stop()
                self.failed_at = time.monotonic()
            if time.monotonic() - self.failed_at >= RESTART_AFTER_S:
                self.start()
            return False
        if not self.ready:
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
            if select.select([fd], [], [], 0)[0]:
                self.ready = os.read(fd, 1) == b"R"
                if not self.ready:
                    self.fail("it did not say it was ready")
        if self.ready and self.owes:
            self._drain()
        return self.ready and not self.owes

    def _drain(self) -> None:
        """Read (and drop) what is already there of an answer nobody waits for any more."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while self.owes and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, self.owes)
            if not chunk or any(b > 1 for b in chunk):
                self.fail("the worker exited" if not chunk else "a late answer is garbled")
                return
            self.owes -= len(chunk)

    def answered(self) -> bool:
        """Its answer has started to arrive (never waits)."""
        assert self.proc is not None and self.proc.stdout is not None
        return bool(select.select([self.proc.stdout.fileno()], [], [], 0)[0])

    def fail(self, why: str) -> None:
        log.warning("signature worker failed (%s); verifying in-process", why)
        self.stop()
        self.failed_at = time.monotonic()

    def send(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        fd, view = self.proc.stdin.fileno(), memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def receive(self, n: int, deadline: float) -> list[bool]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer in time")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError("the worker exited")
            buf += chunk
        if any(b > 1 for b in buf):
            raise ValueError("an answer byte is neither 0 nor 1")
        return [b == 1 for b in buf]

    def stop(self) -> None:
        proc, self.proc, self.ready, self.owes = self.proc, None, False, 0
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)


def _source_root() -> str:
    """The directory holding the ``fedcredit`` package, ahead of any inherited PYTHONPATH."""
    import fedcredit

    root = os.path.dirname(os.path.dirname(os.path.abspath(fedcredit.__file__)))
    inherited = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + inherited if inherited else "")


def default_workers() -> int:
    """One worker per core besides the one the calling thread uses (at most 8)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class SignaturePool:
    """Verify a batch's signatures on ``workers`` worker processes plus the calling thread.

    ``min_batch``: smaller batches are verified in the calling thread (a hand-off costs
    more than a few signatures). ``timeout``: seconds a worker has for its share before
    it is given up (and restarted later). Thread-safe: a worker serves one batch at a
    time; a batch arriving while every worker is busy is verified in its own thread.
    Workers start with the first batch big enough to use them (that batch is verified in
    the calling thread while they start), so a node that never gets one runs none.
    """

    def __init__(self, workers: int, *, min_batch: int = 32, timeout: float = 10.0) -> None:
        self.min_batch = min_batch
        self.timeout = timeout
        self._workers = [_Worker() for _ in range(workers)]
        self._closed = False
        self.batches = 0  # batches that used at least one worker
        self.fallbacks = 0  # worker shares verified in-process after a failure
        self.stolen = 0  # worker shares verified in-process before the worker answered

    @property
    def workers(self) -> int:
        return len(self._workers)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Start the workers and block until every one is ready (benchmarks, tests); True
        if all are."""
        deadline = time.monotonic() + timeout
        for w in self._workers:
            while time.monotonic() < deadline:
                with w.lock:
                    if w.usable():
                        break
                time.sleep(0.01)
            else:
                return False
        return True

    def verify_many(self, jobs: Sequence[Job]) -> list[bool]:
        """One bool per job, True only if its signature verifies."""
        return [ok for chunk in self.verify_chunks(jobs) for ok in chunk]

    def verify_chunks(self, jobs: Sequence[Job]) -> Iterator[list[bool]]:
        """The answers of :meth:`verify_many` in chunks, in job order: the calling thread's
        share first (so the caller can go on with it while the workers finish theirs),
        then each worker's."""
        if len(jobs) < self.min_batch or self._closed:
            yield verify_jobs(jobs)
            return
        free: list[_Worker] = []
        for w in self._workers:
            if w.lock.acquire(blocking=False):
                if w.usable():
                    free.append(w)
                else:
                    w.lock.release()
        try:
            if not free:
                yield verify_jobs(jobs)
                return
            yield from self._spread(jobs, free)
        finally:
            for w in free:
                w.lock.release()

    def _spread(self, jobs: Sequence[Job], free: list[_Worker]) -> Iterator[list[bool]]:
        """Share the work piece by piece, in job order: each worker keeps a few pieces
        queued, this thread takes the next piece whenever it comes back, and answers are
        handed on as soon as a prefix of the batch is complete (the caller checks those
        tokens' claims while the workers go on). This thread never waits for a worker: once
        nothing is left it verifies the pieces still queued at a worker itself (newest
        first; the worker's late answers are read and dropped before it is used again), so
        a worker without a free core costs at most a few pieces done twice."""
        s = _Spread(self, jobs, free)
        self.batches += 1
        emitted = 0
        while True:
            s.collect()
            for lo, hi in s.redo:
                s.verify_here(lo, hi)
            s.redo.clear()
            s.top_up()
            while emitted in s.done:
                answer = s.done.pop(emitted)
                emitted += len(answer)
                yield answer
            if s.front < s.n:  # the next piece, here
                lo, hi = s.front, min(s.front + PIECE, s.n)
                s.front = hi
                s.verify_here(lo, hi)
                continue
            late = [w for w, q in s.queued.items() if q]
            if not late:
                break
            w = late[0]
            lo, hi = s.queued[w].pop()  # its newest: answered after the ones it keeps
            s.verify_here(lo, hi)
            w.owes += hi - lo
            self.stolen += 1
        while emitted in s.done:
            answer = s.done.pop(emitted)
            emitted += len(answer)
            yield answer

    def close(self) -> None:
        self._closed = True
        for w in self._workers:
            with w.lock:
                w.stop()


class _Spread:
    """The state of one batch shared out by :meth:`SignaturePool._spread`: which pieces
    each worker holds, the answers in, the pieces to redo here."""

    def __init__(self, pool: SignaturePool, jobs: Sequence[Job], free: list[_Worker]) -> None:
        self.pool = pool
        self.jobs = jobs
        self.n = len(jobs)
        self.front = 0  # the next job not handed to anyone
        self.queued: dict[_Worker, deque[tuple[int, int]]] = {w: deque() for w in free}
        self.done: dict[int, list[bool]] = {}  # start of a finished piece -> its answers
        self.redo: list[tuple[int, int]] = []  # pieces of failed workers, verified here
        # for an answer that has begun to arrive
        self.deadline = time.monotonic() + pool.timeout

    def verify_here(self, lo: int, hi: int) -> None:
        self.done[lo] = verify_jobs(self.jobs[lo:hi])

    def top_up(self) -> None:
        """Hand each usable worker pieces until it holds ``QUEUED`` of them."""
        for w, q in list(self.queued.items()):
            while len(q) < QUEUED and self.front < self.n and w.proc is not None and not w.owes:
                lo, hi = self.front, min(self.front + PIECE, self.n)
                try:
                    w.send(encode_jobs(self.jobs[lo:hi]))
                except (OSError, ValueError) as exc:
                    self.give_up(w, f"request not sent: {exc}")
                    break
                q.append((lo, hi))
                self.front = hi

    def give_up(self, w: _Worker, why: str) -> None:
        """The worker failed: its pieces are verified here, it is not used again."""
        q = self.queued.pop(w)
        self.redo.extend(q)
        w.fail(why)
        self.pool.fallbacks += 1 if q else 0

    def collect(self) -> None:
        """Read every answer that has arrived (never waits for one to begin)."""
        fds = {
            w.proc.stdout.fileno(): w
            for w, q in self.queued.items()
            if q and w.proc is not None and w.proc.stdout is not None
        }
        if not fds:
            return
        for fd in select.select(list(fds), [], [], 0)[0]:
            w = fds[fd]
            lo, hi = self.queued[w][0]
            try:
                self.done[lo] = w.receive(hi - lo, self.deadline)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:
                self.give_up(w, str(exc))
                continue
            self.queued[w].popleft()


if __name__ == "__main__":
    worker_main(sys.stdin.buffer, sys.stdout.buffer)
