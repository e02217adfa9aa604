"""The server's view of the banks in one run: who is there, asking them, counting bytes,
and exact secure sums through Flower's SecAgg+ workflow."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedcredit.common.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from fedcredit.training.flower import masking, secure, sums
from fedcredit.training.server.settings import TrainSettings

log = logging.getLogger(__name__)


class NotEnoughBanks(FailedPrecondition):
    reason = "NOT_ENOUGH_BANKS"


class BankDropped(Unavailable):
    """A bank stopped answering mid-training; the run stops rather than train on fewer rows."""

    reason = "BANK_DROPPED"


class SecureAggregationFailed(Unavailable):
    reason = "SECURE_AGGREGATION_FAILED"


class BanksTooSlow(DeadlineExceeded):
    reason = "BANKS_TOO_SLOW"


def payload_bytes(rd: RecordDict) -> int:
    """Bytes of a message's content (array data, config values), the part that grows."""
    total = 0
    for rec in rd.array_records.values():
        for arr in rec.values():
            total += len(arr.data)
    for cfg in rd.config_records.values():
        for v in cfg.values():
            total += _value_bytes(v)
    for met in rd.metric_records.values():
        total += 8 * len(met)
    return total


def _value_bytes(v: Any) -> int:
    if isinstance(v, bytes):
        return len(v)
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    return 8


# Flower reports a ClientApp's exception as "<class '...'>:<'message'>" (nested once more
# by its ClientAppException); our errors' text is "REASON: sentence".
_OUR_ERROR = re.compile(r"([A-Z][A-Z0-9_]{2,}: [^\n]*?)'>")


def bank_error(reason: str) -> str:
    """The bank's own error sentence out of Flower's wrapping (which names its file)."""
    m = _OUR_ERROR.search(reason)
    return m.group(1) if m else reason.strip()


@dataclass
class Traffic:
    down: int = 0  # server -> banks, all banks together
    up: int = 0  # banks -> server
    messages: int = 0
    # Round trips: each push to some banks and wait for all their replies (a SecAgg+ sum
    # costs several: its key set-up, share, masked-vector and unmask stages).
    rounds: int = 0


class CountingGrid:
    """A Grid proxy that counts the payload bytes of everything sent and received."""

    def __init__(self, grid: Grid, traffic: Traffic) -> None:
        self._grid = grid
        self.traffic = traffic

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull with a short, growing poll interval.

        Flower's own ``send_and_receive`` sleeps a fixed 0.1 s (simulation) or 3 s
        (deployment, over HTTP) between pulls; a `hist` tree is only a few short
        rounds, so that sleep would dominate the training time. Against a SuperLink
        with long polls (training/flower/fastpull.py) a pull returns as soon as a
        reply is there, so this loop does not sleep at all.
        """
        msgs = list(messages)
        for m in msgs:
            self.traffic.down += payload_bytes(m.content)
        self.traffic.messages += len(msgs)
        self.traffic.rounds += 1
        ids = [i for i in self._grid.push_messages(msgs) if i]
        pending = set(ids)
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = 0.001
        while pending:
            asked = time.monotonic()
            got = list(self._grid.pull_messages(list(pending)))
            for r in got:
                pending.discard(r.metadata.reply_to_message_id)
                replies.append(r)
            if not pending or (deadline is not None and time.monotonic() > deadline):
                break
            if not got:
                # Polls are ``wait`` apart from start to start: a SuperLink that held
                # the pull until a reply came or its hold ran out (fastpull's long
                # polls) has already waited.
                time.sleep(max(0.0, wait - (time.monotonic() - asked)))
                wait = min(wait * 1.5, 0.05)
        for r in replies:
            if r.has_content():
                self.traffic.up += payload_bytes(r.content)
        return replies


@dataclass
class Federation:
    grid: CountingGrid
    context: Context
    settings: TrainSettings
    nodes: list[int] = field(default_factory=list)
    # Flower node id -> the bank's organisation id (or CSV file name), from the setup
    # round; messages name banks by it, never by a random node id.
    names: dict[int, str] = field(default_factory=dict)
    # Flower node id -> (rows with label 1, rows), from the setup round.
    positives: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Flower node id -> the bank's X25519 public key for one-round secure sums (setup).
    keys: dict[int, bytes] = field(default_factory=dict)
    # Signed keys (banks with an identity): node -> the key's signature and certificate.
    key_proofs: dict[int, masking.Entry] = field(default_factory=dict)
    _round: int = 0
    _secure_seq: int = 0

    def bank(self, node: int) -> str:
        """How a message names the bank behind ``node``."""
        name = self.names.get(node)
        return f"bank {name}" if name else "a bank not yet identified"

    @classmethod
    def connect(cls, grid: Grid, context: Context, settings: TrainSettings) -> Federation:
        want = settings.expected_banks
        deadline = time.monotonic() + settings.wait_for_banks
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= want:
                break
            if time.monotonic() > deadline:
                why = f" (SecAgg+ needs {secure.MIN_BANKS}: {secure.WHY_MIN_BANKS})"
                raise NotEnoughBanks(
                    f"expected at least {want} banks to connect within "
                    f"{settings.wait_for_banks:.0f} s, got {len(nodes)}"
                    + (why if settings.secagg and len(nodes) < secure.MIN_BANKS else ""),
                    expected=want,
                    got=len(nodes),
                )
            time.sleep(0.2)
        return cls(CountingGrid(grid, Traffic()), context, settings, nodes)

    @property
    def traffic(self) -> Traffic:
        return self.grid.traffic

    def next_group(self) -> str:
        self._round += 1
        return str(self._round)

    def ask(
        self,
        message_type: str,
        content: Callable[[], RecordDict],
        nodes: list[int] | None = None,
    ) -> dict[int, RecordDict]:
        """Send to every bank (or ``nodes``) and return each bank's reply; all must answer."""
        targets = self.nodes if nodes is None else nodes
        group = self.next_group()
        msgs = [Message(content(), n, message_type, group_id=group) for n in targets]
        replies = list(self.grid.send_and_receive(msgs, timeout=self.settings.round_timeout))
        out: dict[int, RecordDict] = {}
        problems: list[str] = []
        for r in replies:
            src = r.metadata.src_node_id
            if r.has_error():
                problems.append(f"{self.bank(src)} failed: {bank_error(r.error.reason or '')}")
            else:
                out[src] = r.content
        missing = [n for n in targets if n not in out and not any(str(n) in p for p in problems)]
        if missing:
            problems.append(
                f"no answer within {self.settings.round_timeout:.0f} s from "
                + ", ".join(self.bank(n) for n in missing)
            )
        if problems:
            raise BankDropped(
                f"{message_type} round {group}: expected answers from all {len(targets)} "
                f"banks, got {len(out)}; " + "; ".join(problems),
                round=group,
            )
        return out

    def floor(self, rounds: int) -> float:
        """Mean seconds of an empty round to every bank: what the engine costs per round."""
        start = time.perf_counter()
        for _ in range(rounds):
            self.ask("query.ping", RecordDict)
        return (time.perf_counter() - start) / max(rounds, 1)

    # -- secure sums -------------------------------------------------------------

    def masked_sum(self, op: str, payload: dict[str, Any]) -> np.ndarray:
        """Exact int64 sum over all banks of the vector each computes for ``op``, in one
        round: each bank masks its vector with pairwise masks that cancel in the sum
        (training/flower/masking.py)."""
        n = len(self.nodes)
        if n < secure.MIN_BANKS:
            raise NotEnoughBanks(
                f"secure sums need at least {secure.MIN_BANKS} banks, got {n}: "
                f"{secure.WHY_MIN_BANKS}"
            )
        missing = [self.bank(nid) for nid in self.nodes if nid not in self.keys]
        if missing:
            raise SecureAggregationFailed(
                "no secure-sum key from " + ", ".join(missing) + " (setup round)"
            )
        self._secure_seq += 1
        cfg: dict[str, Any] = {
            "op": op,
            "payload": json.dumps(payload),
            "seq": self._secure_seq,
            "roster": masking.roster_json(
                {nid: self.keys[nid] for nid in self.nodes}, self.key_proofs
            ),
        }
        replies = self.ask(
            "train.masked",
            lambda: RecordDict({"config": ConfigRecord(cast(Any, cfg))}),
        )
        return masking.unmask_sum([sums.unpack(rd, "masked") for rd in replies.values()])

    def secure_sum(self, op: str, payload: dict[str, Any]) -> np.ndarray:
        """Exact int64 sum over all banks of the vector each computes for ``op``, via SecAgg+."""
        n = len(self.nodes)
        if n < secure.MIN_BANKS:
            raise NotEnoughBanks(
                f"SecAgg+ needs at least {secure.MIN_BANKS} banks, got {n}: {secure.WHY_MIN_BANKS}"
            )
        if n > secure.MAX_BANKS:
            raise secure.TooManyBanksForSecAgg(
                f"secure aggregation supports at most {secure.MAX_BANKS} banks, got {n}"
            )
        strategy = _SumStrategy({"op": op, "payload": json.dumps(payload)})
        manager = SimpleClientManager()
        run_id = self.context.run_id
        for nid in self.nodes:
            manager.register(GridClientProxy(nid, self.grid, run_id))  # type: ignore[arg-type]
        legacy = LegacyContext(
            self.context,
            config=ServerConfig(num_rounds=1),
            strategy=strategy,
            client_manager=manager,
        )
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: int(self.next_group())}
        )
        legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        workflow = SecAggPlusWorkflow(
            num_shares=n,
            # a bank's secrets can be rebuilt from 2/3 of the others: survives drops after
            # masking, and no single other bank (or the server) can unmask alone
            reconstruction_threshold=max(2, min(n - 1, math.ceil(2 * n / 3))),
            max_weight=1.0,
            clipping_range=secure.CLIPPING_RANGE,
            quantization_range=secure.QUANTIZATION_RANGE,
            modulus_range=secure.MODULUS_RANGE,
            timeout=self.settings.round_timeout,
        )
        workflow(self.grid, legacy)  # type: ignore[arg-type]
        if strategy.mean_limbs is None:
            raise SecureAggregationFailed(
                f"SecAgg+ round for {op!r} halted before the sum could be unmasked "
                f"(too few banks answered; threshold {workflow.reconstruction_threshold})"
            )
        if strategy.banks < n:
            raise BankDropped(
                f"secure {op} round: expected masked vectors from all {n} banks, got "
                f"{strategy.banks}; SecAgg+ unmasked the sum of the rest, but training on "
                "part of the rows would not be the model the banks agreed to train"
            )
        return secure.decode(strategy.mean_limbs, strategy.banks)


class _SumStrategy(Strategy):
    """Legacy Strategy shim: the SecAgg+ workflow asks it whom to ask and hands it the sum."""

    def __init__(self, config: dict[str, Scalar]) -> None:
        self.config = config
        self.mean_limbs: np.ndarray | None = None
        self.banks = 0

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [
            (proxy, FitIns(parameters, dict(self.config)))
            for _, proxy in sorted(client_manager.all().items())
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            self.banks = len(results)
            self.mean_limbs = parameters_to_ndarrays(results[0][1].parameters)[0]
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[Any]:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None
