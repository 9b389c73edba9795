"""Linear CKA (App. C.3.1): its invariances, a known two-block structure, residual streams, the end-to-end report."""

import json
import math
from pathlib import Path

import pytest
import torch

from cofre.config import ModelConfig, load_recipe
from cofre.evaluation.cka import (
    analyze_checkpoint,
    cka_matrix,
    linear_cka,
    residual_streams,
    summarize,
    suggested_map,
    write_cka_outputs,
)
from cofre.models import Denoiser
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files


def features(n: int = 2000, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 3.0  # correlated, off-centre


def test_cka_of_a_matrix_with_itself_is_one() -> None:
    X = features()
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X[:10], X[:10]) == pytest.approx(1.0, abs=1e-12)  # N < d: the Gram-matrix path


def test_cka_matches_the_formula_by_hand() -> None:
    X, Y = features(50, 4, seed=1), features(50, 3, seed=2).double()
    Xc, Yc = X.double() - X.double().mean(0), Y - Y.mean(0)
    expected = (Xc.T @ Yc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm())
    assert linear_cka(X, Y) == pytest.approx(float(expected), rel=1e-12)
    assert linear_cka(X[:3], Y[:3]) == pytest.approx(
        float((lambda a, b: (a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))(
            Xc[:3] - Xc[:3].mean(0), Yc[:3] - Yc[:3].mean(0))), rel=1e-10)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling() -> None:
    X = features(seed=3)
    Y = X + 2.0 * features(seed=4)  # related to X, but not the same
    Q, _ = torch.linalg.qr(torch.randn(X.shape[1], X.shape[1], generator=torch.Generator().manual_seed(5)))
    base = linear_cka(X, Y)
    assert 0.05 < base < 0.95
    assert linear_cka(X @ Q, Y) == pytest.approx(base, rel=1e-5)
    assert linear_cka(X, Y @ Q) == pytest.approx(base, rel=1e-5)
    assert linear_cka(7.5 * X, 0.01 * Y) == pytest.approx(base, rel=1e-6)
    assert linear_cka(X + 100.0, Y) == pytest.approx(base, rel=1e-5)  # columns are centred
    # ... but not to an arbitrary (non-orthogonal, anisotropic) linear map: CKA is not CCA.
    D = torch.diag(torch.logspace(-2, 2, X.shape[1]))
    assert abs(linear_cka(X @ D, Y) - base) > 1e-2


def test_cka_of_independent_random_features_is_near_zero() -> None:
    g = torch.Generator().manual_seed(6)
    X, Y = torch.randn(8000, 16, generator=g), torch.randn(8000, 16, generator=g)
    assert linear_cka(X, Y) < 0.01  # expectation ~ d/N for N >> d
    assert linear_cka(X, X + 0.1 * Y) > 0.95


def test_two_block_structure_gives_the_boundary_and_the_map() -> None:
    g = torch.Generator().manual_seed(7)
    A, B = torch.randn(3000, 20, generator=g), torch.randn(3000, 20, generator=g)
    layers = [A + 0.3 * torch.randn(A.shape, generator=g) for _ in range(3)]
    layers += [B + 0.3 * torch.randn(B.shape, generator=g) for _ in range(3)]
    matrix = cka_matrix(layers)
    assert torch.allclose(matrix, matrix.T) and torch.allclose(matrix.diagonal(), torch.ones(6, dtype=torch.float64))
    consecutive, boundary, within_early, within_late, across = summarize(matrix)
    assert boundary == 3
    assert suggested_map(boundary, len(layers)) == "1,4,6"
    assert consecutive[2] < 0.05 and min(consecutive[:2] + consecutive[3:]) > 0.8
    assert within_early > 0.8 and within_late > 0.8 and across < 0.05
    # off-diagonal means: the early block's value is the mean of its three off-diagonal pairs
    assert within_early == pytest.approx(float(matrix[[0, 0, 1], [1, 2, 2]].mean()), rel=1e-12)


def test_boundary_moves_with_the_structure() -> None:
    g = torch.Generator().manual_seed(8)
    A, B = torch.randn(2000, 12, generator=g), torch.randn(2000, 12, generator=g)
    layers = [A + 0.2 * torch.randn(A.shape, generator=g)] + [B + 0.2 * torch.randn(B.shape, generator=g)
                                                              for _ in range(4)]
    _, boundary, within_early, _, _ = summarize(cka_matrix(layers))
    assert boundary == 1 and math.isnan(within_early)  # a one-layer block has no off-diagonal pair
    assert suggested_map(boundary, len(layers)) == "1,2,5"


def perturbed(model: Denoiser, seed: int = 0) -> Denoiser:
    """adaLN gates start at zero (every block is the identity); perturb so the blocks differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_residual_streams_of_a_plain_model_end_at_its_final_hidden_state() -> None:
    cfg = ModelConfig(vocab_size=40, hidden=16, heads=2, cond_dim=8, dropout=0.0, K_pre=5, K_fp=0, K_post=0,
                      time_conditioning=True)
    model = perturbed(Denoiser(cfg))
    z, sigma = torch.randint(0, 40, (3, 7)), torch.rand(3)
    with torch.no_grad():
        streams, labels = residual_streams(model, z, sigma, n_iters=4)
        out = model(z, sigma)
        cond = model.conditioning(sigma, z.shape[1])
        h_pre = model.pre_stack(z, cond)
    assert labels == [f"layer {k}" for k in range(1, 6)]
    assert len(streams) == 5 and all(s.shape == (21, 16) for s in streams)
    torch.testing.assert_close(streams[-1], out.hidden.reshape(21, 16))
    torch.testing.assert_close(streams[-1], model.post_stack(h_pre, cond).reshape(21, 16))
    assert not torch.allclose(streams[0], streams[1])  # each block is seen, not the same state repeated


def test_residual_streams_of_a_fixed_point_model_follow_its_solver() -> None:
    cfg = ModelConfig(vocab_size=40, hidden=16, heads=2, cond_dim=8, dropout=0.0, K_pre=1, K_fp=2, K_post=1)
    model = perturbed(Denoiser(cfg), seed=1)
    z, sigma = torch.randint(0, 40, (2, 6)), torch.rand(2)
    with torch.no_grad():
        streams, labels = residual_streams(model, z, sigma, n_iters=3)
        out = model(z, sigma, n_nograd=3)
        cond = model.conditioning(sigma, z.shape[1])
        h = model.pre_stack(z, cond)
        injected = model.inject(h)
        iterates = []
        for _ in range(3):
            h = model.fp_step(h, injected, cond)
            iterates.append(h.reshape(12, 16))
    assert labels == ["pre 1", "fp 1.1", "fp 1.2", "fp 2.1", "fp 2.2", "fp 3.1", "fp 3.2", "post 1"]
    assert len(streams) == model.blocks_per_step(3)
    for n in range(3):  # the second block of iteration n is F's output h^{n+1}
        torch.testing.assert_close(streams[2 + 2 * n], iterates[n])
    torch.testing.assert_close(streams[-1], out.hidden.reshape(12, 16))


def save_checkpoint(root: Path, recipe_path: Path) -> Path:
    recipe = load_recipe(recipe_path)
    recipe.model.K_pre, recipe.model.K_fp, recipe.model.K_post = 6, 0, 0  # a plain 6-layer MDLM
    torch.manual_seed(0)
    model = perturbed(Denoiser(recipe.model), seed=2)
    checkpoints = root / "run" / "checkpoints"
    write_checkpoint_files(staging_dir(checkpoints, 1), model, None, recipe, {})
    return publish_checkpoint(checkpoints, 1, keep_last=1)


def test_analyze_checkpoint_end_to_end(tmp_path: Path, tiny_recipe: Path) -> None:
    folder = save_checkpoint(tmp_path, tiny_recipe)
    report = analyze_checkpoint(tmp_path / "run", timesteps=(0.2, 0.8), batches=2, batch_size=3, seed=1,
                                max_tokens=150, device="cpu")
    assert report.checkpoint == str(folder)
    assert report.labels == [f"layer {k}" for k in range(1, 7)]
    assert report.num_tokens == 150 and report.timesteps == [0.2, 0.8] and set(report.per_t) == {"0.2", "0.8"}
    mean = torch.tensor(report.matrix, dtype=torch.float64)
    assert mean.shape == (6, 6) and torch.allclose(mean, mean.T)
    assert torch.allclose(mean.diagonal(), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(mean, torch.tensor([report.per_t["0.2"], report.per_t["0.8"]], dtype=torch.float64).mean(0))
    assert ((mean > -1e-9) & (mean < 1 + 1e-9)).all()
    assert report.consecutive == pytest.approx([report.matrix[i][i + 1] for i in range(5)])
    assert report.boundary == min(range(5), key=lambda i: report.consecutive[i]) + 1
    assert report.suggested_map == f"1,{report.boundary + 1},6"
    again = analyze_checkpoint(folder, timesteps=(0.2, 0.8), batches=2, batch_size=3, seed=1, max_tokens=150,
                               device="cpu")
    assert again.matrix == report.matrix  # a fixed seed gives the same blocks, masks and token rows

    paths = write_cka_outputs(report, tmp_path / "out")
    assert [p.name for p in paths] == ["cka.json", "cka_heatmap.png", "cka_consecutive.png"]
    saved = json.loads(paths[0].read_text())
    assert saved["boundary"] == report.boundary and saved["suggested_map"] == report.suggested_map
    assert saved["matrix"] == report.matrix
    for png in paths[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
