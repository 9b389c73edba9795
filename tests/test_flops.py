"""Model FLOPs against a hand count of the same shapes."""

from cofre.config import ModelConfig
from cofre.flops import FlopCounts, peak_flops, sampling_flops_per_token, train_flops_per_token
from cofre.models import Denoiser

D, L, V, R = 32, 16, 64, 4


def model(**parts: int) -> Denoiser:
    return Denoiser(ModelConfig(vocab_size=V, hidden=D, heads=4, cond_dim=8, mlp_ratio=R, max_seq_len=L, **parts))


def test_block_and_head_by_hand() -> None:
    counts = FlopCounts.of(model(K_pre=2), L)
    # qkv 3D^2 + out D^2 + MLP 2 R D^2 multiply-adds per token, 2 FLOPs each; QK^T and AV 2 L D each
    assert counts.block == 2 * (3 * D * D + D * D + 2 * R * D * D) + 4 * L * D
    assert counts.head == 2 * D * V and counts.mix == 0 and counts.injection == 0


def test_mix_counts_what_runs_per_iteration_and_per_step() -> None:
    linear = FlopCounts.of(model(K_pre=1, K_fp=1, K_post=1, injection_mlp="linear"), L)
    assert linear.mix == 2 * D * D and linear.injection == 2 * (D * D + D * D)  # W_h per iteration; W_x and G per step
    fpdm = FlopCounts.of(model(K_pre=1, K_fp=1, K_post=1, injection_mlp="fpdm"), L)
    # fc1 (2D -> 2D): its h half 2D x D per iteration, its h~ half once; fc2 (2D -> D) per iteration
    assert fpdm.mix == 2 * (2 * D * D + 2 * D * D) and fpdm.injection == 2 * (2 * D * D + D * D)


def test_training_counts_grad_iterations_three_times() -> None:
    fp = model(K_pre=1, K_fp=1, K_post=1)
    c = FlopCounts.of(fp, L)
    got = train_flops_per_token(fp, L, n_nograd=2, n_grad=3, head_fraction=0.5)
    expected = 3 * (2 * c.block + c.injection) + (3 * 3 + 2) * (c.block + c.mix) + 3 * 0.5 * c.head
    assert got == expected
    plain = model(K_pre=3)
    assert train_flops_per_token(plain, L, 0, 0, 1.0) == 3 * (3 * c.block + c.head)


def test_sampling_counts_every_step_and_one_head_per_token() -> None:
    fp = model(K_pre=1, K_fp=1, K_post=1)
    c = FlopCounts.of(fp, L)
    got = sampling_flops_per_token(fp, L, [3, 1])
    assert got == 2 * (2 * c.block + c.injection) + 4 * (c.block + c.mix) + c.head
    assert sampling_flops_per_token(model(K_pre=3), L, [0, 0]) == 2 * 3 * c.block + c.head


def test_peak_flops() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12 and peak_flops("NVIDIA L40", "bf16") == 181e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "fp32") is None and peak_flops("cpu", "bf16") is None
    assert peak_flops("cpu", "fp32", override_tflops=2.0) == 2e12
