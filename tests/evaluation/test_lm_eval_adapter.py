"""lm-eval adapter: the MC bound matches its exact expectation under a known distribution; offline MC task."""

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from cofre.config import ModelConfig, Recipe
from cofre.data.tokenizer import gpt2_tokenizer
from cofre.errors import CofreError
from cofre.evaluation.lm_eval_adapter import LOCAL_TASKS, CofreLM, plot_lm_eval, run_lm_eval
from cofre.models import Denoiser
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files

EPS = 1e-3


def gpt2_recipe(max_seq_len: int = 64, K_fp: int = 0) -> Recipe:
    recipe = Recipe(name="lm-eval-test")
    recipe.model = ModelConfig(hidden=16, heads=2, cond_dim=8, dropout=0.0, max_seq_len=max_seq_len,
                               K_pre=1, K_fp=K_fp, K_post=K_fp)
    recipe.data.seq_len = max_seq_len  # a recipe that could have trained this model (checked on load)
    recipe.solver.eval_iters = 2
    recipe.task.eps = EPS
    return recipe


def fixed_distribution_lm(favoured: dict[str, float], max_seq_len: int = 64, **kwargs: int) -> CofreLM:
    """A plain denoiser whose logits are the same everywhere: 0, except `favoured` single tokens."""
    recipe = gpt2_recipe(max_seq_len)
    model = Denoiser(recipe.model)
    bias = torch.zeros(recipe.model.vocab_size)
    for text, logit in favoured.items():
        (token,) = gpt2_tokenizer().encode_ordinary(text)
        bias[token] = logit
    with torch.no_grad():  # the head's weight and the adaLN shift/scale are zero at init: logits = bias
        model.output_layer.linear.bias.copy_(bias)
    return CofreLM(model, recipe, **kwargs)


def log_probs(lm: CofreLM) -> torch.Tensor:
    """The stand-in's log p over the real vocabulary (SUBS drops the [mask] column)."""
    return torch.log_softmax(lm.model.output_layer.linear.bias[: lm.mask_id].detach().double(), dim=0)


def ll_request(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", doc={}, arguments=(context, continuation), idx=0)


def test_single_token_bound_matches_its_expectation() -> None:
    # one maskable token: E_t[(1/t) P(masked | t)] (-log p) with P(masked) = 1 - alpha_t = (1 - eps) t
    lm = fixed_distribution_lm({" Paris": 4.0}, mc_draws=4096, batch_size=4096)
    (loglik, _), = lm.loglikelihood([ll_request("The capital of France is", " Paris")])
    token = gpt2_tokenizer().encode_ordinary(" Paris")[0]
    expected = (1 - EPS) * float(log_probs(lm)[token])
    # per-draw variance (1-eps) E[1/t] - (1-eps)^2 = ln(1/eps) - (1-eps)^2, times (log p)^2
    stderr = abs(expected) * math.sqrt((math.log(1 / EPS) - (1 - EPS) ** 2) / lm.mc_draws)
    assert loglik == pytest.approx(expected, abs=4 * stderr)


def test_rolling_bound_over_windows_matches_its_expectation() -> None:
    # every text token is maskable (the leading EOS stays visible): E = (1 - eps) * sum_i -log p(x_i)
    lm = fixed_distribution_lm({" the": 3.0}, max_seq_len=8, mc_draws=512, batch_size=4096)
    text = " the the cat the the dog the the the bird the the fish the the the cow the the"
    tokens = gpt2_tokenizer().encode_ordinary(text)
    assert len(tokens) + 1 > 2 * lm.max_len  # three windows
    (loglik,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    expected = (1 - EPS) * float(log_probs(lm)[tokens].sum())
    assert loglik == pytest.approx(expected, rel=0.1)  # the estimate's relative std is about 2.3% here


def test_prefers_the_more_probable_choice_and_reports_greedy() -> None:
    lm = fixed_distribution_lm({" Paris": 5.0, " London": 2.0}, mc_draws=8)
    (paris, paris_greedy), (london, london_greedy), (berlin, _) = lm.loglikelihood(
        [ll_request("Question: What is the capital of France?\nAnswer:", c) for c in (" Paris", " London", " Berlin")])
    assert paris > london > berlin
    assert paris_greedy and not london_greedy


def test_estimate_is_deterministic_and_independent_of_batching() -> None:
    requests = [ll_request("Two plus three is", c) for c in (" five", " four and a half", " six")]
    requests.append(ll_request("", "Hello world"))  # empty context: a visible EOS
    a = fixed_distribution_lm({" five": 2.0}, mc_draws=16, batch_size=5).loglikelihood(requests)
    b = fixed_distribution_lm({" five": 2.0}, mc_draws=16, batch_size=64).loglikelihood(requests)
    assert [g for _, g in a] == [g for _, g in b]
    assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], rel=1e-12)
    c = fixed_distribution_lm({" five": 2.0}, mc_draws=16, seed=2).loglikelihood(requests)
    assert [ll for ll, _ in a] != [ll for ll, _ in c]


def test_trailing_context_space_moves_to_the_continuation() -> None:
    lm = fixed_distribution_lm({" Paris": 3.0}, mc_draws=8)
    moved, given = lm.loglikelihood([ll_request("Answer: ", "Paris"), ll_request("Answer:", " Paris")])
    assert moved == given


def test_left_truncation_keeps_the_continuation_and_rejects_overlong_ones() -> None:
    lm = fixed_distribution_lm({" Paris": 3.0}, max_seq_len=8, mc_draws=8)
    (loglik, greedy), = lm.loglikelihood([ll_request(" ".join(["word"] * 40), " Paris")])
    assert loglik < 0 and greedy  # the context was cut to 7 tokens; the continuation token is still scored
    with pytest.raises(CofreError, match="exceeds the model's max_seq_len 8"):
        lm.loglikelihood([ll_request("Answer:", " Paris" * 9)])
    with pytest.raises(NotImplementedError, match="cofre sample"):
        lm.generate_until([Instance("generate_until", {}, ("Hi", {}), 0)])


def test_rejects_a_model_without_gpt2_vocabulary() -> None:
    recipe = gpt2_recipe()
    recipe.model.vocab_size = 40
    with pytest.raises(CofreError, match="GPT-2 BPE"):
        CofreLM(Denoiser(recipe.model), recipe)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_checkpoint(root: Path) -> Path:
    """A random fixed-point model with GPT-2's vocabulary, published as a run's latest checkpoint."""
    recipe = gpt2_recipe(K_fp=1)
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    write_checkpoint_files(staging_dir(root / "checkpoints", 1), model, None, recipe, {})
    return publish_checkpoint(root / "checkpoints", 1, keep_last=1)


def user_task_folder(root: Path) -> Path:
    """A user's own task, written as the shipped YAML says: a copy of the YAML and loader, a new JSONL."""
    folder = root / "my_tasks"
    folder.mkdir()
    shutil.copy(LOCAL_TASKS / "jsonl_loader.py", folder)
    rows = [{"question": "What is one plus one?", "choices": ["two", "three"], "answer": 0}] * 2
    (folder / "my_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = (LOCAL_TASKS / "cofre_local_mc.yaml").read_text()
    (folder / "my_mc.yaml").write_text(yaml.replace("task: cofre_local_mc", "task: my_mc")
                                       .replace("data_file: cofre_local_mc.jsonl", "data_file: my_mc.jsonl"))
    return folder


def test_local_multiple_choice_tasks_run_offline(tmp_path: Path, no_network: None) -> None:
    folder = write_checkpoint(tmp_path / "run")
    result = run_lm_eval(tmp_path / "run", ["cofre_local_mc", "my_mc"], include_path=user_task_folder(tmp_path),
                         mc_draws=4, batch_size=64, limit=6, seed=3)
    metrics = result.tasks["cofre_local_mc"]
    assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0
    assert metrics["acc"] * 6 == pytest.approx(round(metrics["acc"] * 6))  # a fraction of the 6 questions
    assert result.tasks["my_mc"]["sample_len"] == 2 and 0.0 <= result.tasks["my_mc"]["acc"] <= 1.0
    assert (result.mc_draws, result.seed, result.limit, result.checkpoint) == (4, 3, 6, str(folder))
    plot_lm_eval({"one": result, "two": result}, tmp_path / "lm-eval.png")  # Table 11 as bars
    assert (tmp_path / "lm-eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # indexes all of lm-eval's built-in tasks (several seconds)
def test_unknown_task_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="unknown lm-eval task.*lm-eval ls tasks.*cofre_local_mc") as err:
        run_lm_eval(tmp_path, ["no_such_task_anywhere"])
    assert "\n" not in str(err.value)
