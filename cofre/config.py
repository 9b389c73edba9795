"""Typed recipe dataclasses, YAML load/dump and dotted `key.sub=value` overrides."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_INT, MAX_RECIPE_SEED, check_name, shown
from cofre.errors import CofreError

T = TypeVar("T")

# Upper bounds of sizes (every count, size and seed of a recipe has one; counts and seeds: cofre.checks)
MAX_WIDTH = 65_536  # hidden widths, conditioning and feature widths
MAX_HEADS = 1024
MAX_LAYERS = 1024  # blocks of one part (K_pre, K_fp, K_post), residual blocks
MAX_VOCAB = 2**24  # token ids (with [mask]), codebook sizes
MAX_SEQ_LEN = 2**20  # tokens per sequence
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_CLASSES = 1_000_000
MAX_ITERS = 10_000  # fixed-point iterations per step
MAX_DOCS = 10**9  # documents or images held out or kept


# -- range rules: each config's validate() states them next to its fields; messages name field and range --
def _at_least(where: str, config: Any, low: int | float, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < low:
            raise CofreError(f"{where}.{name} must be >= {low}, got {shown(value)}")


def _within(where: str, config: Any, low: int, high: int, *names: str) -> None:
    """Integer fields in [low, high]: every count, size and seed has an upper bound, checked before it is used."""
    for name in names:
        value = getattr(config, name)
        if not low <= value <= high:
            raise CofreError(f"{where}.{name} must be in {low}..{high}, got {shown(value)}")


def _in_range(where: str, config: Any, name: str, low: float, high: float, open_high: bool = False,
              open_low: bool = False) -> None:
    value = getattr(config, name)
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if (v < low or (open_low and v == low)) or (v > high or (open_high and v == high)):
            interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
            raise CofreError(f"{where}.{name} must be in {interval}, got {value!r}")


def _rule(ok: bool, message: str) -> None:
    if not ok:
        raise CofreError(message)


@dataclass
class ModelConfig:
    """The denoiser (DESIGN.md §3): embedding, pre-stack, fixed-point block, post-stack, head.

    `modality` picks what differs between the two (DESIGN.md §9): text is MDLM's DiT (rotary positions,
    noise-level conditioning); image is Halton-MaskGIT's block (learned positions, register tokens, class
    conditioning with one extra "dropped" class for CFG, head tied to the token embedding)."""

    modality: Literal["text", "image"] = "text"
    vocab_size: int = 50258  # GPT-2 BPE (50257) + [mask]; image: codebook size + [mask] (mask token = codebook size)
    hidden: int = 768
    heads: int = 12
    cond_dim: int = 128  # width of the adaLN conditioning vector
    mlp_ratio: int = 4
    dropout: float = 0.1
    max_seq_len: int = 1024
    K_pre: int = 12  # explicit blocks before the fixed-point block; a plain model has all its blocks here
    K_fp: int = 0  # blocks in the shared fixed-point block F; 0 = plain (no fixed-point part)
    K_post: int = 0  # explicit blocks after the fixed-point block
    injection: Literal["linear", "identity"] = "linear"  # G in Eq. 2
    injection_mlp: Literal["fpdm", "linear"] = "fpdm"  # F's mix of [h, h~]: FPDM's fc1-GELU-fc2, or one Linear
    # F's mix and G under bf16/fp16 autocast: their matmuls autocast like every block's (FPDM; the solver state stays
    # fp32), or run in fp32 (exact to fp32; on an H200, bf16 FP sampling then cost +48% per block over MDLM, not +11%)
    mix_precision: Literal["autocast", "fp32"] = "autocast"
    time_conditioning: bool = False  # MDLM's OWT model conditions on a constant (sigma = 0)
    num_classes: int = 0  # image: class labels 0..num_classes-1; the class embedding has one more row (dropped label)
    registers: int = 0  # image: learned register tokens appended to the grid (Halton-MaskGIT: 1)

    def validate(self, where: str = "model") -> None:
        _within(where, self, 2, MAX_VOCAB, "vocab_size")
        _within(where, self, 0, MAX_CLASSES, "num_classes")
        _within(where, self, 0, MAX_LAYERS, "registers")
        _rule(self.modality == "image" or (self.num_classes == 0 and self.registers == 0),
              f"{where}.num_classes and {where}.registers are image settings; a text model has none")
        _rule(self.modality == "text" or self.num_classes >= 1, f"{where}.num_classes must be >= 1 for an image model")
        _within(where, self, 1, MAX_WIDTH, "hidden", "cond_dim")
        _within(where, self, 1, MAX_HEADS, "heads")
        _within(where, self, 1, 64, "mlp_ratio")
        _within(where, self, 1, MAX_SEQ_LEN, "max_seq_len")
        _within(where, self, 0, MAX_LAYERS, "K_pre", "K_fp", "K_post")
        _in_range(where, self, "dropout", 0.0, 1.0, open_high=True)
        _rule(self.K_pre + self.K_fp + self.K_post >= 1, f"{where}: K_pre + K_fp + K_post must be >= 1, got 0 blocks")
        _rule(self.hidden % self.heads == 0 and self.hidden // self.heads % 2 == 0,
              f"{where}.heads must divide {where}.hidden into an even head width (rotary embedding), "
              f"got hidden {self.hidden} and heads {self.heads}")

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def is_fixed_point(self) -> bool:
        return self.K_fp > 0


@dataclass
class SolverConfig:
    """Fixed-point iterations: stochastic JFB ranges for training (§3.2, App. C.1) and a fixed N for validation."""

    nograd_min: int = 0  # N_ng ~ U{nograd_min..nograd_max}, run under torch.no_grad
    nograd_max: int = 4
    grad_min: int = 3  # N_g ~ U{grad_min..grad_max}, run with gradients
    grad_max: int = 6
    eval_iters: int = 8  # iterations N used for validation NLL

    def validate(self, where: str = "solver") -> None:
        _within(where, self, 0, MAX_ITERS, "nograd_min", "nograd_max", "grad_min", "grad_max", "eval_iters")
        for low, high in (("nograd_min", "nograd_max"), ("grad_min", "grad_max")):
            _rule(getattr(self, low) <= getattr(self, high), f"{where}.{low} must be <= {where}.{high}, "
                  f"got {getattr(self, low)} > {getattr(self, high)}")


@dataclass
class TaskConfig:
    """The masked objective: MDLM's diffusion NELBO (text), or MaskGIT's masked-token cross-entropy (image)."""

    name: Literal["mdlm", "maskgit"] = "mdlm"
    eps: float = 1e-3  # mdlm: log-linear schedule alpha_t = 1 - (1 - eps) t; t ~ U[eps, 1]
    antithetic: bool = True  # mdlm: stratified t across the batch
    label_dropout: float = 0.1  # maskgit: chance a label is replaced by the dropped class (CFG, App. D.3)
    loss_on: Literal["masked", "all"] = "masked"  # maskgit: cross-entropy on masked tokens (Eq. 1) or on all (Halton-MaskGIT)

    def validate(self, where: str = "task") -> None:
        _in_range(where, self, "eps", 0.0, 1.0, open_low=True, open_high=True)
        _in_range(where, self, "label_dropout", 0.0, 1.0)


@dataclass
class DataConfig:
    """The corpus: text tokenised with GPT-2 BPE and packed into fixed-length blocks, or images tokenised to codes."""

    corpus: str = "wiki-sample"  # "wiki-sample", "openwebtext", or a path: .txt, .jsonl, or a directory of them
    seq_len: int = 1024  # tokens per packed block
    # text: "gpt2" (the paper's GPT-2 BPE, 50257 ids), or "bpe-N": a byte-level BPE of N ids trained on this corpus's
    # training documents (cached beside the packed corpus), for small models that cannot afford a 50k-way head
    text_tokenizer: str = "gpt2"
    packing: Literal["wrap", "concat"] = "wrap"  # wrap: MDLM's [BOS] + seq_len-2 tokens + [EOS]; concat: plain cuts
    val_docs: int = 100_000  # the last N documents are held out for validation
    text_field: str = "text"  # JSONL key (or hub dataset column) holding the document text
    # corpus "openwebtext" (data/corpora.py): a Hugging Face dataset, by default OpenWebText's
    hub_id: str = "Skylion007/openwebtext"
    hub_revision: str = ""  # "": main, or its Parquet export (refs/convert/parquet) when main holds a loading script
    hub_config: str = "plain_text"  # the Parquet export's config folder (the loading script's config name)
    hub_split: str = "train"  # the split read (the export's split folder); validation is held out of it (val_docs)
    streaming: bool = False  # read the hub's files while tokenising, without downloading the dataset first
    cache_dir: str = "~/.cache/cofre"  # tokenised corpora are cached here (COFRE_CACHE overrides)
    tokenizer_file: str = ""  # text: a saved corpus BPE (an exported model's tokenizer.json), used instead of training one
    # images (cofre/data/images.py): corpus "fashion-mnist", or a folder with train/<class>/*.JPEG and val/<class>/
    image_size: int = 256  # side after center crop + resize (ImageNette 256; Fashion-MNIST's own size is 28)
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # its IDX .gz files (Debian's dataset-fashion-mnist)
    tokenizer: str = ""  # image tokenizer: a cofre VQ run or checkpoint folder, or llamagen:<path to vq_ds16_c2i.pt>
    train_images: int = 0  # a fixed random subset of N training images; 0: all
    val_images: int = 0  # a fixed random subset of N validation images; 0: all
    class_names: list[str] = field(default_factory=list)  # images: the classes' names when the corpus is not at hand

    def validate(self, where: str = "data") -> None:
        _within(where, self, 1, MAX_SEQ_LEN, "seq_len")
        _within(where, self, 1, MAX_DOCS, "val_docs")
        _within(where, self, 1, MAX_IMAGE_SIZE, "image_size")
        _within(where, self, 0, MAX_DOCS, "train_images", "val_images")
        for name in ("corpus", "text_field", "cache_dir", "fashion_mnist_dir", "hub_id", "hub_config", "hub_split"):
            _rule(getattr(self, name).strip() != "", f"{where}.{name} must not be empty")
        from cofre.data.tokenizer import check_tokenizer_name

        check_tokenizer_name(self.text_tokenizer)
        _rule(not self.tokenizer_file or self.text_tokenizer != "gpt2",
              f"{where}.tokenizer_file is a corpus BPE's file; data.text_tokenizer must be 'bpe-N', got 'gpt2'")
        hub_fields = ("hub_id", "hub_revision", "hub_config", "hub_split", "streaming")
        changed = [f"{where}.{name}" for name in hub_fields if getattr(self, name) != getattr(DataConfig, name)]
        _rule(self.corpus == "openwebtext" or not changed,
              f"{', '.join(changed)}: hub settings, for corpus 'openwebtext' only; corpus is '{self.corpus}'")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then a constant or cosine learning rate."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 2500
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def validate(self, where: str = "optim") -> None:
        _in_range(where, self, "lr", 0.0, 1.0, open_low=True)
        _in_range(where, self, "betas", 0.0, 1.0, open_high=True)
        _in_range(where, self, "eps", 0.0, 1.0, open_low=True)
        _in_range(where, self, "min_lr_ratio", 0.0, 1.0)
        _at_least(where, self, 0, "weight_decay", "grad_clip")
        _within(where, self, 0, MAX_COUNT, "warmup_steps")


@dataclass
class TrainerConfig:
    """The training loop: batch, precision, EMA, logging, validation, checkpoints."""

    max_steps: int = 1_000_000
    global_batch_size: int = 512  # sequences per optimizer step, over all processes
    # at most this many sequences per forward pass per process: each process takes global / processes sequences in
    # the largest micro-batch <= this that divides its share, and accumulates the rest (printed and recorded at start)
    micro_batch_size: int = 32
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile each transformer block (the SJFB loop stays eager: no recompiles)
    log_with: Literal["none", "tensorboard", "wandb"] = "none"  # experiment tracker beside metrics.jsonl
    ema: float = 0.9999  # EMA decay; 0 disables
    seed: int = 1
    log_every: int = 50
    val_every: int = 5000
    val_batches: int = 50  # micro-batches per validation (each with fresh t draws)
    ckpt_every: int = 10_000
    keep_last: int = 3  # checkpoints kept on disk (the newest K)
    skip_nonfinite: int = 0  # steps with a non-finite loss or gradient skipped (no update) before the run stops

    def validate(self, where: str = "trainer") -> None:
        _within(where, self, 1, MAX_COUNT, "max_steps", "global_batch_size", "micro_batch_size", "log_every",
                "val_every", "val_batches", "ckpt_every")
        _within(where, self, 0, MAX_COUNT, "keep_last", "skip_nonfinite")
        _within(where, self, 0, MAX_RECIPE_SEED, "seed")
        _in_range(where, self, "ema", 0.0, 1.0, open_high=True)


@dataclass
class ConsistencyConfig:
    """An auxiliary cross-step loss between a noisier student and a cleaner teacher state (§3.2, §3.4, App. C.3.3).

    CoFRe's consistency stage: loss hidden_mse, teacher self. Conversion adaptation: loss logit_kl,
    teacher checkpoint (the frozen source MDLM), temperature 1.5.
    """

    loss: Literal["none", "hidden_mse", "hidden_cosine", "logit_kl"] = "none"
    teacher: Literal["self", "ema", "checkpoint"] = "self"  # self: stop-gradient of the model itself
    teacher_checkpoint: str = ""  # run or checkpoint folder of the frozen teacher (teacher: checkpoint)
    weight: float = 0.1  # lambda after warm-up; hidden_mse is a mean over positions AND hidden units (a sum over units: lambda / hidden)
    warmup_steps: int = 5000  # lambda rises linearly from 0 over these steps
    gap_min: float = 0.05  # t_c = t_s - gap, gap ~ U[gap_min, gap_max]
    gap_max: float = 0.30
    temperature: float = 1.5  # tau of logit_kl (the loss is scaled by tau^2)
    select_ppl_increase: float = 0.15  # App. F.7: select the first checkpoint whose val PPL exceeds pre x (1 + this); 0: off
    stop_at_selection: bool = True  # end the stage at the selected checkpoint
    continue_optimizer: bool = True  # continue the parent's AdamW moments (L_CONS joins the same run, App. F.6); false: from zero

    def validate(self, where: str = "consistency") -> None:
        _at_least(where, self, 0, "weight", "select_ppl_increase")
        _within(where, self, 0, MAX_COUNT, "warmup_steps")
        _in_range(where, self, "gap_min", 0.0, 1.0)
        _in_range(where, self, "gap_max", 0.0, 1.0)
        _rule(self.gap_min <= self.gap_max, f"{where}.gap_min must be <= {where}.gap_max, got {self.gap_min} > {self.gap_max}")
        _rule(self.temperature > 0, f"{where}.temperature must be > 0, got {self.temperature}")
        _rule(not (self.enabled and self.teacher == "checkpoint" and not self.teacher_checkpoint.strip()),
              f"{where}.teacher is 'checkpoint' but {where}.teacher_checkpoint is empty")

    @property
    def enabled(self) -> bool:
        return self.loss != "none"


@dataclass
class DistillConfig:
    """Self-distillation through time (SDTT, Deschenaux & Gulcehre 2025), the MDLM + SDTT baseline of Tables 2, 13.

    The student matches, on the positions masked in z_t, what a frozen teacher predicts along k ancestral steps
    of size dt from z_t; each round of `round_steps` steps multiplies dt by k and the teacher then takes the
    student's raw weights. `cofre distill` sets `loss` (reverse_kl by default); "none" is ordinary training.
    """

    loss: Literal["none", "reverse_kl", "forward_kl", "logprob_mse", "tv"] = "none"  # reverse_kl: KL(p_student || p_teacher)
    k: int = 2  # teacher ancestral steps per student step
    start_steps: int = 1024  # dt = 1 / start_steps in the first round; x k each round (the student's target step count / k)
    round_steps: int = 10_000  # optimiser steps per round; rounds = trainer.max_steps / round_steps
    teacher_iters: int = 8  # fixed-point iterations of an FP teacher per ancestral step (a plain teacher ignores it)
    init_weights: Literal["ema", "raw"] = "ema"  # which parent weights start student and teacher (the EMA restarts from them)
    # the teacher's step times: paper, t -> t - dt -> ... (SDTT's paper); reference, SDTT's code's interpolated
    # t_i = t linspace(1, 0, k)_i + (1 - t)(t - k dt), clamped at 1e-5 (its released students were trained so)
    teacher_grid: Literal["paper", "reference"] = "paper"

    def validate(self, where: str = "distill") -> None:
        _within(where, self, 2, 1024, "k")
        _within(where, self, 1, MAX_BUDGET, "start_steps")
        _within(where, self, 1, MAX_COUNT, "round_steps")
        _within(where, self, 1, MAX_ITERS, "teacher_iters")

    @property
    def enabled(self) -> bool:
        return self.loss != "none"

    def rounds(self, max_steps: int) -> int:
        return -(-max_steps // self.round_steps)

    def steps_left(self, max_steps: int) -> bool:
        """Does the last round's step k dt stay within one (k^rounds <= start_steps)? Exact, in integers: the powers
        stop growing once they pass start_steps, so a huge round count costs no more than a small one."""
        power = 1
        for _ in range(self.rounds(max_steps)):
            power *= self.k
            if power > self.start_steps:
                return False
        return True

    def dt(self, round_index: int) -> float:
        """dt of round r: (1 / start_steps) k^r (doubling per round for k = 2, as SDTT)."""
        return self.k**round_index / self.start_steps


@dataclass
class Recipe:
    """A whole training recipe, one YAML file."""

    name: str = "run"
    init_from: str = ""  # a run or checkpoint whose weights (and EMA) start this run: post-training stages
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        """Each section's range rules, then the rules between sections."""
        check_name("name", self.name)
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value):
                value.validate(section.name)
        if self.model.modality == "text":
            from cofre.data.tokenizer import tokenizer_vocab

            _rule(self.data.seq_len <= self.model.max_seq_len,
                  f"data.seq_len ({self.data.seq_len}) must be <= model.max_seq_len ({self.model.max_seq_len})")
            ids = tokenizer_vocab(self.data.text_tokenizer)
            _rule(self.model.vocab_size == ids + 1,
                  f"model.vocab_size ({self.model.vocab_size}) must be the tokenizer's {ids} ids + [mask] = {ids + 1} "
                  f"(data.text_tokenizer '{self.data.text_tokenizer}')")
        _rule((self.task.name == "maskgit") == (self.model.modality == "image"),
              f"task.name '{self.task.name}' does not fit model.modality '{self.model.modality}' (text: mdlm, image: maskgit)")
        _rule(not (self.consistency.enabled and self.consistency.teacher == "ema" and self.trainer.ema == 0),
              "consistency.teacher 'ema' needs trainer.ema > 0")
        _rule(not (self.distill.enabled and self.consistency.enabled),
              f"a distill stage trains on the SDTT loss alone; consistency.loss must be 'none', got '{self.consistency.loss}'")
        if self.distill.enabled:
            d = self.distill
            rounds = d.rounds(self.trainer.max_steps)
            _rule(self.model.modality == "text", "distill: SDTT distils text (MDLM) denoisers; this run's "
                  "model.modality is 'image' (images: cofre consistency or cofre shortcut)")
            _rule(d.steps_left(self.trainer.max_steps),
                  f"distill: {rounds} rounds (trainer.max_steps {self.trainer.max_steps} / distill.round_steps "
                  f"{d.round_steps}) from distill.start_steps {d.start_steps} with k {d.k} leave the student under one step; "
                  "use fewer rounds or a larger start_steps")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting YAML's lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CofreError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise CofreError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        return _coerce(value, options[0], where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise CofreError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise CofreError(f"{where}: expected a finite number, got {value!r}")
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise CofreError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {shown(value)}")
    if tp is int and abs(value) > MAX_INT:
        raise CofreError(f"{where}: {shown(value)} is beyond the 64-bit integers cofre holds")
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise CofreError(f"unknown key '{path}'{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build any config dataclass from plain data with the recipe's checks (unknown keys, types)."""
    return _build(cls, values, where)


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """Build a validated Recipe from plain data (as read from YAML)."""
    if not isinstance(values, dict):
        raise CofreError(f"a recipe must be a mapping of sections, got {type(values).__name__}")
    recipe = _build(Recipe, values, "")
    recipe.validate()
    return recipe


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to nested plain data."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CofreError(f"override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        except ValueError:  # an integer of more than 4300 digits: Python refuses to read it
            raise CofreError(f"override '{key}': its value is a number too long to read ({len(raw)} characters)") from None
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CofreError(f"override '{item}': '{part}' is not a section")
        node[leaf] = value
    return values


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s values laid over it, section by section."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a one-line CofreError.

    `base: other.yaml` (relative to this file) lays this file over another recipe, so variants of one recipe
    hold only what differs; the base's `name` is not inherited."""
    if not path.is_file():
        raise CofreError(f"recipe file not found: {path}")
    data = _read_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / str(base)
    if base_path.resolve() in _seen:
        raise CofreError(f"{path}: 'base: {base}' makes a cycle of recipes")
    if not base_path.is_file():
        raise CofreError(f"{path}: base recipe not found: {base_path}")
    inherited = read_yaml(base_path, (*_seen, path.resolve()))
    inherited.pop("name", None)
    return deep_merge(inherited, data)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as err:
        raise CofreError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except ValueError as err:  # an integer of more than 4300 digits: Python refuses to read it
        raise CofreError(f"{path}: holds a number too long to read ({str(err).split(':')[0]})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CofreError(f"{path}: YAML syntax error{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CofreError(f"{path}: a recipe must be a mapping of sections (key: value), got a {type(data).__name__}")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe YAML file, apply dotted overrides, and validate every field."""
    from cofre.kinds import DENOISER, require_kind

    path = Path(path)
    values = apply_overrides(read_yaml(path), overrides or [])
    require_kind(values, DENOISER, path, "recipe")
    values.setdefault("name", path.stem)
    try:
        return recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{path}: {err}") from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain data for YAML/JSON (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(recipe))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
