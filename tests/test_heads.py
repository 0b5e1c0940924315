"""Trainable heads and the stage-two detector on a tiny random CLIP (E=32, W=64, T=48, 8x8 grid)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from clare.config import DetectorConfig, HeadConfig, PromptConfig
from clare.errors import CheckpointError, ClareError, ConfigError, ShapeMismatchError
from clare.models.detector import MODEL_FILE, Detector
from clare.models.heads import (
    ChannelGate,
    ErrorGuidedAttention,
    FusionFeatures,
    LareCrossAttention,
    LareHead,
)
from clare.scoring import fake_probability
from clare.testing import DISTINCT_DETECTORS

E, W, GRID, P = 32, 64, 8, 64
COMBOS = DISTINCT_DETECTORS






def _inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(batch, E, generator=gen)
    tokens = torch.randn(batch, P, W, generator=gen).half()  # stored as float16
    lare = torch.rand(batch, 4, 32, 32, generator=gen) * 2
    return cls, tokens, lare


def _toy_batch(batch: int = 16, seed: int = 0):
    """Learnable: label 1 shifts cls, tokens and LaRE along fixed directions."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch) % 2
    sign = labels.float() * 2 - 1
    cls = torch.randn(batch, E, generator=gen) + sign[:, None] * torch.randn(E, generator=gen)
    tokens = torch.randn(batch, P, W, generator=gen) + sign[:, None, None] * torch.randn(
        W, generator=gen
    )
    lare = torch.rand(batch, 4, 32, 32, generator=gen) + labels[:, None, None, None] * 0.5
    return cls, tokens.half(), lare, labels


def _detector(tiny_clip, module, strategy, attention, **prompt):
    model, tokenizer = tiny_clip
    config = {"module": module, "strategy": strategy, "attention": attention,
              "prompt": PromptConfig(n_ctx=4, **prompt)}
    return Detector.from_config(config, model, tokenizer)


# ---------------------------------------------------------------------------- heads


@pytest.mark.parametrize("attention_cls", [ErrorGuidedAttention, LareCrossAttention])
def test_attention_shapes_and_float16_tokens(attention_cls):
    torch.manual_seed(0)
    head = attention_cls(grid=GRID, width=W).eval()
    _, tokens, lare = _inputs(3)
    out, weights = head(tokens, lare, return_attention=True)
    assert out.shape == (3, W) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert weights.shape == (3, 8, P + 1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 8))
    assert head.attention.to_q.out_features == 8 * 64
    with pytest.raises(ValueError, match="grid"):
        head(torch.randn(3, P + 1, W), lare)


def test_v1_lare_bias_steers_attention_to_high_error_patch():
    torch.manual_seed(0)
    head = ErrorGuidedAttention(grid=GRID, width=W).eval()
    _, tokens, _ = _inputs(1)
    flat = torch.zeros(1, 4, 32, 32)
    blob = flat.clone()
    blob[:, :, 8:12, 20:24] = 5.0  # one patch of the 8x8 grid: row 2, column 5
    patch = 2 * GRID + 5
    with torch.no_grad():
        head.lare_bias.weight.fill_(1.0)
        head.lare_bias.bias.zero_()
        _, w_flat = head(tokens, flat, return_attention=True)
        _, w_blob = head(tokens, blob, return_attention=True)
        bias = head.head_bias(blob)
    assert not torch.allclose(w_flat, w_blob)
    # +1 for the mean token in front of the patches
    assert (w_blob[0, :, 1 + patch] > 10 * w_flat[0, :, 1 + patch]).all()
    # the mean position's bias is the mean over positions
    torch.testing.assert_close(bias[:, :, 0], bias[:, :, 1:].mean(-1))
    with torch.no_grad():
        head.lare_bias.weight.zero_()
        _, w_zero_flat = head(tokens, flat, return_attention=True)
        _, w_zero_blob = head(tokens, blob, return_attention=True)
    torch.testing.assert_close(w_zero_flat, w_zero_blob)  # no bias -> LaRE cannot steer


def test_v2_lare_enters_only_through_the_query():
    torch.manual_seed(0)
    head = LareCrossAttention(grid=GRID, width=W).eval()
    # The keys and values themselves: the folded attention never forms them (test_exact_speedups).
    head.attention.exact_shortcuts = False
    _, tokens, lare = _inputs(2)
    seen: dict[str, list[torch.Tensor]] = {"q": [], "k": [], "v": []}
    for name in seen:
        layer = getattr(head.attention, f"to_{name}")
        layer.register_forward_hook(lambda m, a, out, name=name: seen[name].append(out.detach()))
    with torch.no_grad():
        with_map = head(tokens, lare)
        zeroed = head(tokens, torch.zeros_like(lare))
    assert not torch.allclose(with_map, zeroed, atol=1e-4)
    assert not torch.allclose(seen["q"][0], seen["q"][1])
    torch.testing.assert_close(seen["k"][0], seen["k"][1], atol=0, rtol=0)
    torch.testing.assert_close(seen["v"][0], seen["v"][1], atol=0, rtol=0)
    # With the query held fixed, the LaRE map has no other way in (no additive bias).
    fixed_query = head.query_token(lare).detach()
    head.query_token = lambda _lare: fixed_query
    with torch.no_grad():
        torch.testing.assert_close(head(tokens, lare), head(tokens, torch.zeros_like(lare) + 7.0))
    widths = [conv.out_channels for conv in head.lift]
    assert widths == [32, 64, 128, 256, W] and head.lift[0].in_channels == 8


def test_channel_gate_uses_global_lare_means_and_scales_mean_token():
    torch.manual_seed(0)
    gate = ChannelGate(W)
    _, tokens, _ = _inputs(2)
    lare = torch.zeros(2, 4, 32, 32)
    lare[:, :, :16] = 1.0  # top half
    moved = torch.zeros(2, 4, 32, 32)
    moved[:, :, :, 16:] = 1.0  # right half: same channel means, other layout
    out = gate(tokens, lare)
    torch.testing.assert_close(out, gate(tokens, moved))
    mean_token = tokens.float().mean(1)
    ratio = out / mean_token
    assert ((ratio > 0) & (ratio < 1)).all()  # a sigmoid gate per channel
    assert not torch.allclose(out, gate(tokens, lare * 3))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_fusion_features_layout(variant):
    torch.manual_seed(0)
    cls, tokens, lare = _inputs(3)
    features = FusionFeatures(E, GRID, W, variant).eval()
    f = features(cls, tokens, lare)
    assert f.shape == (3, 3 * W) and torch.isfinite(f).all()
    torch.testing.assert_close(f[:, :W], features.image_proj(cls))
    torch.testing.assert_close(f[:, 2 * W :], features.gate(tokens, lare))
    same_width = FusionFeatures(W, GRID, W, variant).eval()
    wide_cls = torch.randn(3, W)
    assert isinstance(same_width.image_proj, torch.nn.Identity)
    torch.testing.assert_close(same_width(wide_cls, tokens, lare)[:, :W], wide_cls)
    head = LareHead(E, GRID, W).eval()
    assert isinstance(head.features.attention, ErrorGuidedAttention)
    assert head(cls, tokens, lare).shape == (3, 2)


# ---------------------------------------------------------------------------- detector


@pytest.mark.parametrize("module", ["fusion", "lare", "clipping"])
@pytest.mark.parametrize("strategy", ["coop", "cocoop"])
@pytest.mark.parametrize("attention", ["v1", "v2"])
def test_detector_shapes_every_combination(tiny_clip, module, strategy, attention):
    torch.manual_seed(0)
    detector = _detector(tiny_clip, module, strategy, attention).eval()
    cls, tokens, lare = _inputs(4)
    logits = detector(cls, tokens, lare)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all()
    p_fake = fake_probability(logits)
    torch.testing.assert_close(p_fake, logits.softmax(-1)[:, 1])
    if module != "lare":
        # cosine logits are bounded by CLIP's temperature
        assert logits.abs().max() <= detector.logit_scale.exp() + 1e-4
        torch.testing.assert_close(detector.logit_scale, tiny_clip[0].logit_scale.detach())
    if module == "clipping":
        torch.testing.assert_close(detector(cls), logits)  # tokens / LaRE are not needed
    else:
        with pytest.raises(ShapeMismatchError, match="tokens"):
            detector(cls, tokens[:, :10], lare)
    assert isinstance(
        detector.head.features.attention
        if module == "lare"
        else getattr(detector.features, "attention", None),
        (
            ErrorGuidedAttention if (module == "lare" or attention == "v1") else LareCrossAttention,
            type(None),
        ),
    )


def test_detector_drops_the_visual_tower(tiny_clip):
    model, _ = tiny_clip
    detector = _detector(tiny_clip, "fusion", "cocoop", "v2")
    visual_ids = {id(p) for p in model.visual.parameters()}
    assert all(m is not model.visual for m in detector.modules())
    assert not any(id(p) in visual_ids for p in detector.parameters())
    assert not any(p is model.token_embedding.weight for p in detector.parameters())


@pytest.mark.parametrize(("module", "strategy", "attention"), COMBOS)
def test_one_step_changes_every_trainable_and_no_frozen_weight(
    tiny_clip, module, strategy, attention
):
    model, _ = tiny_clip
    torch.manual_seed(0)
    detector = _detector(tiny_clip, module, strategy, attention).train()
    clip_before = copy.deepcopy(model.state_dict())
    trainable = dict(detector.named_trainable_parameters())
    before = {name: p.detach().clone() for name, p in trainable.items()}
    groups = detector.trainable_parameters()
    optimiser = torch.optim.AdamW(
        [{"params": groups["prompt"]}, {"params": groups["head"]}], lr=1e-2, weight_decay=0.0
    )
    cls, tokens, lare, labels = _toy_batch()
    loss = F.cross_entropy(detector(cls, tokens, lare), labels)
    loss.backward()
    optimiser.step()

    for name, param in trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        assert not torch.equal(param.detach(), before[name]), f"{name} did not change"
    frozen = [(n, p) for n, p in detector.named_parameters() if n not in trainable]
    if module != "lare":
        assert frozen, "the frozen text encoder should be a submodule"
    for name, param in frozen:
        assert not param.requires_grad and param.grad is None, name
    for name, value in model.state_dict().items():
        assert torch.equal(value, clip_before[name]), f"frozen CLIP weight {name} changed"
    n_groups = sum(len(g) for g in groups.values())
    assert n_groups == len(trainable)
    if module == "lare":
        assert groups["prompt"] == []
    else:
        prompt_ids = {id(p) for p in detector.prompt.parameters() if p.requires_grad}
        assert {id(p) for p in groups["prompt"]} == prompt_ids and prompt_ids
    if module == "clipping":
        assert groups["head"] == []


@pytest.mark.parametrize(("module", "strategy", "attention"), COMBOS)
def test_toy_training_lowers_the_loss(tiny_clip, module, strategy, attention):
    torch.manual_seed(0)
    detector = _detector(tiny_clip, module, strategy, attention)
    cls, tokens, lare, labels = _toy_batch()
    optimiser = torch.optim.AdamW(
        [p for group in detector.trainable_parameters().values() for p in group], lr=1e-2
    )

    def eval_loss() -> float:
        detector.eval()
        with torch.no_grad():
            return float(F.cross_entropy(detector(cls, tokens, lare), labels))

    initial = eval_loss()
    detector.train()
    for _ in range(25):
        optimiser.zero_grad()
        F.cross_entropy(detector(cls, tokens, lare), labels).backward()
        optimiser.step()
    final = eval_loss()
    assert final < 0.8 * initial, (initial, final)


def test_trainable_state_dict_round_trip_and_mismatch(tiny_clip):
    model, _ = tiny_clip
    torch.manual_seed(0)
    fusion = _detector(tiny_clip, "fusion", "coop", "v2").eval()
    state = fusion.trainable_state_dict()
    assert set(state) == {name for name, _ in fusion.named_trainable_parameters()}
    assert not any("text_encoder" in key for key in state)
    text_weights = sum(p.numel() for n, p in fusion.named_parameters() if "text_encoder" in n)
    assert sum(v.numel() for v in state.values()) < 300_000 < text_weights + 300_000
    assert "prompt.ctx" in state and "text_proj.weight" in state

    torch.manual_seed(1)
    fresh = _detector(tiny_clip, "fusion", "coop", "v2").eval()
    cls, tokens, lare = _inputs(3)
    assert not torch.allclose(fresh(cls, tokens, lare), fusion(cls, tokens, lare))
    fresh.load_trainable_state_dict(state)
    torch.testing.assert_close(fresh(cls, tokens, lare), fusion(cls, tokens, lare))
    # the returned state is a copy: training on does not alter a saved "best" state
    with torch.no_grad():
        fusion.prompt.ctx.add_(1.0)
    assert not torch.equal(state["prompt.ctx"], fusion.prompt.ctx)

    clipping = _detector(tiny_clip, "clipping", "coop", "v2")
    with pytest.raises(ClareError, match="best.safetensors: weights do not fit .*module=clipping"):
        clipping.load_trainable_state_dict(state, source="best.safetensors")
    other_ctx = _detector(tiny_clip, "fusion", "coop", "v2")
    bad = dict(state)
    bad["prompt.ctx"] = torch.zeros(7, 48)
    with pytest.raises(ClareError, match="prompt.ctx"):
        other_ctx.load_trainable_state_dict(bad)


def test_detector_config_rejects_unknown_choices(tiny_clip):
    with pytest.raises(ConfigError, match="fit.module"):
        _detector(tiny_clip, "vit", "coop", "v2")
    with pytest.raises(ConfigError, match="fit.strategy"):
        _detector(tiny_clip, "fusion", "maple", "v2")
    with pytest.raises(ConfigError, match="fit.attention"):
        _detector(tiny_clip, "fusion", "coop", "v3")


# ---------------------------------------------------------------------------- one home: config, save, load


def test_head_sizes_come_from_the_config_and_default_to_the_reference(tiny_clip):
    model, tokenizer = tiny_clip
    reference = Detector.from_config(DetectorConfig(prompt=PromptConfig(n_ctx=4)), model, tokenizer)
    attention = reference.features.attention
    assert attention.attention.heads == 8 and attention.attention.head_dim == 64
    assert [conv.out_channels for conv in attention.lift] == [32, 64, 128, 256, W]
    assert reference.features.gate.squeeze.out_features == 128
    small = DetectorConfig(
        strategy="cocoop", prompt=PromptConfig(n_ctx=3, meta_net_reduction=4),
        head=HeadConfig(heads=2, head_dim=8, lift_widths=(4, 16), gate_hidden=16),
    )
    detector = Detector.from_config(small, model, tokenizer)
    attention = detector.features.attention
    assert attention.lare_bias.out_channels == 2 and attention.attention.to_q.out_features == 16
    assert [conv.out_channels for conv in attention.lift] == [4, 16, W]
    assert detector.features.gate.squeeze.out_features == 16
    assert detector.prompt.meta_net[0].out_features == 3 * W // 4
    assert detector.prompt.ctx.shape[0] == 3


@pytest.mark.parametrize("module,strategy,attention", COMBOS)
def test_save_then_load_gives_the_same_detector(tiny_clip, tmp_path, module, strategy, attention):
    model, tokenizer = tiny_clip
    config = DetectorConfig(module=module, strategy=strategy, attention=attention,
                            prompt=PromptConfig(n_ctx=3), head=HeadConfig(heads=2, head_dim=16))
    torch.manual_seed(1)
    detector = Detector.from_config(config, model, tokenizer).eval()
    path = detector.save(tmp_path)
    assert path == tmp_path / MODEL_FILE
    loaded = Detector.load(tmp_path, clip_model=model, tokenizer=tokenizer)
    assert loaded.config == config and not loaded.training
    cls, tokens, lare = _inputs(4)
    torch.testing.assert_close(loaded(cls, tokens, lare), detector(cls, tokens, lare), rtol=0, atol=0)


def test_saving_the_same_weights_twice_writes_the_same_bytes(tiny_clip, tmp_path):
    # safetensors orders the metadata map by hash, differently on each save: without sorting,
    # two fits with bit-identical weights recorded different model_sha256 values.
    model, tokenizer = tiny_clip
    torch.manual_seed(1)
    detector = Detector.from_config(DetectorConfig(prompt=PromptConfig(n_ctx=3)), model, tokenizer)
    saved = set()
    for i in range(8):
        (tmp_path / str(i)).mkdir()
        saved.add(detector.save(tmp_path / str(i)).read_bytes())
    assert len(saved) == 1
    loaded = Detector.load(tmp_path / "0", clip_model=model, tokenizer=tokenizer)
    assert loaded.config == detector.config
    for name, value in detector.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[name], value), name


def test_load_refuses_files_that_are_not_saved_detectors(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    model, tokenizer = tiny_clip
    save_file({"x": torch.zeros(2)}, str(tmp_path / MODEL_FILE))  # a safetensors file, not ours
    with pytest.raises(CheckpointError, match="not a clare-detector/1 model file"):
        Detector.load(tmp_path, clip_model=model, tokenizer=tokenizer)
    save_file({"x": torch.zeros(2)}, str(tmp_path / MODEL_FILE),
              metadata={"format": "clare-detector/1", "detector": '{"module": "vit"}'})
    with pytest.raises(CheckpointError, match="malformed detector record"):
        Detector.load(tmp_path, clip_model=model, tokenizer=tokenizer)
    detector = Detector.from_config(DetectorConfig(prompt=PromptConfig(n_ctx=3)), model, tokenizer)
    detector.save(tmp_path)
    with pytest.raises(CheckpointError, match="records no CLIP model"):
        Detector.load(tmp_path)  # saved without naming its CLIP, and none given
    data = (tmp_path / MODEL_FILE).read_bytes()
    (tmp_path / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable weights|not a readable safetensors") as caught:
        Detector.load(tmp_path, clip_model=model, tokenizer=tokenizer)
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="no model file"):
        Detector.load(tmp_path / "elsewhere", clip_model=model, tokenizer=tokenizer)
