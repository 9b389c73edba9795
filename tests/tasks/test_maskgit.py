"""MaskGIT's objective: the arccos mask-ratio law, label dropout, and the masked-token cross-entropy."""

import math

import torch
import torch.nn.functional as F

from cofre.config import ConsistencyConfig, TaskConfig
from cofre.tasks.consistency import correlated_pair
from cofre.tasks.maskgit import MaskGITTask, arccos_ratio, drop_labels

MASK = 16


def test_arccos_ratio_has_the_arccos_law() -> None:
    """P(r <= a) = 1 - cos(a pi / 2); its mean is 2/pi (most draws mask more than half)."""
    r = arccos_ratio(torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    for a in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(float((r <= a).float().mean()) - (1 - math.cos(a * math.pi / 2))) < 0.005
    assert abs(float(r.mean()) - 2 / math.pi) < 0.003


def test_noise_masks_each_sample_at_its_ratio() -> None:
    task = MaskGITTask(TaskConfig(name="maskgit"), MASK, num_classes=10)
    x = torch.randint(0, MASK, (64, 4096))
    batch = task.noise(x, torch.Generator().manual_seed(1), labels=torch.zeros(64, dtype=torch.long))
    assert torch.allclose(batch.masked.float().mean(1), batch.t, atol=0.03)
    assert torch.equal(batch.z[~batch.masked], x[~batch.masked]) and (batch.z[batch.masked] == MASK).all()


def test_label_dropout_rate() -> None:
    labels = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(2))
    dropped = drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(3))
    is_null = dropped == 10
    assert abs(float(is_null.float().mean()) - 0.1) < 0.004
    assert torch.equal(dropped[~is_null], labels[~is_null])
    assert (drop_labels(labels, 0.0, 10) == labels).all() and (drop_labels(labels, 1.0, 10) == 10).all()


def test_loss_is_cross_entropy_on_masked_codes_or_on_all() -> None:
    x = torch.randint(0, MASK, (3, 9))
    for loss_on in ("masked", "all"):
        task = MaskGITTask(TaskConfig(name="maskgit", loss_on=loss_on), MASK, num_classes=4)
        batch = task.noise(x, torch.Generator().manual_seed(4), labels=torch.tensor([0, 1, 2]))
        where = task.loss_positions(batch)
        logits = torch.randn(int(where.sum()), MASK + 1)
        expected = F.cross_entropy(logits[:, :MASK], x[where])  # [mask] is never a target
        assert torch.allclose(task.loss(logits, batch), expected)
        assert where.sum() == (batch.masked.sum() if loss_on == "masked" else x.numel())


def test_correlated_pair_on_codes_is_nested_and_shares_labels() -> None:
    task = MaskGITTask(TaskConfig(name="maskgit", label_dropout=0.5), MASK, num_classes=4)
    x = torch.randint(0, MASK, (32, 49))
    pair = correlated_pair(task, x, ConsistencyConfig(), torch.Generator().manual_seed(5), torch.randint(0, 4, (32,)))
    assert (pair.cleaner.masked <= pair.student.masked).all()  # the teacher is at least as clean
    assert (pair.cleaner.masked.sum(1) < pair.student.masked.sum(1)).all()  # ... and strictly cleaner
    assert torch.equal(pair.student.labels, pair.cleaner.labels)
    assert (pair.student.t - pair.cleaner.t >= 0).all()
