"""Hostile values on the command line: always one line, a documented exit code, no traceback.

Each case runs the real `fedcredit` entry point (``clients.cli.main``) in-process against a
deployment made by ``fedcredit init`` whose services are not running: what is checked is
what a person sees for input the command cannot use, before or instead of any RPC.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcredit.clients import cli
from fedcredit.common.cliutil import EXIT_CODES, EXIT_VERIFICATION_FAILED
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.uscc import generate
from fedcredit.ledger.keys import load_or_create_signer

DOCUMENTED = {0, EXIT_VERIFICATION_FAILED, 2, *EXIT_CODES.values()}
BANK = "bank-icbc-weihai"
USCC = generate(random.Random(7))


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_deployment(tmp_path_factory.mktemp("hostile") / "dep", name="hostile")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["fedcredit", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, out: str, err: str, *, json_mode: bool = False) -> None:
    assert "Traceback" not in out + err
    assert code in DOCUMENTED, f"undocumented exit code {code}: {err}"
    assert code != 12, f"INTERNAL for user input: {err or out}"
    if json_mode:
        assert "error" in json.loads(out)
        return
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:  # click's usage box names the option; it is not ours to reformat
        assert any("Invalid value" in line or "Error" in line for line in lines), err
        return
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {err!r}"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CASES: list[tuple[str, bytes | None, list[str], int]] = [
    # (name, bytes of the file {f}, argv with {cfg} and {f}, expected exit code)
    ("binary config", b"\xcc\xff\x00\x81" * 50, ["status", "--config", "{f}"], 3),
    ("TOML that is not a deployment", b"a = 1\n", ["status", "--config", "{f}"], 3),
    ("config that is not TOML", b"[[[\n", ["status", "--config", "{f}"], 3),
    ("missing config", None, ["status", "--config", "{f}"], 3),
    (
        "token file holding JSON",
        b'{"token": "x"}',
        ["bank", "score", "--config", "{cfg}", "--bank", BANK, "--enterprise", USCC,
         "--consent", "{f}"],
        3,
    ),
    (
        "token file starting with { that is not JSON",
        b"{",
        ["bank", "score", "--config", "{cfg}", "--bank", BANK, "--enterprise", USCC,
         "--consent", "{f}"],
        3,
    ),
    (
        "token file holding a JSON list",
        b"[1, 2]",
        ["bank", "score", "--config", "{cfg}", "--bank", BANK, "--enterprise", USCC,
         "--consent", "{f}"],
        3,
    ),
    (
        "token file holding binary",
        b"\x00\xff\xfe\x81" * 40,
        ["bank", "score", "--config", "{cfg}", "--bank", BANK, "--enterprise", USCC,
         "--consent", "{f}"],
        3,
    ),
    ("replay of a missing export", None,
     ["audit", "replay", "--export", "{f}", "--log-key", "{vkey}"], 4),
    (
        "score-batch input that is binary",
        b"\xff\xfe\x00\x81" * 40,
        ["bank", "score-batch", "--config", "{cfg}", "--bank", BANK, "--input", "{f}"],
        3,
    ),
    # found by tests/foundation/test_cli_every_command.py (each was INTERNAL, exit 12, or
    # a progress line before the error, or — `up` — exit 0 having started nothing)
    ("simulate with no months", None, ["world", "simulate", "--months", "0", "--out", "{f}"], 3),
    ("simulate with a negative seed", None, ["world", "simulate", "--seed", "-1", "--out", "{f}"], 3),
    ("simulate with no enterprises", None,
     ["world", "simulate", "--enterprises", "-1", "--out", "{f}"], 3),
    ("generate with a negative seed", None, ["world", "generate", "--seed", "-1", "--out", "{f}"], 3),
    ("compose into a file", b"x", ["operator", "compose", "--out", "{f}"], 3),
    ("up with an unknown service", None, ["up", "--config", "{cfg}", "--only", "nosuch"], 3),
    ("up with a NaN timeout", None, ["up", "--config", "{cfg}", "--timeout", "nan"], 3),
    ("init on a port beyond 65535", None, ["init", "--dir", "{f}", "--base-port", "2147483648"], 3),
    ("init named with 100k characters", None, ["init", "--dir", "{f}", "--name", "n" * 100_000], 3),
    ("product spec that is a JSON list", b"[1]",
     ["bank", "market", "publish", "{f}", "--as", BANK, "--pki", "{pki}"], 3),
    ("product spec that is not JSON", b"A" * 20_000,
     ["bank", "market", "publish", "{f}", "--as", BANK, "--pki", "{pki}"], 3),
    ("market token file of 100 KB", b"A" * 100_000,
     ["bank", "market", "reveal", "n1", "{f}", "--as", BANK, "--pki", "{pki}"], 3),
    ("market address that is empty", b"a.b.c",
     ["bank", "market", "reveal", "n1", "{f}", "--as", BANK, "--pki", "{pki}", "--address", ""], 3),
    ("watch list with a cell too large for CSV", b"enterprise,token\n" + b"x" * 200_000,
     ["bank", "watch", "--config", "{cfg}", "--bank", BANK, "--input", "{f}"], 3),
    ("organisation id of 100k characters", None,
     ["fund", "status", "--config", "{cfg}", "--org", "o" * 100_000], 4),
    ("probe of an address that is not HOST:PORT", None,
     ["operator", "probe", "--plain-health", "../../etc/passwd"], 3),
    ("probe with a NaN timeout", None,
     ["operator", "probe", "--plain-health", "127.0.0.1:9", "--timeout", "nan"], 3),
    ("organisation id that is a path", None,
     ["fund", "status", "--config", "{cfg}", "--org", "../../../etc/passwd"], 4),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "argv", "code"), CASES, ids=[c[0] for c in CASES])
def test_hostile_case_is_one_line(
    name: str,
    data: bytes | None,
    argv: list[str],
    code: int,
    dep: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f = tmp_path / "input.bin"
    if data is not None:
        _write(f, data)
    vkey = load_or_create_signer(tmp_path / "log.key", "hostile.example/log").verifier.vkey
    pki = str(dep.parent / "pki")
    args = [
        a.replace("{cfg}", str(dep)).replace("{f}", str(f)).replace("{vkey}", vkey)
        .replace("{pki}", pki)
        for a in argv
    ]  # fmt: skip
    got, out, err = run(args, capsys)
    assert_one_line(got, out, err)
    assert got == code, f"{name}: expected exit {code}, got {got}: {err}"
    if data is None:  # refused before anything was written where it would have written
        assert not f.exists(), f"{name}: refused, yet {f} was created"
    got, out, err = run([*args, "--json"], capsys)
    assert_one_line(got, out, err, json_mode=True)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=0, max_size=400))
def test_any_bytes_as_config_are_one_line(
    data: bytes, dep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _write(tmp_path / "any.toml", data)
    code, out, err = run(["status", "--config", str(f)], capsys)
    assert_one_line(code, out, err)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(days=st.integers(min_value=-(2**70), max_value=2**70), uses=st.integers(-(2**70), 2**70))
def test_any_integers_for_a_grant_are_one_line(
    days: int, uses: int, dep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["enterprise", "consent", "grant", "--config", str(dep), "--as", USCC, "--bank", BANK,
         "--purpose", "credit_assessment", "--score-only", "--days", str(days),
         "--uses", str(uses)],
        capsys,
    )  # fmt: skip
    assert_one_line(code, out, err)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=0, max_size=200))
def test_any_text_as_a_token_or_code_is_one_line(
    text: str, dep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = tmp_path / "tok.jwt"
    tok.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out, err = run(
        ["bank", "score", "--config", str(dep), "--bank", BANK, "--enterprise", text or "x",
         "--consent", str(tok)],
        capsys,
    )  # fmt: skip
    assert_one_line(code, out, err)


def test_an_error_naming_a_toml_table_prints_its_brackets(
    dep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The message names "[[organisations]]": printed as text, not swallowed as markup.
    code, _out, err = run(["policy", "list", "--config", str(dep), "--as", "nobody"], capsys)
    assert code == 4, err
    assert "[[organisations]]" in err and err.count("\n") == 1, err
