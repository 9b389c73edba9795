"""`cofre claims`: the paper's claims checked on your own runs, each with its numbers, a 95% interval and a verdict.

A claims file (`kind: claims`, e.g. recipes/claims-small.yaml) names the run playing each role (MDLM, FP-MDLM, CoFRe,
...) and the cells to read. Nothing is sampled here: the numbers come from what `cofre evaluate`, `cofre lagged-kl`,
`cofre probe` and `benchmarks/train_step.py` wrote (make small runs them first). Intervals are percentile bootstraps:
over samples for quality (Gen. PPL from each sample's judge NLL, entropy from each sample's tokens, FID from the
generated images' features), over timed steps for training cost, over held-out batches for the lagged KL. A claim
holds when the interval of the compared difference lies on the claimed side of zero; it does not hold when it does not
(a reversed difference, or one within the noise); it is not measurable when a run or a cell is missing, with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cofre.config import config_from_dict, read_yaml
from cofre.errors import CofreError

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable"
CLAIMS_KIND = "claims"


@dataclass
class TextRoles:
    mdlm: str = "runs/small-mdlm"
    fp_mdlm: str = "runs/small-fp-mdlm"
    cofre: str = "runs/small-cofre"  # FP-MDLM + L_CONS (evaluated with 3SR)
    sdtt: str = "runs/small-sdtt"
    light: str = "runs/small-mdlm-light"  # model scheduling's light model
    budgets: list[int] = field(default_factory=lambda: [48, 96])  # the lowest first: C2 reads the two lowest
    sandwich: str = "L2,H12,L2"  # C7: light at the ends ...
    middle: str = "H6,L4,H6"  # ... and light in the middle, at equal saving
    entropy_margin: float = 0.1  # C2: CoFRe's entropy within this of MDLM's (nats)


@dataclass
class ImageRoles:
    maskgit: str = "runs/small-maskgit"
    fp_maskgit: str = "runs/small-fp-maskgit"
    cofre: str = "runs/small-cofre-images"
    budgets: list[int] = field(default_factory=lambda: [8, 16, 32])
    shortcut_report: str = "runs/reports/small/shortcut"  # C8: the folder `evaluate --shortcut` wrote its JSON into


@dataclass
class ClaimsSpec:
    kind: str = CLAIMS_KIND
    name: str = "claims"
    judge: str = "smollm2-135m"  # the text cells' judge
    image_judge: str = "runs/fmnist-classifier"  # the image cells' feature extractor (a classifier run, or inception)
    num_samples: int = 64  # text cells read (each claim names its count)
    image_samples: int = 500
    text: TextRoles = field(default_factory=TextRoles)
    images: ImageRoles = field(default_factory=ImageRoles)
    text_cost: str = "runs/reports/small/train-step-text.json"  # C1: benchmarks/train_step.py, both models in one run
    image_cost: str = "runs/reports/small/train-step-images.json"  # C6
    lagged_kl: str = "runs/reports/small/fig11/lagged-kl.json"  # C4
    bootstrap: int = 2000
    seed: int = 1
    # the learning checks printed before the claims: `cofre probe` on these runs, and the image tier's FID
    probes: list[str] = field(default_factory=lambda: ["runs/small-mdlm", "runs/small-fp-mdlm", "runs/small-cofre",
                                                         "runs/small-maskgit", "runs/small-fp-maskgit"])
    tiny_maskgit: str = "runs/tiny-maskgit"  # images learn: small MaskGIT's FID at least 3x below this run's ...
    learning_budget: int = 16  # ... at this budget, both on `image_samples` images


@dataclass
class Estimate:
    label: str
    value: float
    low: float
    high: float
    n: int  # the samples, steps or batches behind it
    unit: str = ""


@dataclass
class Claim:
    id: str
    family: str  # one PNG per family
    statement: str
    paper: str
    verdict: str = UNMEASURABLE
    reason: str = ""
    estimates: list[Estimate] = field(default_factory=list)


class Missing(Exception):
    """A run, cell or report a claim needs is not there: the claim is not measurable, for this reason."""


def load_spec(path: Path) -> ClaimsSpec:
    values = read_yaml(path)
    if values.get("kind") != CLAIMS_KIND:
        raise CofreError(f"{path} is not a claims file (it needs 'kind: {CLAIMS_KIND}')")
    values.setdefault("name", path.stem)
    try:
        return config_from_dict(ClaimsSpec, values)
    except CofreError as err:
        raise CofreError(f"{path}: {err}") from None


# -- bootstrap ------------------------------------------------------------------------------------------------------
class Bootstrap:
    """Percentile intervals of statistics of independent (or paired) samples, one seeded generator."""

    def __init__(self, draws: int, seed: int) -> None:
        self.draws = draws
        self.rng = np.random.default_rng(seed)

    def resample(self, values: np.ndarray, stat: Callable[[np.ndarray], float]) -> np.ndarray:
        index = self.rng.integers(0, len(values), size=(self.draws, len(values)))
        return np.array([stat(values[i]) for i in index])

    @staticmethod
    def interval(label: str, point: float, draws: np.ndarray, n: int, unit: str = "") -> Estimate:
        """The percentile interval of statistics already drawn (one set of draws serves several estimates)."""
        low, high = np.percentile(draws, [2.5, 97.5])
        return Estimate(label, float(point), float(low), float(high), n, unit)

    def estimate(self, label: str, values: np.ndarray, stat: Callable[[np.ndarray], float], unit: str = "") -> Estimate:
        low, high = np.percentile(self.resample(values, stat), [2.5, 97.5])
        return Estimate(label, float(stat(values)), float(low), float(high), len(values), unit)

    def ratio(self, label: str, a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray], float],
              paired: bool = False) -> Estimate:
        """stat(a) / stat(b), with a and b resampled independently (or together, when paired: the same batches)."""
        if paired:
            both = np.stack([a, b], axis=1)
            draws = self.resample(both, lambda rows: stat(rows[:, 0]) / stat(rows[:, 1]))
        else:
            draws = self.resample(a, stat) / self.resample(b, stat)
        low, high = np.percentile(draws, [2.5, 97.5])
        return Estimate(label, float(stat(a) / stat(b)), float(low), float(high), min(len(a), len(b)), "ratio")

    def difference(self, label: str, a: np.ndarray, b: np.ndarray, stat: Callable[[np.ndarray], float]) -> Estimate:
        draws = self.resample(a, stat) - self.resample(b, stat)
        low, high = np.percentile(draws, [2.5, 97.5])
        return Estimate(label, float(stat(a) - stat(b)), float(low), float(high), min(len(a), len(b)), "difference")


def ppl(nll: np.ndarray) -> float:
    """Gen. PPL (Eq. 4): exp of the mean over samples of each sample's mean judge NLL."""
    return float(math.exp(nll.mean()))


def mean(values: np.ndarray) -> float:
    return float(values.mean())


def below_one(ratio: Estimate) -> tuple[bool, str]:
    """Does a ratio's interval lie below 1? With the reason in words either way."""
    if ratio.high < 1:
        return True, f"{ratio.label} {ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] < 1"
    if ratio.low > 1:
        return False, f"{ratio.label} {ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] > 1: reversed"
    return False, f"{ratio.label} {ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] includes 1: within the noise"


def verdict_of(tests: list[tuple[bool, str]]) -> tuple[str, str]:
    return (HOLDS if all(ok for ok, _ in tests) else FAILS), "; ".join(reason for _, reason in tests)


# -- reading what the runs hold ------------------------------------------------------------------------------------
def eval_records(run: str) -> list[dict[str, Any]]:
    folder = Path(run)
    if not (folder / "recipe.yaml").is_file():
        raise Missing(f"{run} is not trained")
    records = []
    for path in sorted((folder / "eval").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and "metrics" in record:
            records.append({**record, "_path": str(path)})
    return records


def text_cell(run: str, budget: int | None, reuse: str, judge: str, samples: int,
              model_schedule: str | None = None) -> dict[str, Any]:
    """The newest `cofre evaluate` cell of a run with these settings and a Gen. PPL per sample."""
    found = []
    for record in eval_records(run):
        settings = record.get("sample_settings", {})
        genppl = record["metrics"].get("genppl")
        if (genppl and record.get("judge") == judge and record.get("num_samples") == samples
                and settings.get("reuse", reuse) == reuse and settings.get("top_p", 1.0) == 1.0
                and (model_schedule is not None or record.get("budget") == budget)
                and settings.get("model_schedule") == model_schedule):
            found.append(record)
    if not found:
        what = f"schedule {model_schedule}" if model_schedule else f"budget {budget}, reuse {reuse}"
        raise Missing(f"{run} has no cell at {what} judged by {judge} on {samples} samples (run cofre evaluate)")
    return max(found, key=lambda r: r.get("created", ""))


def nll_of(cell: dict[str, Any]) -> np.ndarray:
    return np.asarray(cell["metrics"]["genppl"]["per_sample_nll"], dtype=float)


def entropies_of(cell: dict[str, Any]) -> np.ndarray:
    """Each sample's unigram entropy (Eq. 5) from its token ids in the samples file."""
    from cofre.evaluation.entropy import unigram_entropy

    path = Path(cell["samples"])
    if not path.is_file():
        raise Missing(f"{path}, the samples of {cell['_path']}, is gone")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return np.asarray([unigram_entropy([row["ids"]]) for row in rows], dtype=float)


def read_json(path: str, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise Missing(f"{path} ({what}) is missing") from None
    except (OSError, json.JSONDecodeError) as err:
        raise Missing(f"{path} ({what}) is unreadable: {err}") from None


# -- the claims ------------------------------------------------------------------------------------------------------
def cost_claim(claim: Claim, path: str, boot: Bootstrap) -> Claim:
    """Fewer parameters, less time per training step, less peak memory: the FP model against the plain one, both
    measured by one benchmarks/train_step.py run (each in a fresh process; step times bootstrapped)."""
    report = read_json(path, "benchmarks/train_step.py output")
    base, cand = report["measurements"][0], report["measurements"][1]
    times = [np.asarray(m.get("step_s") or [m["step_s_mean"]], dtype=float) for m in (cand, base)]
    params = cand["params"] / base["params"]
    claim.estimates = [
        Estimate(f"parameters {cand['recipe']} / {base['recipe']}", params, params, params, 1, "ratio"),
        boot.ratio(f"step time {cand['recipe']} / {base['recipe']}", times[0], times[1], mean),
        Estimate(f"peak memory {cand['recipe']} / {base['recipe']} ({base['memory_kind']})",
                 cand["peak_memory_bytes"] / base["peak_memory_bytes"], *[cand["peak_memory_bytes"] /
                 base["peak_memory_bytes"]] * 2, 1, "ratio"),
    ]
    params_test = (params < 1, f"parameters {100 * (1 - params):.1f}% fewer")
    memory = claim.estimates[2].value
    memory_test = (memory < 1, f"peak memory {100 * (1 - memory):+.1f}% lower" if memory < 1 else
                   f"peak memory {memory:.3f}x: not lower")
    claim.verdict, claim.reason = verdict_of([params_test, below_one(claim.estimates[1]), memory_test])
    return claim


def c2_cofre_vs_mdlm(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C2", "text quality", "CoFRe (FP-MDLM + CONS + 3SR) has lower Gen. PPL than MDLM at the two lowest "
                  "budgets, at an entropy within 0.1 of MDLM's", "Tables 2/9: 101.8 vs 830.8 at budget 96, 65.2 vs 343.3 "
                  "at 192; entropy 5.43 vs 5.91 and 5.38 vs 5.81")
    t, tests = spec.text, []
    for budget in sorted(t.budgets)[:2]:
        mdlm = text_cell(t.mdlm, budget, "none", spec.judge, spec.num_samples)
        cofre = text_cell(t.cofre, budget, "3sr", spec.judge, spec.num_samples)
        ratio = boot.ratio(f"Gen. PPL CoFRe / MDLM at {budget}", nll_of(cofre), nll_of(mdlm), ppl)
        entropy = boot.difference(f"entropy CoFRe - MDLM at {budget}", entropies_of(cofre), entropies_of(mdlm), mean)
        claim.estimates += [boot.estimate(f"MDLM Gen. PPL at {budget}", nll_of(mdlm), ppl),
                            boot.estimate(f"CoFRe Gen. PPL at {budget}", nll_of(cofre), ppl), ratio, entropy]
        tests += [below_one(ratio), (abs(entropy.value) <= t.entropy_margin,
                                     f"entropy {entropy.value:+.3f} nats at {budget} (margin {t.entropy_margin})")]
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


def not_above_one(ratio: Estimate) -> tuple[bool, str]:
    """An ordering that holds unless its interval lies above 1 (a significant reversal)."""
    text = f"{ratio.label} {ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]"
    return (ratio.low <= 1, text if ratio.low <= 1 else f"{text} > 1: reversed")


def c3_reuse(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C3", "reuse", "CoFRe: 3SR <= full <= none in Gen. PPL at low budget; without CONS, reuse degrades "
                  "(FP-MDLM + reuse)", "Table 9: CoFRe 65.2 / 68.6 / 70.3 (3SR / full / none) at 192; FP-MDLM 516.7 "
                  "with full reuse vs 375.6 without at 96")
    t = spec.text
    low = sorted(t.budgets)[0]
    nll = {reuse: nll_of(text_cell(t.cofre, low, reuse, spec.judge, spec.num_samples)) for reuse in ("3sr", "full", "none")}
    claim.estimates = [boot.estimate(f"CoFRe {reuse} at {low}", values, ppl) for reuse, values in nll.items()]
    ratios = {pair: boot.ratio(f"CoFRe {pair[0]} / {pair[1]} at {low}", nll[pair[0]], nll[pair[1]], ppl)
              for pair in (("3sr", "full"), ("full", "none"), ("3sr", "none"))}
    claim.estimates += list(ratios.values())
    # the order holds when no step of it is reversed beyond the noise and 3SR is clearly below none
    tests = [not_above_one(ratios["3sr", "full"]), not_above_one(ratios["full", "none"]), below_one(ratios["3sr", "none"])]
    plain = {reuse: nll_of(text_cell(t.fp_mdlm, low, reuse, spec.judge, spec.num_samples)) for reuse in ("full", "none")}
    degrade = boot.ratio(f"FP-MDLM full / none at {low}", plain["full"], plain["none"], ppl)
    claim.estimates.append(degrade)
    interval = f"{degrade.value:.3f} [{degrade.low:.3f}, {degrade.high:.3f}]"
    tests.append((degrade.low > 1, f"without CONS, {degrade.label} {interval}" +
                  ("" if degrade.low > 1 else ": reuse does not degrade beyond the noise")))
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


def c4_lagged_kl(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C4", "consistency", "CONS lowers the lagged logit KL between a denoising step and cleaner ones",
                  "Fig. 11: CoFRe below FP-MDLM at every lag")
    report = read_json(spec.lagged_kl, "cofre lagged-kl output")
    tests = []
    for row in report["results"]:
        a, b = np.asarray(row.get("batches_a") or [], float), np.asarray(row.get("batches_b") or [], float)
        if len(a) < 2 or len(a) != len(b):
            raise Missing(f"{spec.lagged_kl} has no per-batch KL for {row['steps']} steps, lag {row['lag']} "
                          "(rerun cofre lagged-kl with --batches >= 2)")
        ratio = boot.ratio(f"KL CoFRe / FP-MDLM, {row['steps']} steps, lag {row['lag']}", b, a, mean, paired=True)
        claim.estimates.append(ratio)
        tests.append(below_one(ratio))
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


def c5_sdtt(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C5", "text quality", "CoFRe beats MDLM + SDTT at the lowest budget",
                  "Table 13: 101.8 vs 193.1 at budget 96")
    t = spec.text
    low = sorted(t.budgets)[0]
    cofre = text_cell(t.cofre, low, "3sr", spec.judge, spec.num_samples)
    sdtt = text_cell(t.sdtt, low, "none", spec.judge, spec.num_samples)
    ratio = boot.ratio(f"Gen. PPL CoFRe / MDLM + SDTT at {low}", nll_of(cofre), nll_of(sdtt), ppl)
    claim.estimates = [boot.estimate(f"MDLM + SDTT at {low}", nll_of(sdtt), ppl),
                       boot.estimate(f"CoFRe at {low}", nll_of(cofre), ppl), ratio]
    claim.verdict, claim.reason = verdict_of([below_one(ratio)])
    return claim


def c7_scheduling(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C7", "scheduling", "Model scheduling: light steps at the ends (sandwich) degrade Gen. PPL less than "
                  "light steps in the middle, at equal saving", "Sedykh et al.: early and late steps are robust to the "
                  "substitution, middle steps are not")
    t = spec.text
    ends = text_cell(t.mdlm, None, "none", spec.judge, spec.num_samples, model_schedule=t.sandwich)
    middle = text_cell(t.mdlm, None, "none", spec.judge, spec.num_samples, model_schedule=t.middle)
    saving = [c.get("model_schedule", {}).get("saving") for c in (ends, middle)]
    ratio = boot.ratio(f"Gen. PPL {t.sandwich} / {t.middle}", nll_of(ends), nll_of(middle), ppl)
    claim.estimates = [boot.estimate(f"sandwich {t.sandwich}", nll_of(ends), ppl),
                       boot.estimate(f"middle {t.middle}", nll_of(middle), ppl), ratio]
    tests = [below_one(ratio)]
    if None not in saving:
        tests.append((abs(saving[0] - saving[1]) < 1e-9, f"block saving {saving[0]:.3f} vs {saving[1]:.3f}"))
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


# -- images ----------------------------------------------------------------------------------------------------------
class ImageFeatures:
    """The classifier judge's features of generated images and of the reference split, and FID between them (the
    Fréchet distance of Gaussian fits, as torch-fidelity computes it), so FID can be bootstrapped over images."""

    def __init__(self, judge: str, data: Any) -> None:
        from cofre.data.images import load_images
        from cofre.evaluation.classifier import load_classifier

        if not Path(judge).exists():
            raise Missing(f"image claims bootstrap FID on a classifier run's features; {judge} is not trained")
        self.model = load_classifier(judge)[0].eval()
        self.name = f"classifier:{Path(judge).name}"
        reference = self.features(load_images(data, "val")[0])
        self.mu, self.cov = reference.mean(0), np.cov(reference, rowvar=False)
        values, vectors = np.linalg.eigh(self.cov)
        self.cov_sqrt = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T  # the reference's symmetric square root

    def features(self, images: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.cat([self.model(images[i:i + 500])[0] for i in range(0, len(images), 500)]).double().numpy()

    def fid(self, features: np.ndarray) -> float:
        """|mu - mu_r|^2 + tr(C + C_r - 2 (C C_r)^1/2), with tr (C C_r)^1/2 = the sum of the square roots of the
        eigenvalues of C_r^1/2 C C_r^1/2 (symmetric, so one eigvalsh: thousands of bootstrap draws stay cheap)."""
        mu, cov = features.mean(0), np.cov(features, rowvar=False)
        root_trace = np.sqrt(np.linalg.eigvalsh(self.cov_sqrt @ cov @ self.cov_sqrt).clip(min=0)).sum()
        return float(((mu - self.mu) ** 2).sum() + np.trace(cov) + np.trace(self.cov) - 2 * root_trace)

    def of_folder(self, folder: str) -> np.ndarray:
        from cofre.evaluation.fid import read_png_folder

        if not Path(folder).is_dir():
            raise Missing(f"{folder}, a cell's images, is gone")
        return self.features(read_png_folder(Path(folder)))


def image_cell(run: str, budget: int, reuse: str, judge: str, samples: int) -> dict[str, Any]:
    found = [r for r in eval_records(run) if "fid" in r["metrics"] and r.get("judge") == judge
             and r.get("num_samples") == samples and r.get("budget") == budget and r.get("reuse") == reuse]
    if not found:
        raise Missing(f"{run} has no FID cell at budget {budget}, reuse {reuse}, judged by {judge} on {samples} images")
    return max(found, key=lambda r: r.get("created", ""))


def c6_images(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C6", "images", "FP-MaskGIT trains cheaper than MaskGIT at equal steps and has lower FID at every "
                  "budget; CoFRe (images) improves on FP-MaskGIT", "Tables 15/16: -48.6% time, -50.7% VRAM; FID 117.6 "
                  "-> 57.6 at 48 ... CoFRe lower at every budget")
    from cofre.training.checkpoint import checkpoint_recipe

    cost = cost_claim(Claim("", "", "", ""), spec.image_cost, boot)
    claim.estimates += cost.estimates[1:]
    tests = [(cost.verdict == HOLDS, "cost: " + "; ".join(cost.reason.split("; ")[1:]))]
    i = spec.images
    bank = ImageFeatures(spec.image_judge, checkpoint_recipe(i.maskgit).data)
    for budget in i.budgets:
        feats = {role: bank.of_folder(image_cell(run, budget, reuse, bank.name, spec.image_samples)["samples"])
                 for role, run, reuse in (("MaskGIT", i.maskgit, "none"), ("FP-MaskGIT", i.fp_maskgit, "none"),
                                          ("CoFRe", i.cofre, "3sr"))}
        points = {role: bank.fid(f) for role, f in feats.items()}
        draws = {role: boot.resample(f, bank.fid) for role, f in feats.items()}  # each role resampled once
        claim.estimates += [boot.interval(f"{role} FID at {budget}", points[role], draws[role], len(feats[role]))
                            for role in feats]
        for a, b in (("FP-MaskGIT", "MaskGIT"), ("CoFRe", "FP-MaskGIT")):  # a and b resampled independently
            ratio = boot.interval(f"FID {a} / {b} at {budget}", points[a] / points[b], draws[a] / draws[b],
                                  min(len(feats[a]), len(feats[b])), "ratio")
            claim.estimates.append(ratio)
            tests.append(below_one(ratio))
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


def c8_shortcut(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    claim = Claim("C8", "shortcut", "MIGM-Shortcut: the shortcut N/B is faster than vanilla N, with FID closer to "
                  "vanilla N's than vanilla B's is", "MIGM-Shortcut: over 4x faster on Lumina-DiMOO at matched "
                  "quality; on MaskGIT better FID than the vanilla sampler at equal speed")
    reports = sorted(Path(spec.images.shortcut_report).glob("shortcut-*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise Missing(f"no cofre evaluate --shortcut summary in {spec.images.shortcut_report}")
    summary = read_json(str(reports[-1]), "cofre evaluate --shortcut summary")
    rows = {("shortcut" if "shortcut" in r["label"] else "N" if r["steps"] == r["full_steps"] and r["steps"] ==
             summary["settings"]["steps"] else "B"): r for r in summary["rows"]}
    if set(rows) != {"N", "B", "shortcut"}:
        raise Missing(f"{reports[-1]} lacks a vanilla N, vanilla B or shortcut row")
    lat = {k: r["latency"] for k, r in rows.items()}
    speed = lat["shortcut"]["mean_s"] / lat["N"]["mean_s"]
    se = speed * math.hypot(*(lat[k]["std_s"] / lat[k]["mean_s"] / math.sqrt(max(lat[k]["repeats"], 1))
                              for k in ("shortcut", "N")))  # delta method over the timed batches
    claim.estimates.append(Estimate("latency shortcut / vanilla N", speed, speed - 1.96 * se, speed + 1.96 * se,
                                    lat["N"]["repeats"], "ratio"))
    tests = [below_one(claim.estimates[0])]
    from cofre.training.checkpoint import checkpoint_recipe

    bank = ImageFeatures(spec.image_judge, checkpoint_recipe(summary["run"]).data)
    feats = {k: bank.of_folder(r["samples"]) for k, r in rows.items()}
    gap = {k: boot.resample(feats[k], bank.fid) for k in feats}  # each row resampled once
    fid = {k: bank.fid(f) for k, f in feats.items()}
    claim.estimates += [boot.interval(f"FID vanilla {k}" if k != "shortcut" else "FID shortcut", fid[k], gap[k],
                                      len(feats[k])) for k in feats]
    closer = np.abs(gap["shortcut"] - gap["N"]) - np.abs(gap["B"] - gap["N"])
    point = abs(fid["shortcut"] - fid["N"]) - abs(fid["B"] - fid["N"])
    low, high = np.percentile(closer, [2.5, 97.5])
    claim.estimates.append(Estimate("|FID S - FID N| - |FID B - FID N|", point, float(low), float(high),
                                    len(feats["N"]), "difference"))
    tests.append((high < 0, f"shortcut's FID gap to vanilla N minus vanilla B's {point:+.2f} [{low:+.2f}, {high:+.2f}]" +
                  ("" if high < 0 else ": not closer beyond the noise")))
    claim.verdict, claim.reason = verdict_of(tests)
    return claim


# -- did the models learn? ----------------------------------------------------------------------------------------
@dataclass
class LearningCheck:
    what: str
    value: float | None
    threshold: str
    passed: bool | None  # None: not measured (the reason in `detail`)
    detail: str = ""


def probe_checks(run: str) -> list[LearningCheck]:
    """The checks the newest `cofre probe` of a run recorded."""
    probes = sorted(Path(run, "eval").glob("probe-*.json"), key=lambda p: p.stat().st_mtime)
    if not probes:
        return [LearningCheck(f"{Path(run).name}: probe", None, "", None, f"no cofre probe of {run}")]
    record = read_json(str(probes[-1]), "cofre probe output")
    detail = (f"val PPL {record['val_ppl']:.1f}, unigram PPL {record['unigram_ppl']:.1f}; context KL " +
              ", ".join(f"t={t}: {v:.3f}" for t, v in record["context_kl"].items()))
    return [LearningCheck(f"{Path(run).name}: {c['name']}", c["value"], c["threshold"], c["passed"], detail)
            for c in record["checks"]]


def image_learning_checks(spec: ClaimsSpec) -> list[LearningCheck]:
    """Small MaskGIT's FID at least 3x below the tiny tier's at one budget on as many images, and the floor: held-out
    real images scored the same way must give an FID below a tenth of the model's."""
    from cofre.data.images import load_images
    from cofre.training.checkpoint import checkpoint_recipe

    budget, n = spec.learning_budget, spec.image_samples
    try:
        bank = ImageFeatures(spec.image_judge, checkpoint_recipe(spec.images.maskgit).data)
        small = bank.fid(bank.of_folder(image_cell(spec.images.maskgit, budget, "none", bank.name, n)["samples"]))
        tiny = bank.fid(bank.of_folder(image_cell(spec.tiny_maskgit, budget, "none", bank.name, n)["samples"]))
        images = load_images(checkpoint_recipe(spec.images.maskgit).data, "train")[0]
        index = np.random.default_rng(spec.seed).choice(len(images), size=min(n, len(images)), replace=False)
        floor = bank.fid(bank.features(images[np.sort(index)]))
    except (Missing, CofreError) as missing:  # a run that is not there (or not readable) is not measured
        return [LearningCheck("images: FID against the tiny tier", None, "", None, str(missing))]
    return [LearningCheck(f"images: FID small / tiny MaskGIT at budget {budget} ({n} images)", small / tiny, "<= 1/3",
                          small <= tiny / 3, f"small {small:.2f}, tiny {tiny:.2f} ({bank.name})"),
            LearningCheck(f"images: real held-out FID floor / small FID ({n} training images)", floor / small,
                          "< 0.1", floor < small / 10, f"floor {floor:.3f}")]


def learning_checks(spec: ClaimsSpec) -> list[LearningCheck]:
    checks = [check for run in spec.probes for check in probe_checks(run)]
    return checks + image_learning_checks(spec)


# -- all of them ---------------------------------------------------------------------------------------------------
def c1_cost(spec: ClaimsSpec, boot: Bootstrap) -> Claim:
    return cost_claim(Claim("C1", "cost", "FP-MDLM has ~39% fewer parameters, trains faster and with less memory than "
                            "MDLM (time and memory measured in the same run)", "Table 7: 104M vs 170M parameters "
                            "(-38.8%), training time -11.5%, VRAM -16.9%"), spec.text_cost, boot)


CLAIMS: list[tuple[str, str, Callable[[ClaimsSpec, Bootstrap], Claim]]] = [
    ("C1", "cost", c1_cost), ("C2", "text quality", c2_cofre_vs_mdlm), ("C3", "reuse", c3_reuse),
    ("C4", "consistency", c4_lagged_kl), ("C5", "text quality", c5_sdtt), ("C6", "images", c6_images),
    ("C7", "scheduling", c7_scheduling), ("C8", "shortcut", c8_shortcut),
]


def check_claims(spec: ClaimsSpec) -> list[Claim]:
    """Every claim, in order; a claim whose runs or cells are missing is reported as not measurable, with why."""
    claims = []
    for number, (claim_id, family, check) in enumerate(CLAIMS):
        boot = Bootstrap(spec.bootstrap, spec.seed + number)  # each claim's intervals are reproducible on their own
        try:
            claims.append(check(spec, boot))
        except (Missing, CofreError) as missing:  # a run that is not there (or not readable): not measurable, why
            claims.append(Claim(claim_id, family, check.__doc__ or "", "", UNMEASURABLE, str(missing)))
    return claims


def plot_family(claims: list[Claim], path: Path) -> None:
    """One claim family: every estimate with its 95% interval; ratios and differences against their neutral line."""
    from cofre.evaluation.plotting import pyplot, save_figure

    plt = pyplot()
    rows = [(c, e) for c in claims for e in c.estimates]
    relative = [(c, e) for c, e in rows if e.unit in ("ratio", "difference")]
    levels = [(c, e) for c, e in rows if e.unit not in ("ratio", "difference")]
    panels = [p for p in (relative, levels) if p]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.5 * max(len(panels), 1), 0.45 * max(len(rows), 4) + 1.4),
                             squeeze=False)
    colours = {HOLDS: "tab:green", FAILS: "tab:red", UNMEASURABLE: "0.5"}
    for ax, panel in zip(axes[0], panels):
        for y, (claim, e) in enumerate(panel):
            ax.errorbar(e.value, y, xerr=[[e.value - e.low], [e.high - e.low - (e.value - e.low)]], fmt="o",
                        color=colours[claim.verdict], capsize=3)
        ax.set_yticks(range(len(panel)), [f"{c.id}: {e.label}" for c, e in panel], fontsize=7)
        ax.invert_yaxis()
        if panel is relative:
            for neutral in {1.0 if e.unit == "ratio" else 0.0 for _, e in panel}:
                ax.axvline(neutral, color="0.4", linewidth=0.8, linestyle="--")
            ax.set_xlabel("ratio (1: no difference) or difference (0), 95% bootstrap interval", fontsize=8)
        else:
            ax.set_xscale("log")
            ax.set_xlabel("Gen. PPL / FID, 95% bootstrap interval", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    if not panels:
        axes[0][0].text(0.5, 0.5, "\n".join(f"{c.id}: {c.verdict} ({c.reason})" for c in claims), ha="center",
                        va="center", fontsize=8, wrap=True)
        axes[0][0].set_axis_off()
    verdicts = ", ".join(f"{c.id} {c.verdict}" for c in claims)
    fig.suptitle(f"{claims[0].family}: {verdicts} (green holds, red does not)", fontsize=10)
    save_figure(fig, path)
