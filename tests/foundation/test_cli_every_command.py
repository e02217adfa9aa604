"""Every `fedcredit` command, hostile values in each of its parameters (issue 17).

The commands are walked from the Typer app the entry point builds (``clients.cli.build_app``),
so a command is covered by being registered: nothing here lists them. For each command,
hypothesis picks one parameter and a hostile value of its type (integers at and beyond
2^31 and 2^63 and negative, NaN and infinite floats, binary, huge, JSON, bad-TOML, empty
and missing files, directories, JSON and unicode and 100k-character strings), fills the
others with plausible values, and runs the real entry point in-process against a
deployment whose services are not running. Whatever it does must end in one line on
stderr (one JSON error with ``--json``), a documented exit code other than INTERNAL, and
no traceback.

Commands that, given usable input, run until stopped or start other processes (servers,
`up`, `watch`, `demo`, `train`) or compute for minutes (`world simulate`/`generate`) get
hostile values only: each must refuse it before starting. A guard turns a command still
running after ``GUARD_S`` into a failure naming the value it accepted.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click
import pytest
import typer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedcredit.clients import cli
from fedcredit.common.deploy import write_local_deployment
from fedcredit.common.uscc import generate
from tests.foundation.test_cli_hostile import BANK, assert_one_line

USCC = generate(random.Random(11))
GUARD_S = 20
# Leaf names of commands that run until stopped, start processes or compute for minutes.
LONG_RUNNING = {"serve", "up", "watch", "demo", "train", "simulate", "generate"}


def _walk(c: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    if isinstance(c, click.Group):
        for name, sub in c.commands.items():
            yield from _walk(sub, [*path, name])
    else:
        yield path, c


COMMANDS = list(_walk(typer.main.get_command(cli.build_app()), []))


def _kind(p: click.Parameter) -> str:
    t = p.type
    if isinstance(t, click.types.BoolParamType) or getattr(p, "is_flag", False):
        return "flag"
    if isinstance(t, click.Choice):
        return "choice"
    if isinstance(t, click.types.IntParamType):
        return "int"
    if isinstance(t, click.types.FloatParamType):
        return "float"
    if isinstance(t, click.Path | click.File):
        return "path"
    return "str"


HOSTILE_INTS = ["2147483648", "9223372036854775808", "-9223372036854775809", "-1", "0"]
HOSTILE_FLOATS = ["nan", "inf", "-inf", "-1", "1e400"]
HOSTILE_STRS = ['{"token": "x"}', "é\u202e\U0001f600", "x" * 100_000, "", "../../../etc/passwd"]
HOSTILE_FILES = ["binary", "huge", "json", "toml", "empty", "missing", "dir", "not-utf8"]


def _file(kind: str, where: Path) -> str:
    f = where / f"hostile-{kind}"
    data = {
        "binary": b"\x00\xff\xfe\x81\xcc" * 400,
        "huge": b"A" * 20_000_000,
        "json": b'{"a": [1, {"b": null}]}',
        "toml": b"[[[\nx = = 1\n",
        "empty": b"",
        "not-utf8": b'name = "\xff\xfe"\n',
    }
    if kind == "dir":
        f.mkdir(exist_ok=True)
    elif kind in data:
        f.write_bytes(data[kind])
    return str(f)


def _plausible(p: click.Parameter, dep: Path, tmp: Path) -> str:
    """A value a person might well give (the command may still refuse it: that is fine)."""
    name = (p.opts[0] if p.opts else p.name or "").lstrip("-").replace("-", "_")
    by_name = {
        "config": str(dep), "bank": BANK, "enterprise": USCC, "as": BANK, "org": BANK,
        "pki": str(dep.parent / "pki"), "address": "127.0.0.1:9", "department": "tax",
        "purpose": "credit_assessment", "dir": str(tmp / "out-dir"), "out": str(tmp / "out"),
    }  # fmt: skip
    if name in by_name:
        return by_name[name]
    kind = _kind(p)
    if p.default is not None and not callable(p.default) and kind != "path":
        d = p.default[0] if isinstance(p.default, list | tuple) and p.default else p.default
        if d not in ([], ()):
            return str(d)
    if kind == "path":
        f = tmp / f"plausible-{name}"
        f.write_text("x\n")
        return str(f)
    return {"int": "1", "float": "1.0", "choice": _first_choice(p)}.get(kind, "x")


def _first_choice(p: click.Parameter) -> str:
    return str(p.type.choices[0]) if isinstance(p.type, click.Choice) else "x"


# For commands that would run for long on a usable value: integers no count, seed or port
# can be (a seed of 2^31 is a seed: the command would rightly go on with it).
HOSTILE_INTS_LONG = ["9223372036854775808", "-9223372036854775809", "-1"]


# Where a command writes: a new path or a file there may be just what the person wants (a
# long-running command would go on with it; the short ones are tried with every value).
OUTPUTS = {"out", "dir", "save", "work_dir", "model_out", "plot", "report"}


def _hostile(p: click.Parameter, long_running: bool = False) -> list[str]:
    if long_running and p.name in OUTPUTS:
        return []
    ints = HOSTILE_INTS_LONG if long_running else HOSTILE_INTS
    return {
        "int": ints, "float": HOSTILE_FLOATS, "path": HOSTILE_FILES, "str": HOSTILE_STRS,
    }.get(_kind(p), [])  # fmt: skip


def _argv(
    path: list[str], cmd: click.Command, target: str, value: str, dep: Path, tmp: Path
) -> list[str]:
    """The command line with ``value`` in parameter ``target``, plausible values in the
    other required ones (and in none of the optional ones)."""
    args: list[str] = [*path]
    for p in cmd.params:
        if p.name in ("as_json", "json"):
            continue
        if _kind(p) == "flag":  # a required one (--accept/--reject) is given, or click refuses
            args += [p.opts[0]] if p.required else []
            continue
        if p.name == target:
            v = _file(value, tmp) if _kind(p) == "path" else value
        elif p.required:
            v = _plausible(p, dep, tmp)
        else:
            continue
        if isinstance(p, click.Argument):
            args.append(v)
        else:
            args += [p.opts[0], v]
    return args


class StillRunning(BaseException):
    """Raised by the guard: the command accepted the value and went on working."""


def _guard(_signum: int, _frame: FrameType | None) -> None:
    raise StillRunning


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    old, old_handler = sys.argv, signal.signal(signal.SIGALRM, _guard)
    sys.argv = ["fedcredit", *argv]
    signal.alarm(GUARD_S)
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except StillRunning:
        code = -1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_deployment(tmp_path_factory.mktemp("every") / "dep", name="every")


def test_the_walk_finds_every_group_and_the_new_commands() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {p[0] for p, _ in COMMANDS} >= set(cli.GROUPS) - {"operator"} | {"up", "status"}
    for must in ("portal serve", "policy serve", "market serve", "bank market claim",
                 "enterprise market post", "world simulate", "operator compose",
                 "operator probe", "up", "down", "status"):  # fmt: skip
        assert must in names, must


def _cases(path: list[str], cmd: click.Command) -> st.SearchStrategy[tuple[str, str, bool]]:
    long_running = path[-1] in LONG_RUNNING
    params = [p for p in cmd.params if _hostile(p, long_running) and p.name != "as_json"]
    return st.sampled_from(params).flatmap(
        lambda p: st.tuples(
            st.just(p.name or ""), st.sampled_from(_hostile(p, long_running)), st.booleans()
        )
    )


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_answers_hostile_values_in_one_line(
    path: list[str],
    cmd: click.Command,
    dep: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    long_running = path[-1] in LONG_RUNNING
    if not [p for p in cmd.params if _hostile(p, long_running) and p.name != "as_json"]:
        pytest.skip(f"{' '.join(path)} has no parameter a hostile value fits (flags, choices)")
    has_json = any(p.name == "as_json" or "--json" in getattr(p, "opts", []) for p in cmd.params)

    @settings(
        max_examples=8, deadline=None, phases=[Phase.generate],  # a failure as found
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )  # fmt: skip
    @given(case=_cases(path, cmd))
    def check(case: tuple[str, str, bool]) -> None:
        target, value, as_json = case
        tmp = tmp_path_factory.mktemp("case")
        cwd = os.getcwd()
        os.chdir(tmp)  # a command's relative default paths land here
        try:
            argv = _argv(path, cmd, target, value, dep, tmp)
            if as_json and has_json:
                argv.append("--json")
            code, out, err = _run(argv, capsys)
        finally:
            os.chdir(cwd)
            if path == ["up"]:  # whatever it started (it should start nothing) is stopped
                _run(["down", "--config", str(dep)], capsys)
        shown = value if len(value) < 60 else f"{value[:20]}... ({len(value)} chars)"
        where = f"`fedcredit {' '.join(path)}` with {target}={shown!r}"
        if code == -1:
            assert not long_running, f"{where}: still running after {GUARD_S} s"
            return  # accepted and working on it (a plausible value for a short command)
        if code == 0 and long_running:
            pytest.fail(f"{where}: a long-running command accepted a hostile value and ended 0")
        assert "Traceback" not in out + err, f"{where}: {err or out}"
        if code == 0 or (code == 1 and out.strip() and not err.strip()):
            return  # taken as a usable value (1: a check's own negative result, on stdout)
        try:
            assert_one_line(code, out, err, json_mode=as_json and has_json and code != 2)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None

    check()
