"""One vocabulary across the CLI: one name per concept in every command (the old names hidden aliases), help text
that rich cannot swallow, --version, --debug after the subcommand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import typer.main

from cofre import cli

ROOT = Path(__file__).parents[1]
COMMANDS = typer.main.get_command(cli.app).commands  # type: ignore[attr-defined]

# concept -> the one visible name; (command, name) pairs allowed beside it
OUTPUTS = {"--run-dir": "a new run directory", "--report-dir": "a folder of reports, tables and plots",
           "--out": "a samples file or folder (sample only)", "--trace": "a trace file (sample only)"}
RUNS_A_MODEL = {"sample", "evaluate", "sweep", "cka", "probe", "lagged-kl", "step-importance", "schedule-search",
                "stage-plot"}
MARKUP = re.compile(r"(?<!\\)\[[a-z][a-z _/-]*\]")  # rich reads [word] as a style tag and drops it


def visible_options(command: object) -> list[object]:
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]  # type: ignore[attr-defined]


def test_an_output_location_has_one_name_per_concept() -> None:
    for name, command in COMMANDS.items():
        for param in visible_options(command):
            for opt in param.opts:
                looks_like_output = opt.startswith("--out") or opt.endswith("-dir")
                if looks_like_output:
                    assert opt in OUTPUTS, f"cofre {name} {opt}: name it one of {', '.join(OUTPUTS)}"
                    assert opt not in ("--out", "--trace") or name == "sample", f"cofre {name} {opt}"


def test_the_same_thing_has_the_same_positional_name() -> None:
    for name, command in COMMANDS.items():
        for param in command.params:
            if param.param_type_name == "argument":
                assert param.name not in ("checkpoint", "ckpt"), f"cofre {name}: call a run or checkpoint 'run'"


def test_every_command_that_runs_a_model_takes_precision() -> None:
    for name in RUNS_A_MODEL:
        assert "--precision" in {o for p in visible_options(COMMANDS[name]) for o in p.opts}, name


def test_no_help_text_is_swallowed_as_markup() -> None:
    for name, command in COMMANDS.items():
        texts = [command.help or ""] + [p.help or "" for p in command.params]
        for text in texts:
            assert not MARKUP.search(text), f"cofre {name}: escape {MARKUP.search(text).group(0)} as \\[...]"  # type: ignore[union-attr]


def test_version_and_debug_after_the_subcommand() -> None:
    from cofre import __version__

    out = subprocess.run([sys.executable, "-m", "cofre", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith(f"cofre {__version__}")
    late = subprocess.run([sys.executable, "-m", "cofre", "inspect", "no-such-recipe.yaml", "--debug"],
                          capture_output=True, text=True, cwd=ROOT)
    assert late.returncode != 0 and "Traceback" in late.stderr  # --debug took effect: the full traceback
    plain = subprocess.run([sys.executable, "-m", "cofre", "inspect", "no-such-recipe.yaml"], capture_output=True,
                           text=True, cwd=ROOT)
    assert plain.returncode == 2 and plain.stderr.startswith("error:") and "Traceback" not in plain.stderr
