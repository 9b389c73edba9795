"""Helpers for tests that kill a real `cofre` process: start it, SIGKILL it once it has published a checkpoint."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def start_and_kill_after_checkpoint(cmd: list[str], run: Path, env: dict[str, str] | None = None) -> int:
    """Start `cmd`, SIGKILL it once `run` has a checkpoint; the step it will resume from."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 180
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(latest.read_text().strip().split("-")[1])
