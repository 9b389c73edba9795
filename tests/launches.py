"""`make check-launches`: every recipe and every documented command that starts a run, dry-run as a user would launch it.

- every whole denoiser recipe in recipes/ at 1, 2 and 8 processes (the counts the README and Makefile use); VQ and
  classifier recipes at 1 (their trainers run in one process);
- every line of the Makefile (as `make -n` expands it, target by target) and of the README's code blocks that starts a
  run (`cofre train|consistency|adapt|distill|shortcut|convert`, directly or under `accelerate launch`), with its own
  process count, `--dry-run` appended; a target's later lines see the runs its earlier lines plan;
- every stage or shortcut recipe must be used by at least one documented command (that is how it is resolved).
Nothing is trained or written. Exit status 1 when anything would fail at launch.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_COMMANDS = ("train", "consistency", "adapt", "distill", "shortcut", "convert")
RECIPE_PROCESSES = (1, 2, 8)
# Inputs a user supplies that no machine here has (a released MDLM checkpoint): lines that need them, and the lines
# that build on what those would make, are listed as not checkable rather than failed.
EXTERNAL = {"MDLM_CKPT": "<MDLM_CKPT>"}


@dataclass
class Check:
    source: str  # "recipes/x.yaml", "Makefile: tiny", "README.md:123"
    argv: list[str]
    processes: int
    error: str = ""  # empty: it would launch
    skipped: str = ""  # why it cannot be checked here

    @property
    def line(self) -> str:
        return "cofre " + " ".join(shlex.quote(a) for a in self.argv)


def dry_run(argv: list[str], processes: int) -> str:
    """Run `cofre ARGV --dry-run --num-processes N` in this process; the one-line error it would print, else ''."""
    from cofre.cli import _message, app, click_exceptions
    from cofre.errors import CofreError

    out = io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(out):
            app([*argv, "--dry-run", "--num-processes", str(processes)], standalone_mode=False)
    except (CofreError, click_exceptions.ClickException, OSError) as err:
        return _message(err)
    except SystemExit as err:
        return f"exit {err.code}: {out.getvalue().strip()[-300:]}" if err.code else ""
    except Exception as err:  # a crash is a launch that fails too, reported with the rest
        return f"crashed: {type(err).__name__}: {err}"
    return ""


# -- the commands documents start ---------------------------------------------------------------------------------
def launched_commands(shell: str) -> list[tuple[list[str], int, str]]:
    """(cofre argv, processes, problem) of every run-starting command in a shell line (loops, ||, && and ; too)."""
    loop = re.fullmatch(r"\s*for (\w+) in ([^;]+); do (.*); done\s*", shell, flags=re.S)
    if loop:
        var, values, body = loop.groups()
        return [c for v in values.split() for c in launched_commands(body.replace(f"${var}", v))]
    found = []
    for segment in re.split(r"\|\||&&|;|\|", shell):
        words = shlex.split(segment, comments=True)
        while words and re.fullmatch(r"\w+=.*", words[0]):  # environment assignments (ACCELERATE_USE_CPU=1 ...)
            words = words[1:]
        if not words:
            continue
        processes, problem = 1, ""
        if Path(words[0]).name == "accelerate" and words[1:2] == ["launch"]:
            if "-m" not in words or words[words.index("-m") + 1] != "cofre":
                continue
            options = words[2 : words.index("-m")]
            if "--num_processes" in options:
                processes = int(options[options.index("--num_processes") + 1])
            if "--cpu" in options and processes > 1:  # accelerate then runs one process, silently
                problem = "`accelerate launch --cpu` runs one process whatever --num_processes says; use " \
                          "--multi_gpu with ACCELERATE_USE_CPU=1"
            words = words[words.index("-m") + 2 :]
        elif Path(words[0]).name == "cofre":
            words = words[1:]
        else:
            continue
        if words and words[0] in RUN_COMMANDS:
            found.append((words, processes, problem))
    return found


def makefile_targets(makefile: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^([a-z0-9][\w-]*):(?!=)", makefile.read_text(), flags=re.M)]


def makefile_lines(makefile: Path, target: str) -> list[str]:
    """The shell lines `make -n` would run for a target (variables expanded, continuations joined)."""
    external = [f"{name}={value}" for name, value in EXTERNAL.items()]
    result = subprocess.run(["make", "-s", "-n", "-B", "-f", str(makefile), *external, target], cwd=makefile.parent,
                            capture_output=True, text=True, check=True)
    return result.stdout.replace("\\\n", " ").splitlines()


def readme_lines(readme: Path) -> list[tuple[int, str]]:
    """(line number, text) of every command line in the README's code blocks (continuations joined)."""
    lines, in_code = [], False
    pending: tuple[int, str] | None = None
    for number, text in enumerate(readme.read_text().splitlines(), 1):
        if text.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text)
        else:
            pending = (number, text)
        if not pending[1].rstrip().endswith("\\"):
            lines.append((pending[0], pending[1].replace("\\", " ")))
            pending = None
    return lines


# -- the checks -------------------------------------------------------------------------------------------------------
def recipe_checks(recipes: Path) -> list[Check]:
    from cofre.config import read_yaml
    from cofre.errors import CofreError
    from cofre.launch import is_stage_recipe

    checks = []
    for path in sorted(recipes.glob("*.yaml")):
        try:
            values = read_yaml(path)
        except CofreError as err:
            checks.append(Check(str(path), ["train", str(path)], 1, str(err)))
            continue
        kind = values.get("kind")
        if kind in ("shortcut", "claims") or is_stage_recipe(values):
            continue  # stages and shortcuts resolve over the runs they start from; a claims file starts nothing  # stages and shortcuts are resolved over their parents, by the commands that use them
        for processes in (1,) if kind else RECIPE_PROCESSES:
            checks.append(Check(str(path), ["train", str(path)], processes))
    return checks


def documented_checks(makefile: Path, readme: Path) -> list[tuple[str, list[Check]]]:
    """Groups of checks in order: a Makefile target, or the README's code blocks."""
    groups = []
    for target in makefile_targets(makefile):
        checks = [Check(f"Makefile: {target}", argv, n, problem)
                  for line in makefile_lines(makefile, target) for argv, n, problem in launched_commands(line)]
        if checks:
            groups.append((f"Makefile: {target}", checks))
    readme_checks = [Check(f"{readme.name}:{number}", argv, n, problem)
                     for number, line in readme_lines(readme) for argv, n, problem in launched_commands(line)]
    groups.append((readme.name, readme_checks))
    return groups


def unused_stage_recipes(recipes: Path, groups: list[tuple[str, list[Check]]]) -> list[Check]:
    """Stage and shortcut recipes no documented command resolves."""
    from cofre.config import read_yaml
    from cofre.launch import is_stage_recipe

    used = {Path(a).resolve() for _, checks in groups for c in checks for a in c.argv if a.endswith(".yaml")}
    problems = []
    for path in sorted(recipes.glob("*.yaml")):
        values = read_yaml(path)
        partial = values.get("kind") == "shortcut" or is_stage_recipe(values)
        if partial and path.resolve() not in used:
            problems.append(Check(str(path), [], 1, "a stage recipe that no README or Makefile command uses, so "
                                                   "nothing checks it against a parent run"))
    return problems


def run_checks(root: Path = ROOT) -> list[Check]:
    """Every check, run from `root` (relative paths as the documents write them)."""
    import os

    from cofre import launch

    here = Path.cwd()
    os.chdir(root)
    try:
        recipes = [*recipe_checks(Path("recipes"))]
        for check in recipes:
            launch.PLANNED_HERE.clear()
            check.error = check.error or dry_run(check.argv, check.processes)
        groups = documented_checks(Path("Makefile"), Path("README.md"))
        for _, checks in groups:
            launch.PLANNED_HERE.clear()  # each target (and the README) plans its own runs
            unavailable: set[str] = set()  # what lines that could not be checked would have made
            for check in checks:
                needs = [a for a in check.argv if a in EXTERNAL.values() or a.rstrip("/") in unavailable]
                if needs:
                    check.skipped = f"needs {needs[0]}, which this machine does not have"
                    unavailable.update(_outputs(check.argv))
                    continue
                check.error = check.error or dry_run(check.argv, check.processes)
        launch.PLANNED_HERE.clear()
        return [*recipes, *[c for _, checks in groups for c in checks], *unused_stage_recipes(Path("recipes"), groups)]
    finally:
        os.chdir(here)


def _outputs(argv: list[str]) -> set[str]:
    """The run directories a command names as its output (--out, --run-dir) or as its run (a stage's name= aside)."""
    return {argv[i + 1].rstrip("/") for i, a in enumerate(argv[:-1]) if a in ("--out", "--run-dir")}


def main() -> int:
    """Print what would fail or cannot be checked (every check with -v), then the count."""
    checks = run_checks()
    failed = [c for c in checks if c.error]
    skipped = [c for c in checks if c.skipped]
    for check in checks if "-v" in sys.argv else [*skipped, *failed]:
        mark = "FAIL" if check.error else "skip" if check.skipped else "ok  "
        detail = check.error or check.skipped
        print(f"{mark} [{check.source}] {check.line} (x{check.processes})" + (f"\n     {detail}" if detail else ""))
    print(f"{len(checks) - len(failed) - len(skipped)} of {len(checks)} launches resolve, {len(skipped)} need inputs "
          f"this machine lacks" + (f"; {len(failed)} would fail" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
