"""CoOp / CoCoOp prompt learner and the frozen open_clip text encoder (tiny random CLIP)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from clare.config import PromptConfig
from clare.errors import ConfigError, ModelLoadError
from clare.models.detector import Detector
from clare.models.prompts import FrozenTextEncoder, PromptLearner
from clare.models.tiny import TINY_CLIP_NAME

E, W, T, GRID = 32, 64, 48, 8








def _encode(model, tokenizer, texts):
    with torch.no_grad():
        return model.encode_text(tokenizer(texts))


@pytest.mark.parametrize(
    ("position", "texts"),
    [
        ("end", ["a photo of a real.", "a photo of a fake."]),
        ("front", ["real a photo of a.", "fake a photo of a."]),
        ("middle", ["a photo real of a.", "a photo fake of a."]),
    ],
)
@pytest.mark.parametrize("class_specific", [False, True])
def test_coop_from_words_equals_open_clip_encode_text(tiny_clip, position, texts, class_specific):
    model, tokenizer = tiny_clip
    cfg = PromptConfig(
        ctx_init="a photo of a", class_token_position=position, class_specific=class_specific
    )
    learner = PromptLearner.from_clip(model, tokenizer, cfg, "coop")
    assert learner.n_ctx == 4  # from the words, not cfg.n_ctx (16)
    with torch.no_grad():
        features = learner()
    assert features.shape == (2, E)
    torch.testing.assert_close(features, _encode(model, tokenizer, texts), atol=1e-5, rtol=0)


def test_multi_token_class_names_and_positions(tiny_clip):
    model, tokenizer = tiny_clip
    cfg = PromptConfig(
        ctx_init="a blurry photo of",
        class_token_position="middle",
        classnames=("real_face", "fake"),
    )
    learner = PromptLearner.from_clip(model, tokenizer, cfg, "coop")
    assert learner.name_lengths == [2, 1]
    with torch.no_grad():
        features = learner()
    expected = _encode(
        model, tokenizer, ["a blurry real face photo of.", "a blurry fake photo of."]
    )
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_random_context_shapes_and_init(tiny_clip):
    model, tokenizer = tiny_clip
    torch.manual_seed(1)
    shared = PromptLearner.from_clip(model, tokenizer, PromptConfig(n_ctx=16), "coop")
    specific = PromptLearner.from_clip(
        model, tokenizer, PromptConfig(n_ctx=6, class_specific=True), "coop"
    )
    assert shared.ctx.shape == (16, T) and shared.ctx.requires_grad
    assert specific.ctx.shape == (2, 6, T)
    assert 0.01 < float(shared.ctx.detach().std()) < 0.03  # N(0, 0.02)
    for learner in (shared, specific):
        prompts = learner.assemble(learner._class_context())
        assert prompts.shape == (2, 77, T)
        assert learner().shape == (2, E)
    # Prompt embeddings carry the context exactly where the placeholders were.
    prompts = specific.assemble(specific._class_context())
    torch.testing.assert_close(prompts[:, 1:7], specific.ctx)
    torch.testing.assert_close(prompts[:, :1], specific.token_prefix)


def test_frozen_text_encoder_matches_encode_text_on_arbitrary_ids(tiny_clip):
    model, tokenizer = tiny_clip
    encoder = FrozenTextEncoder(model)
    ids = tokenizer(["a face", "a generated face with odd teeth", "x"])
    with torch.no_grad():
        ours = encoder(model.token_embedding(ids), encoder.pool_positions(ids))
    torch.testing.assert_close(
        ours,
        _encode(model, tokenizer, ["a face", "a generated face with odd teeth", "x"]),
        atol=1e-5,
        rtol=0,
    )
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.transformer.training
    assert "token_embedding" not in dict(encoder.named_children())


def test_frozen_text_encoder_custom_text_clip(tiny_clip):
    _, tokenizer = tiny_clip
    torch.manual_seed(3)
    custom = open_clip.create_model(TINY_CLIP_NAME, pretrained=None, force_custom_text=True).eval()
    assert hasattr(custom, "text")
    encoder = FrozenTextEncoder(custom)
    ids = tokenizer(["a photo of a real.", "fake"])
    with torch.no_grad():
        ours = encoder(custom.text.token_embedding(ids), encoder.pool_positions(ids))
        expected = custom.encode_text(ids)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_eos_pooling_reads_the_towers_end_token_id_and_needs_one(tiny_clip):
    _, tokenizer = tiny_clip
    torch.manual_seed(3)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    model.text_pool_type = "eos"
    model.text_eos_id = tokenizer.eot_token_id
    ids = tokenizer(["a face", "a generated face with odd teeth"])
    # The end token is the highest id, so "eos" pooling lands where "argmax" pooling does.
    assert FrozenTextEncoder(model).pool_positions(ids).tolist() == ids.argmax(dim=-1).tolist()
    model.text_eos_id = None
    with pytest.raises(ModelLoadError, match="eos_id"):
        FrozenTextEncoder(model).pool_positions(ids)


def test_cocoop_prompts_differ_per_image_in_one_encoder_call(tiny_clip):
    model, tokenizer = tiny_clip
    torch.manual_seed(2)
    learner = PromptLearner.from_clip(
        model, tokenizer, PromptConfig(n_ctx=4), "cocoop", feature_dim=3 * W
    )
    calls: list[tuple[int, ...]] = []
    encoder = learner.text_encoder
    shared = encoder.forward_shared_prefix

    def spy(prefix, tails, eot_index):
        calls.append((*prefix.shape, *tails.shape))
        return shared(prefix, tails, eot_index)

    encoder.forward_shared_prefix = spy
    batch = 5
    features = learner(torch.randn(batch, 3 * W))
    assert features.shape == (batch, 2, E)
    # All B x 2 prompts in ONE call, cut after the end token: per image, <start> + 4 context
    # once, then each class's name . <end>.
    assert calls == [(batch, 5, T, batch, 2, 3, T)]
    assert not torch.allclose(features[0], features[1], atol=1e-6)
    assert torch.isfinite(features).all()
    with pytest.raises(ValueError):
        learner(None)


def test_cocoop_bias_is_added_to_every_context_vector(tiny_clip):
    model, tokenizer = tiny_clip
    cfg = PromptConfig(ctx_init="a photo of a")
    cocoop = PromptLearner.from_clip(model, tokenizer, cfg, "cocoop", feature_dim=E)
    coop = PromptLearner.from_clip(model, tokenizer, cfg, "coop")
    shift = torch.randn(T) * 0.1
    last = cocoop.meta_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(shift)  # meta-net output is exactly `shift` for every image
        coop.ctx.add_(shift)
        per_image = cocoop(torch.randn(3, E))
        expected = coop()
    for image in range(3):
        torch.testing.assert_close(per_image[image], expected, atol=1e-5, rtol=0)


def test_meta_net_input_dims_follow_module(tiny_clip):
    model, tokenizer = tiny_clip
    cfg = PromptConfig(n_ctx=4)

    def build(module: str, strategy: str, attention: str) -> Detector:
        config = dict(module=module, strategy=strategy, attention=attention, prompt=cfg)
        return Detector.from_config(config, model, tokenizer)

    fusion = build("fusion", "cocoop", "v2")
    clipping = build("clipping", "cocoop", "v1")
    assert fusion.prompt.meta_net[0].in_features == 3 * W
    assert fusion.prompt.meta_net[0].out_features == 3 * W // 16
    assert fusion.prompt.meta_net[-1].out_features == T
    assert clipping.prompt.meta_net[0].in_features == E
    assert clipping.prompt.meta_net[-1].out_features == T
    coop = build("fusion", "coop", "v2")
    assert coop.prompt.meta_net is None


def test_prompt_config_errors(tiny_clip):
    model, tokenizer = tiny_clip
    with pytest.raises(ConfigError, match="n_ctx"):
        PromptLearner.from_clip(model, tokenizer, PromptConfig(n_ctx=80), "coop")
    with pytest.raises(ConfigError, match="ctx_init"):
        PromptLearner.from_clip(model, tokenizer, PromptConfig(ctx_init="  "), "coop")
    with pytest.raises(ConfigError, match="strategy"):
        PromptLearner.from_clip(model, tokenizer, PromptConfig(), "vpt")  # type: ignore[arg-type]
