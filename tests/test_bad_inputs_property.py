"""Property-based bad input: for every command and every option it takes, values generated at and beyond every bound
(negative and huge integers, NaN and infinities, empty, blank, control-character, unicode and path-like strings) are
each one `error:` line, exit 2, no traceback, nothing changed, answered within seconds.

The default profile draws a bounded number of examples (CI); `pytest -m long` runs the long profile.
"""

from __future__ import annotations

import signal
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import ROOT, Outcome, run_in_process, snapshot, workspace  # noqa: F401  (the shared fixture)

from cofre import cli

# A valid start for every command: the option under test is appended, so the value it is given is what fails.
BASE: dict[str, list[str]] = {
    "train": ["train", "tiny.yaml", "--run-dir", "hyp-new"],
    "consistency": ["consistency", "run", "--run-dir", "hyp-new"],
    "adapt": ["adapt", "run", "--run-dir", "hyp-new"],
    "distill": ["distill", "light", "--run-dir", "hyp-new"],
    "shortcut": ["shortcut", "img", "--recipe", "sc.yaml", "--run-dir", "hyp-new"],
    "convert": ["convert", "light", "--map", "all", "--run-dir", "hyp-new"],
    "inspect": ["inspect", "run"],
    "sample": ["sample", "run", "--out", "hyp-new.jsonl"],
    "evaluate": ["evaluate", "run", "--metrics", "valppl", "--report-dir", "hyp-new"],
    "sweep": ["sweep", "run", "--report-dir", "hyp-new"],
    "cka": ["cka", "run", "--report-dir", "hyp-new"],
    "probe": ["probe", "run"],
    "export": ["export", "run", "hyp-new"],
    "lagged-kl": ["lagged-kl", "run", "run", "--report-dir", "hyp-new"],
    "trace-plot": ["trace-plot", "trace.jsonl", "--report-dir", "hyp-new"],
    "stage-plot": ["stage-plot", "run", "--report-dir", "hyp-new"],
    "step-importance": ["step-importance", "run", "light", "--report-dir", "hyp-new"],
    "schedule-search": ["schedule-search", "run", "light", "--report-dir", "hyp-new"],
    "claims": ["claims", str(ROOT / "recipes" / "claims-small.yaml"), "--report-dir", "hyp-new"],
}
# Options whose every string is refused only in shapes: a name or a list, never free text.
OUTPUTS = {"--out", "--out-dir", "--report-dir", "--run-dir", "--trace"}

INTS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64), st.sampled_from([-1, 10**30, 10**400]))
FLOATS = st.sampled_from(["nan", "inf", "-inf", "-nan", "1e999"])
TEXT = st.sampled_from(["", " ", "\t", "\x07", "a\x00b", ",", ",,", "1,,2", "1e999", "nan", "☃☃", "../..",
                        "a/b", "~", "0x10"])
PATHS = st.sampled_from(["", " ", "a\x00b", "no/such/☃", "nowhere", "\x07", "afile.txt/x"])
OUTPUT_PATHS = st.sampled_from(["a\x00b", "afile.txt/x", "afile.txt" + "/sub" * 2])


def _options() -> list[tuple[str, str, type]]:
    """(command, option, value type) for every non-flag option of every command."""
    group = typer.main.get_command(cli.app)
    found = []
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        hints = typing.get_type_hints(command.callback)
        for param in command.params:
            if param.param_type_name != "option" or param.is_flag or param.name in ("num_processes",):
                continue
            kind = _bare(hints[param.name])
            found.append((name, param.opts[0], kind))
    return found


def _bare(tp: typing.Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _bare(args[0]) if args else tp


OPTIONS = _options()


def _value(option: str, kind: type) -> st.SearchStrategy[str]:
    if kind is int:
        return INTS.map(str)
    if kind is float:
        return FLOATS
    if kind is Path:
        return OUTPUT_PATHS if option in OUTPUTS else PATHS
    return TEXT if option != "--labels" else st.sampled_from(["", "a/b", "../..", "\x07", "a\x00b"])


CASE = st.sampled_from(OPTIONS).flatmap(lambda o: st.tuples(st.just(o), _value(o[1], o[2])))


@contextmanager
def answered_within(seconds: int) -> Iterator[None]:
    def hang(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(workspace: Path, args: list[str]) -> None:  # noqa: F811
    before = snapshot(workspace)
    with answered_within(30):
        outcome: Outcome = run_in_process(args, workspace)
    text = outcome.stdout + outcome.stderr
    assert "Traceback" not in text, (args, outcome.stderr)
    assert outcome.code == 2, (args, outcome.code, outcome.stderr[-2000:])
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, outcome.stderr)
    assert snapshot(workspace) == before, args


def test_every_command_has_a_valid_start() -> None:
    assert {name for name, _, _ in OPTIONS} <= set(BASE)


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=CASE)
def test_generated_option_values_are_refused_cleanly(workspace: Path, case: tuple[tuple[str, str, type], str]) -> None:  # noqa: F811
    (command, option, _), value = case
    check(workspace, [*BASE[command], option, value])


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(sorted(BASE)), value=PATHS)
def test_generated_positional_paths_are_refused_cleanly(workspace: Path, command: str, value: str) -> None:  # noqa: F811
    args = list(BASE[command])
    args[1] = value
    check(workspace, args)


@pytest.mark.long
@settings(max_examples=3000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=CASE)
def test_long_profile(workspace: Path, case: tuple[tuple[str, str, type], str]) -> None:  # noqa: F811
    (command, option, _), value = case
    check(workspace, [*BASE[command], option, value])
