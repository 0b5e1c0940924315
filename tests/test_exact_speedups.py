"""The training step's exact speed-ups against the straightforward computation (issue 25).

Each detector runs twice on the same weights, inputs and dropout seed: once as built (prompts cut
after their end token, text tower sequence-first, v2 lift on the mean, key and value projections
folded into the single query) and once with `use_exact_shortcuts(False)`. Logits and the
gradient of every trainable parameter must agree to 1e-5 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from clare.config import DetectorConfig, PromptConfig
from clare.models.detector import Detector
from clare.models.prompts import PromptLearner
from clare.testing import DISTINCT_DETECTORS

E, W, GRID = 32, 64, 8
RELATIVE = 1e-5
COMBOS = DISTINCT_DETECTORS


def _batch(dtype: torch.dtype, size: int = 6, seed: int = 3) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(size, E, generator=gen, dtype=dtype)
    tokens = torch.randn(size, GRID * GRID, W, generator=gen).half()  # stored as float16
    # 12 is no multiple of the 8x8 grid: adaptive pooling's bins overlap, so the mean of the
    # pooled grid is not the map's mean, and the shortcut must take the former.
    lare = torch.rand(size, 4, 12, 12, generator=gen, dtype=dtype) * 2
    labels = torch.arange(size) % 2
    return cls, tokens, lare, labels


def _logits_and_grads(
    detector: Detector, batch: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    cls, tokens, lare, labels = batch
    detector.train()
    detector.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # the same dropout masks in both runs
    logits = detector(cls, tokens, lare)
    F.cross_entropy(logits, labels).backward()
    grads = {}
    for name, param in detector.named_trainable_parameters():
        assert param.grad is not None, f"{name} received no gradient"
        grads[name] = param.grad.detach().clone()
    return logits.detach(), grads


def _relative(actual: torch.Tensor, expected: torch.Tensor, scale: float = 0.0) -> float:
    """|actual - expected| / the larger of |expected| and `scale` (a reference size for tensors
    whose true value is 0, whose computed value is rounding noise in both paths)."""
    return float((actual - expected).norm()) / max(float(expected.norm()), scale)


def _pair(tiny_clip, config: DetectorConfig) -> tuple[Detector, Detector]:
    model, tokenizer = tiny_clip
    torch.manual_seed(0)
    # A copy of the session's CLIP: the detector keeps its text tower, which .double() converts.
    fast = Detector.from_config(config, copy.deepcopy(model), tokenizer)
    reference = copy.deepcopy(fast).use_exact_shortcuts(False)
    return fast, reference


def _compare(fast: Detector, reference: Detector) -> None:
    """float32, as training runs: logits and the whole gradient to 1e-5 relative. float64, where
    rounding is out of the way: every parameter's own gradient to 1e-5 relative, so a shortcut
    that changed a small gradient slightly could not hide inside the whole one."""
    batch = _batch(torch.float32)
    fast_logits, fast_grads = _logits_and_grads(fast, batch)
    ref_logits, ref_grads = _logits_and_grads(reference, batch)
    assert _relative(fast_logits, ref_logits) <= RELATIVE
    assert fast_grads.keys() == ref_grads.keys()
    names = list(ref_grads)
    whole = _relative(
        torch.cat([fast_grads[n].flatten() for n in names]),
        torch.cat([ref_grads[n].flatten() for n in names]),
    )
    assert whole <= RELATIVE, f"whole gradient differs by {whole:.3g} relative"

    batch = _batch(torch.float64)
    fast_logits, fast_grads = _logits_and_grads(fast.double(), batch)
    ref_logits, ref_grads = _logits_and_grads(reference.double(), batch)
    assert _relative(fast_logits, ref_logits) <= RELATIVE
    # A key bias shifts every logit of its head alike, which the softmax ignores: its true
    # gradient is 0, so it is measured against the largest gradient of the detector.
    largest = max(float(grad.norm()) for grad in ref_grads.values())
    for name, grad in fast_grads.items():
        error = _relative(grad, ref_grads[name], 1e-6 * largest)
        assert error <= RELATIVE, f"gradient of {name} differs by {error:.3g} relative"


@pytest.mark.parametrize(("module", "strategy", "attention"), COMBOS)
def test_shortcuts_give_the_straightforward_logits_and_gradients(
    tiny_clip, module, strategy, attention
):
    config = DetectorConfig(
        module=module, strategy=strategy, attention=attention, prompt=PromptConfig(n_ctx=4)
    )
    fast, reference = _pair(tiny_clip, config)
    _compare(fast, reference)


@pytest.mark.parametrize("position", ["end", "front", "middle"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_prompt_truncation_is_exact_in_every_layout(tiny_clip, position, class_specific):
    """CoCoOp with multi-token names: every layout puts the end token at the same place."""
    prompt = PromptConfig(
        n_ctx=5,
        class_token_position=position,
        class_specific=class_specific,
        classnames=("real_face", "fake"),
    )
    fast, reference = _pair(tiny_clip, DetectorConfig(strategy="cocoop", prompt=prompt))
    learner = fast.prompt
    assert isinstance(learner, PromptLearner)
    # <start> + 5 context + "real face" + "." + <end>: 10 of the 77 positions run.
    assert learner.text_length == 10 == int(learner.eot_index.max()) + 1
    assert learner.text_encoder.plain_blocks  # the sequence-first tower is the one compared
    _compare(fast, reference)


def test_text_tower_runs_only_up_to_the_end_token_and_the_shared_start_once(tiny_clip):
    """The default prompt (16 context tokens + one-token names): 20 positions, not 77; CoCoOp
    runs each image's start token + context, the same in both its prompts, once: 17 + 2 x 3."""
    seen: list[tuple[int, ...]] = []
    for strategy in ("coop", "cocoop"):
        fast, _reference = _pair(tiny_clip, DetectorConfig(strategy=strategy))
        learner = fast.prompt
        assert isinstance(learner, PromptLearner) and learner.shares_prefix
        encoder = learner.text_encoder
        shared = encoder.forward_shared_prefix

        def spy(prefix, tails, eot_index, shared=shared):
            seen.append((prefix.shape[1], tails.shape[1], tails.shape[2]))
            return shared(prefix, tails, eot_index)

        encoder.forward_shared_prefix = spy
        encoder.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[1:2]))
        image = torch.randn(1, 3 * W)
        learner(image)
        learner.shares_prefix = False  # as for class-specific context or names before it
        learner(image)
        learner.exact_shortcuts = False
        learner(image)
    assert seen == [(20,), (20,), (77,), (17, 2, 3), (20,), (77,)]


def test_no_truncation_without_a_causal_mask(tiny_clip):
    """A text tower whose tokens see later ones keeps all positions: cutting would change them."""
    model, tokenizer = tiny_clip
    bidirectional = copy.deepcopy(model)
    bidirectional.attn_mask = torch.zeros_like(model.attn_mask)
    learner = PromptLearner.from_clip(bidirectional, tokenizer, PromptConfig(n_ctx=4))
    assert not learner.text_encoder.causal
    assert learner.text_length == 77
    causal = PromptLearner.from_clip(model, tokenizer, PromptConfig(n_ctx=4))
    assert causal.text_encoder.causal and causal.text_length == 8


def test_a_demo_fit_trains_the_same_weights_either_way(
    tmp_path, demo_data_dir, tiny_models_dir, monkeypatch
):
    """The demo's fit (fusion / CoOp / v2, seed 0), 40 steps, with the shortcuts and without:
    the saved weights agree to float tolerance, and so do the scores they give."""
    from safetensors.torch import load_file
    from test_fit import demo_config

    from clare.stages.extract import run_extract
    from clare.stages.fit import run_fit
    from clare.stages.prepare import run_prepare

    cfg = demo_config(tmp_path, demo_data_dir, tiny_models_dir, "fit.max_steps=40")
    run_prepare(cfg, splits=("train",))
    run_extract(cfg, split="train", quiet=True)
    fast_run = run_fit(cfg, quiet=True).run_dir
    fast = load_file(str(fast_run / "model.safetensors"))
    build = Detector.from_config.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Detector,
        "from_config",
        classmethod(lambda cls, *a, **k: build(cls, *a, **k).use_exact_shortcuts(False)),
    )
    reference = load_file(
        str(run_fit(cfg, overwrite=True, quiet=True).run_dir / "model.safetensors")
    )
    assert fast.keys() == reference.keys()
    whole = _relative(
        torch.cat([fast[n].flatten() for n in reference]),
        torch.cat([reference[n].flatten() for n in reference]),
    )
    assert whole <= 1e-5, f"weights differ by {whole:.3g} relative"
    worst = max(float((fast[n] - reference[n]).abs().max()) for n in reference)
    print(f"demo fit, 40 steps: weights differ by {whole:.3g} relative, at most {worst:.3g}")
