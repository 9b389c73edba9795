"""The batch layout: the recipe fixes the global batch, its micro-batch size bounds each device's forward pass."""

import pytest

from cofre.config import load_recipe
from cofre.errors import CofreError
from cofre.training.batches import BatchLayout, BlockOrder, batch_layout


@pytest.mark.parametrize("global_batch, bound, processes, micro, accumulation", [
    (16, 16, 1, 16, 1),
    (16, 16, 2, 8, 1),  # the README's two-process CPU line on a tiny recipe
    (128, 32, 8, 16, 1),  # MaskGIT-Large on 8 GPUs (the micro-batch was refused before)
    (128, 64, 4, 32, 1),
    (512, 64, 8, 64, 1),  # the paper's OpenWebText layout
    (512, 32, 1, 32, 16),
    (12, 5, 1, 4, 3),  # the largest micro-batch <= the bound that divides the share
    (14, 4, 2, 1, 7),  # a prime share: micro-batches of one
])
def test_layout_derives_micro_batch_and_accumulation(global_batch: int, bound: int, processes: int, micro: int,
                                                     accumulation: int) -> None:
    layout = batch_layout(global_batch, bound, processes)
    assert (layout.micro_batch, layout.accumulation) == (micro, accumulation)
    assert layout.micro_batch * layout.accumulation * layout.processes == global_batch
    assert layout.micro_batch <= bound


def test_a_batch_the_processes_cannot_share_is_one_line() -> None:
    with pytest.raises(CofreError, match="global_batch_size 10 cannot be split evenly over 4 processes"):
        batch_layout(10, 16, 4)


def test_micro_batches_cover_each_process_share_once() -> None:
    order = BlockOrder(n_blocks=100, global_batch=12, seed=1)
    layout = batch_layout(12, 4, 3)
    shares = [order.micro_batches(5, rank, layout) for rank in range(3)]
    assert all(len(mbs) == layout.accumulation and all(len(m) == layout.micro_batch for m in mbs) for mbs in shares)
    seen = sorted(int(i) for mbs in shares for m in mbs for i in m)
    assert seen == sorted(order.global_indices(5).tolist())


# The recipes a table compares share their per-device micro-batch, so its time and memory columns compare models at
# equal per-GPU batch (Table 7: MDLM vs FP-MDLM; Table 15: MaskGIT-Large, MaskGIT-12, FP-MaskGIT), at any GPU count.
COMPARED = {
    "Table 7": ["owt-mdlm", "owt-fp-mdlm"],
    "Table 7 (tiny)": ["tiny-mdlm", "tiny-fp-mdlm"],
    "Table 15": ["imagenette-maskgit-large", "imagenette-maskgit-12", "imagenette-fp-maskgit"],
    "Table 15 (tiny)": ["tiny-maskgit", "tiny-maskgit-2", "tiny-fp-maskgit"],
}


@pytest.mark.parametrize("table", sorted(COMPARED))
@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_compared_recipes_share_the_per_device_batch(table: str, processes: int) -> None:
    layouts: set[BatchLayout] = set()
    for name in COMPARED[table]:
        recipe = load_recipe(f"recipes/{name}.yaml")
        layouts.add(batch_layout(recipe.trainer.global_batch_size, recipe.trainer.micro_batch_size, processes))
    assert len(layouts) == 1, (table, layouts)
