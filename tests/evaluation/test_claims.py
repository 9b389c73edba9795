"""`cofre claims`: the intervals, the verdict logic and a claim that cannot be measured, on runs written by hand."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cofre.evaluation.claims import (FAILS, HOLDS, UNMEASURABLE, Bootstrap, ClaimsSpec, TextRoles, below_one,
                                     check_claims, load_spec, ppl)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_samples() -> None:
    rng = np.random.default_rng(0)
    boot = Bootstrap(1000, 1)
    small, large = rng.normal(5, 1, 30), rng.normal(5, 1, 3000)
    e_small, e_large = boot.estimate("s", small, np.mean), boot.estimate("l", large, np.mean)
    assert e_small.low < 5 < e_small.high and e_large.low < 5 < e_large.high
    assert (e_large.high - e_large.low) < (e_small.high - e_small.low) / 5  # ~ 1/sqrt(n)
    constant = boot.estimate("c", np.full(10, 2.0), ppl)
    assert constant.low == constant.high == constant.value == pytest.approx(math.exp(2))


def test_ratio_verdicts_separate_clear_reversed_and_noisy_differences() -> None:
    boot = Bootstrap(1000, 2)
    rng = np.random.default_rng(3)
    low, high = rng.normal(4.0, 0.3, 200), rng.normal(4.5, 0.3, 200)
    assert below_one(boot.ratio("a/b", low, high, ppl))[0]
    reversed_ok, why = below_one(boot.ratio("a/b", high, low, ppl))
    assert not reversed_ok and "reversed" in why
    same_ok, why = below_one(boot.ratio("a/b", low, rng.normal(4.0, 0.3, 200), ppl))
    assert not same_ok and "within the noise" in why
    paired = boot.ratio("paired", low, low * 1.01, np.mean, paired=True)
    assert paired.high < 1  # the same batches in both: a 1% difference is far outside the noise


def write_text_cell(run: Path, budget: int | None, reuse: str, nll: np.ndarray, entropy_ids: list[list[int]],
                    schedule: str | None = None, samples: int = 8, judge: str = "smollm2-135m") -> None:
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text("name: x\n")
    tag = f"b{budget}-{reuse}-{schedule}".replace(",", "_")
    samples_file = run / f"{tag}.jsonl"
    samples_file.write_text("".join(json.dumps({"ids": ids}) + "\n" for ids in entropy_ids))
    record = {"budget": budget, "reuse": reuse, "judge": judge, "num_samples": samples, "samples": str(samples_file),
              "sample_settings": {"reuse": reuse, "top_p": 1.0, "model_schedule": schedule}, "created": "2026-12-03",
              "metrics": {"genppl": {"per_sample_nll": nll.tolist()}}}
    (run / "eval" / f"{tag}.json").write_text(json.dumps(record))


def spec_for(root: Path) -> ClaimsSpec:
    runs = {role: str(root / role) for role in ("mdlm", "fp_mdlm", "cofre", "sdtt", "light")}
    return ClaimsSpec(num_samples=8, bootstrap=500, text=TextRoles(**runs, budgets=[8, 16]),
                      text_cost=str(root / "cost.json"), image_cost=str(root / "none.json"),
                      lagged_kl=str(root / "lagged.json"))


def test_claims_on_hand_written_runs(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    rng = np.random.default_rng(0)
    varied = [rng.integers(0, 50, 20).tolist() for _ in range(8)]
    for budget in (8, 16):
        write_text_cell(tmp_path / "mdlm", budget, "none", rng.normal(6.0, 0.05, 8), varied)
        write_text_cell(tmp_path / "cofre", budget, "3sr", rng.normal(4.0, 0.05, 8), varied)
    write_text_cell(tmp_path / "sdtt", 8, "none", rng.normal(4.0, 0.05, 8), varied)  # as good as CoFRe: C5 fails
    (tmp_path / "cost.json").write_text(json.dumps({"measurements": [
        {"recipe": "mdlm", "params": 100, "step_s": [1.0, 1.02, 0.98, 1.01], "step_s_mean": 1.0, "peak_memory_bytes": 10,
         "memory_kind": "rss"},
        {"recipe": "fp", "params": 60, "step_s": [0.8, 0.81, 0.79, 0.8], "step_s_mean": 0.8, "peak_memory_bytes": 8,
         "memory_kind": "rss"}]}))
    (tmp_path / "lagged.json").write_text(json.dumps({"results": [
        {"steps": 8, "lag": 1, "batches_a": [0.5, 0.6, 0.55], "batches_b": [0.3, 0.35, 0.33]}]}))
    claims = {c.id: c for c in check_claims(spec)}
    assert claims["C1"].verdict == HOLDS and claims["C1"].estimates[0].value == pytest.approx(0.6)
    assert claims["C2"].verdict == HOLDS, claims["C2"].reason
    assert claims["C4"].verdict == HOLDS
    assert claims["C5"].verdict == FAILS and "within the noise" in claims["C5"].reason
    assert claims["C3"].verdict == UNMEASURABLE and "no cell at budget 8, reuse full" in claims["C3"].reason
    assert claims["C6"].verdict == UNMEASURABLE and "none.json" in claims["C6"].reason
    assert claims["C7"].verdict == UNMEASURABLE  # no model-schedule cells
    assert {c.verdict for c in claims.values()} <= {HOLDS, FAILS, UNMEASURABLE}


def test_entropy_outside_the_margin_fails_c2(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    rng = np.random.default_rng(1)
    varied = [rng.integers(0, 50, 20).tolist() for _ in range(8)]
    repetitive = [[1, 1, 1, 1, 2] * 4 for _ in range(8)]  # low entropy: a degenerate regime
    for budget in (8, 16):
        write_text_cell(tmp_path / "mdlm", budget, "none", rng.normal(6.0, 0.05, 8), varied)
        write_text_cell(tmp_path / "cofre", budget, "3sr", rng.normal(3.0, 0.05, 8), repetitive)
    c2 = next(c for c in check_claims(spec) if c.id == "C2")
    assert c2.verdict == FAILS and "margin 0.1" in c2.reason


def test_claims_command_writes_a_table_json_and_a_png_per_family(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    spec = tmp_path / "claims.yaml"
    spec.write_text(f"kind: claims\nname: t\ntext: {{mdlm: {tmp_path}/none}}\ntext_cost: {tmp_path}/none.json\n")
    result = subprocess.run([sys.executable, "-m", "cofre", "claims", str(spec), "--report-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(root), "COLUMNS": "200",
                                                                               "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert [c["id"] for c in record["claims"]] == [f"C{i}" for i in range(1, 9)]
    assert all(c["verdict"] == UNMEASURABLE for c in record["claims"])
    assert len(list((tmp_path / "out").glob("claims-*.png"))) == 7  # cost, text quality, reuse, ..., shortcut
    assert "0 of 8 claims hold" in result.stdout


def test_a_file_that_is_not_a_claims_file_is_one_line(tmp_path: Path) -> None:
    from cofre.errors import CofreError

    path = tmp_path / "x.yaml"
    path.write_text("name: x\n")
    with pytest.raises(CofreError, match="is not a claims file"):
        load_spec(path)
