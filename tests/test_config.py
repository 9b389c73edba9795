"""Recipes: shipped files load, overrides apply, and bad input gives one clear error."""

import dataclasses
import typing
from pathlib import Path

import pytest

from cofre.config import Recipe, config_from_dict, dump_recipe, load_recipe, read_yaml, recipe_from_dict
from cofre.data.image_tokenizers.recipe import is_vq_recipe, load_vq_recipe, vq_recipe_from_dict
from cofre.errors import CofreError
from cofre.evaluation.classifier import load_classifier_recipe
from cofre.training.shortcut import ShortcutRecipe

ALL_RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
KINDS = {p: read_yaml(p).get("kind") for p in ALL_RECIPES}  # None: a denoiser; else a tokenizer, classifier or stage
RECIPES = [p for p in ALL_RECIPES if KINDS[p] is None]
VQ_RECIPES = [p for p in ALL_RECIPES if is_vq_recipe(p)]
OTHER_RECIPES = [p for p in ALL_RECIPES if KINDS[p] in ("classifier", "shortcut")]


def test_every_shipped_recipe_is_of_a_known_kind() -> None:
    from cofre.kinds import KINDS as KNOWN

    assert {kind or "" for kind in KINDS.values()} <= set(KNOWN)


@pytest.mark.parametrize("path", [p for p in ALL_RECIPES if KINDS[p] == "claims"], ids=lambda p: p.stem)
def test_shipped_claims_specs_name_shipped_runs(path: Path) -> None:
    """Every run a claims file reads is one a shipped recipe trains (runs/<recipe name>)."""
    from cofre.evaluation.claims import load_spec

    spec = load_spec(path)
    runs = [spec.text.mdlm, spec.text.fp_mdlm, spec.text.cofre, spec.text.sdtt, spec.text.light, spec.images.maskgit,
            spec.images.fp_maskgit, spec.images.cofre, spec.tiny_maskgit, *spec.probes]
    shipped = {p.stem for p in ALL_RECIPES}
    assert {Path(run).name for run in runs} <= shipped


@pytest.mark.parametrize("path", OTHER_RECIPES, ids=lambda p: p.stem)
def test_shipped_classifier_and_shortcut_recipes_load(path: Path) -> None:
    if KINDS[path] == "classifier":
        assert load_classifier_recipe(path).name == path.stem
    else:  # a stage over a base run, which fills in the base model's width; the fields here must all be known
        assert config_from_dict(ShortcutRecipe, read_yaml(path)).kind == "shortcut"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_load_and_round_trip(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe_from_dict(__import__("yaml").safe_load(dump_recipe(recipe))) == recipe


@pytest.mark.parametrize("path", VQ_RECIPES, ids=lambda p: p.stem)
def test_shipped_vq_recipes_load_and_round_trip(path: Path) -> None:
    recipe = load_vq_recipe(path)
    assert recipe.name == path.stem and recipe.kind == "vq"
    assert vq_recipe_from_dict(__import__("yaml").safe_load(dump_recipe(recipe))) == recipe


def test_paper_recipes_match_the_paper() -> None:
    mdlm = load_recipe(Path(__file__).parents[1] / "recipes/owt-mdlm.yaml")
    fp = load_recipe(Path(__file__).parents[1] / "recipes/owt-fp-mdlm.yaml")
    assert (mdlm.model.hidden, mdlm.model.heads, mdlm.model.K_pre, mdlm.data.seq_len) == (768, 12, 12, 1024)
    assert (mdlm.optim.lr, mdlm.trainer.global_batch_size, mdlm.trainer.ema) == (3e-4, 512, 0.9999)
    assert (fp.model.K_pre, fp.model.K_fp, fp.model.K_post) == (1, 1, 1)
    assert (fp.solver.nograd_min, fp.solver.nograd_max, fp.solver.grad_min, fp.solver.grad_max) == (0, 4, 3, 6)
    assert (fp.optim.lr, fp.optim.grad_clip) == (2e-4, 1.0)
    for recipe in (mdlm, fp):  # per GPU 64, no accumulation on 8 GPUs; MDLM's wrap packing; FPDM's injection
        assert recipe.trainer.micro_batch_size == 64 and recipe.trainer.global_batch_size == 8 * 64
        assert recipe.data.corpus == "openwebtext" and recipe.data.packing == "wrap"
    assert fp.model.injection_mlp == "fpdm"
    stages = [load_recipe(Path(__file__).parents[1] / f"recipes/{n}-cofre.yaml") for n in ("owt", "tiny")]
    assert all(stage.consistency.continue_optimizer for stage in stages)


IMAGE_STAGES = [("imagenette-fp-maskgit", "imagenette-cofre"), ("tiny-fp-maskgit", "tiny-cofre-images")]


@pytest.mark.parametrize("parent_name, stage_name", IMAGE_STAGES)
def test_image_consistency_stages_continue_at_the_parents_final_lr_for_fixed_steps(parent_name: str,
                                                                                     stage_name: str) -> None:
    """The image stage (Tables 16/20: "+10k") neither warms up again nor restarts the cosine: every step runs at the
    rate the parent ended at; and it runs all its steps (App. F.7's +15% early stop is the text stage's)."""
    from cofre.config import deep_merge, read_yaml, recipe_from_dict, recipe_to_dict
    from cofre.training.optim import lr_factor

    root = Path(__file__).parents[1] / "recipes"
    parent = load_recipe(root / f"{parent_name}.yaml")
    final_lr = parent.optim.lr * lr_factor(parent.trainer.max_steps, parent.optim, parent.trainer.max_steps)  # the end
    stage = recipe_from_dict(deep_merge(recipe_to_dict(parent), read_yaml(root / f"{stage_name}.yaml")))  # as stages.py
    rates = [stage.optim.lr * lr_factor(step, stage.optim, stage.trainer.max_steps)
             for step in range(stage.trainer.max_steps)]
    assert rates == pytest.approx([final_lr] * stage.trainer.max_steps, rel=1e-6)
    assert stage.consistency.select_ppl_increase == 0 and stage.consistency.enabled


def test_image_recipes_train_without_ema() -> None:
    """Halton-MaskGIT keeps no EMA and the paper names none for images: image runs sample their raw weights (the
    stages inherit their parent's setting)."""
    images = {p.stem: load_recipe(p).trainer.ema for p in RECIPES if load_recipe(p).model.modality == "image"}
    assert len(images) >= 6 and images == dict.fromkeys(images, 0.0)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {hidden: 64, heads: 4}\n")
    recipe = load_recipe(path, ["model.hidden=128", "optim.betas=[0.8, 0.9]", "optim.lr=1e-3", "name=x"])
    assert recipe.model.hidden == 128 and recipe.optim.betas == (0.8, 0.9)
    assert recipe.optim.lr == 1e-3 and recipe.name == "x"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("model: {hiden: 64}\n", [], "unknown key 'model.hiden'; did you mean 'hidden'?"),
        ("modle: {hidden: 64}\n", [], "unknown key 'modle'; did you mean 'model'?"),
        ("model: {hidden: big}\n", [], "model.hidden: expected int, got str 'big'"),
        ("model: {hidden: 64}\n", ["model.dropout=yes"], "model.dropout: expected float, got bool True"),
        ("optim: {schedule: linear}\n", [], "optim.schedule: 'linear' is not one of 'constant', 'cosine'"),
        ("model: {hidden: 64\n", [], "YAML syntax error at line"),
        ("model: 3\n", [], "model: expected a mapping"),
        ("model: {}\n", ["trainer.max_stepz=3"], "did you mean 'max_steps'?"),
        ("model: {}\n", ["novalue"], "not of the form key.sub=value"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    with pytest.raises(CofreError) as err:
        load_recipe(write(tmp_path, text), overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(CofreError, match="recipe file not found"):
        load_recipe("does/not/exist.yaml")


def test_defaults_are_the_mdlm_baseline() -> None:
    recipe = Recipe()
    assert recipe.model.vocab_size == 50258 and recipe.model.mask_id == 50257 and not recipe.model.is_fixed_point



def _numeric_fields() -> list[str]:
    """Every int or float field of every recipe section, as section.field."""
    sections = [(f.name, f.default_factory) for f in dataclasses.fields(Recipe) if f.default_factory is not dataclasses.MISSING]
    return [f"{name}.{key}" for name, cls in sections for key, tp in typing.get_type_hints(cls).items() if tp in (int, float)]


@pytest.mark.parametrize("key", _numeric_fields())
def test_every_numeric_field_has_a_range_rule(key: str) -> None:
    """A new numeric recipe field needs a rule in its section's validate(); the message names the field."""
    section, name = key.split(".")
    with pytest.raises(CofreError, match=rf"\b{key}\b"):
        recipe_from_dict({section: {name: -10**9}})
