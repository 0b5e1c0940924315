"""Learnable text prompts (CoOp / CoCoOp) and the frozen open_clip text tower they run through.

A prompt is the token sequence of "X X ... X <classname>." where the placeholder embeddings
"X" are replaced by learned context vectors. The start token (prefix) and the class tokens,
full stop, end token and padding (suffix) are frozen embeddings kept as buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clare.config import PromptConfig
from clare.errors import ConfigError, ModelLoadError

Strategy = Literal["coop", "cocoop"]
Tokenizer = Callable[[Sequence[str]], Tensor]

PLACEHOLDER = "X"


def _text_tower(clip_model: nn.Module) -> tuple[Any, str]:
    """The module holding the text parts (CLIP keeps them flat, CustomTextCLIP under `.text`).

    Typed Any: open_clip ships no type information, and the parts read from the tower are
    typed where FrozenTextEncoder declares them."""
    text = getattr(clip_model, "text", None)
    if text is not None:
        if not hasattr(text, "transformer") or not hasattr(text, "positional_embedding"):
            raise ModelLoadError(
                f"text tower {type(text).__name__} is not an open_clip TextTransformer; "
                "use a CLIP model with the standard open_clip text tower"
            )
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise ModelLoadError(
                f"text tower {type(text).__name__} uses a CoCa class token or padding mask, which "
                "prompt learning does not support; use a CLIP model"
            )
        return text, getattr(text, "pool_type", "argmax")
    if not hasattr(clip_model, "transformer") or not hasattr(clip_model, "token_embedding"):
        raise ModelLoadError(
            f"{type(clip_model).__name__} has no open_clip text tower; use an open_clip CLIP model"
        )
    return clip_model, getattr(clip_model, "text_pool_type", "argmax")


def token_embedding_of(clip_model: nn.Module) -> nn.Embedding:
    tower, _ = _text_tower(clip_model)
    return tower.token_embedding


class FrozenTextEncoder(nn.Module):
    """open_clip's `encode_text` from token embeddings instead of token ids; all weights frozen.

    The token embedding table (the largest text weight) is not kept: prompts arrive as
    embeddings, and the learner reads the table once at construction.
    """

    # Detector uses this marker to leave the module out of trainable state dicts.
    frozen_backbone = True
    # open_clip's text parts; the types say what mypy cannot read from the untyped library.
    transformer: nn.Module
    ln_final: nn.Module
    positional_embedding: Tensor
    text_projection: nn.Linear | Tensor | None
    attn_mask: Tensor | None
    eos_id: int | None

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        tower, pool_type = _text_tower(clip_model)
        if pool_type not in ("argmax", "eos", "first", "last"):
            raise ModelLoadError(
                f"text pool type {pool_type!r} has no single output token; use a CLIP text tower "
                "that pools at the end token"
            )
        self.pool_type = pool_type
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.positional_embedding = tower.positional_embedding
        self.text_projection = tower.text_projection
        mask = getattr(tower, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        # open_clip >= 2.24 transposes inside Transformer.forward; older releases wanted (L, N, D).
        self.expects_batch_first = hasattr(self.transformer, "batch_first")
        self.width: int = tower.token_embedding.embedding_dim
        self.context_length = int(self.positional_embedding.shape[0])
        # Causal attention: a position never sees the ones after it, so a prompt may be cut
        # just after its output token without changing that token's features.
        self.causal = mask is not None and _is_causal_mask(mask)
        # open_clip's plain blocks can run sequence-first (see _run_blocks); others run as built.
        self.plain_blocks = _plain_blocks(self.transformer)
        self.exact_shortcuts = True
        self.requires_grad_(False)
        self.eval()

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return proj.out_features if isinstance(proj, nn.Linear) else int(proj.shape[1])

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        # Frozen: stays in eval mode whatever the detector around it does.
        return super().train(False)

    def pool_positions(self, token_ids: Tensor) -> Tensor:
        """Index of the output token per sequence, as open_clip's text pooling picks it."""
        n, length = token_ids.shape
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            if self.eos_id is None:
                raise ModelLoadError(
                    "text tower pools at its end token but names no end-token id (eos_id); "
                    "use a CLIP model whose text config sets eos_id"
                )
            return token_ids.eq(self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long, device=token_ids.device)
        return torch.full((n,), length - 1, dtype=torch.long, device=token_ids.device)

    def forward(self, prompt_embeddings: Tensor, eot_index: Tensor) -> Tensor:
        """(N, L, T) prompt embeddings and (N,) output positions -> (N, E) text features."""
        length = prompt_embeddings.shape[1]
        dtype = self._dtype()
        x = prompt_embeddings.to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        if self.exact_shortcuts and self.plain_blocks:
            x = self._run_blocks(x, mask)
        elif self.expects_batch_first:
            x = self.transformer(x, attn_mask=mask)
        else:
            x = self.transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        # LayerNorm acts per token, so pooling first gives encode_text's result for less work.
        return self._project(x[torch.arange(x.shape[0], device=x.device), eot_index])

    def _dtype(self) -> torch.dtype:
        get_cast_dtype = getattr(self.transformer, "get_cast_dtype", None)
        tower_dtype = get_cast_dtype() if get_cast_dtype is not None else None
        return tower_dtype or self.positional_embedding.dtype

    def _project(self, pooled: Tensor) -> Tensor:
        x = self.ln_final(pooled)
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def forward_shared_prefix(self, prefix: Tensor, tails: Tensor, eot_index: Tensor) -> Tensor:
        """`forward` of prompts that share their first positions, each shared part run once.

        prefix (S, Lp, T): the shared first positions; tails (S, C, Lt, T): the C prompts'
        remaining positions; eot_index (C,): output positions in the whole prompt (>= Lp).
        Returns (S, C, E), the features of the prompts [prefix[s]; tails[s, c]]. Exact for a
        causal tower with plain blocks (`causal and plain_blocks`): a prefix position never
        sees a tail, so its states are the same in every prompt that starts with it.
        """
        dtype = self._dtype()
        shared, length = prefix.shape[1], prefix.shape[1] + tails.shape[2]
        positions = self.positional_embedding[:length].to(dtype)
        x_prefix = prefix.to(dtype) + positions[:shared]
        x_tails = tails.to(dtype) + positions[shared:]
        blocks: list[Any] = list(cast(nn.ModuleList, self.transformer.resblocks))
        for block in blocks:
            x_prefix, x_tails = _shared_prefix_block(block, x_prefix, x_tails)
        picked = x_tails[:, torch.arange(tails.shape[1], device=tails.device), eot_index - shared]
        return self._project(picked)

    def _run_blocks(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The transformer's blocks on (N, L, T) embeddings, computed sequence-first.

        Same operations as each block's own forward (LayerNorm, torch's multi-head attention,
        MLP, layer scale), in the (L, N, T) layout torch's attention computes in. Why: a
        batch-first nn.MultiheadAttention transposes its input to that layout as a view, and its
        input projection on the strided view runs as a batched matrix multiply, 3x slower on a
        CPU than on the contiguous tensor used here. Per-token parts do not care about layout.
        """
        x = x.transpose(0, 1).contiguous()
        # Any: open_clip's blocks are untyped; _plain_blocks checked what they hold.
        blocks: list[Any] = list(cast(nn.ModuleList, self.transformer.resblocks))
        for block in blocks:
            attn: nn.MultiheadAttention = block.attn
            normed = block.ln_1(x)  # self-attention: query, key and value are the same tokens
            attended, _ = F.multi_head_attention_forward(
                normed,
                normed,
                normed,
                attn.embed_dim,
                attn.num_heads,
                attn.in_proj_weight,
                attn.in_proj_bias,
                attn.bias_k,
                attn.bias_v,
                attn.add_zero_attn,
                attn.dropout,
                attn.out_proj.weight,
                attn.out_proj.bias,
                training=False,
                need_weights=False,
                attn_mask=None if mask is None else mask.to(x.dtype),
            )
            x = x + block.ls_1(attended)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x.transpose(0, 1)


def _shared_prefix_block(block: Any, prefix: Tensor, tails: Tensor) -> tuple[Tensor, Tensor]:
    """One open_clip ResidualAttentionBlock over prefix (S, Lp, W) and tails (S, C, Lt, W):
    the prefix attends causally to itself; each tail position to the whole prefix and to the
    tail positions up to its own. The same numbers as the block on [prefix; tail] per prompt."""
    attn: nn.MultiheadAttention = block.attn
    heads, width = attn.num_heads, prefix.shape[-1]
    count, shared, tail = tails.shape[1], prefix.shape[1], tails.shape[2]

    def split(x: Tensor) -> list[Tensor]:
        """q, k, v of tokens (..., L, W), each (..., heads, L, head_dim)."""
        packed = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        return [
            z.unflatten(-1, (heads, width // heads)).transpose(-3, -2)
            for z in packed.chunk(3, dim=-1)
        ]

    def merge(x: Tensor) -> Tensor:
        return F.linear(x.transpose(-3, -2).flatten(-2), attn.out_proj.weight, attn.out_proj.bias)

    q_p, k_p, v_p = split(prefix)  # (S, h, Lp, d)
    q_t, k_t, v_t = split(tails)  # (S, C, h, Lt, d)
    attended_prefix = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)
    keys = torch.cat([k_p.unsqueeze(1).expand(-1, count, -1, -1, -1), k_t], dim=-2)
    values = torch.cat([v_p.unsqueeze(1).expand(-1, count, -1, -1, -1), v_t], dim=-2)
    # Tail position i sees the whole prefix and tail positions 0..i.
    allowed = torch.ones(tail, shared + tail, dtype=torch.bool, device=tails.device).tril(shared)
    attended_tails = F.scaled_dot_product_attention(q_t, keys, values, attn_mask=allowed)
    prefix = prefix + block.ls_1(merge(attended_prefix))
    tails = tails + block.ls_1(merge(attended_tails))
    prefix = prefix + block.ls_2(block.mlp(block.ln_2(prefix)))
    tails = tails + block.ls_2(block.mlp(block.ln_2(tails)))
    return prefix, tails


def _is_causal_mask(mask: Tensor) -> bool:
    """True when `mask` (L, L) blocks exactly the positions after each query (open_clip's)."""
    length = mask.shape[0]
    future = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    if mask.dtype == torch.bool:  # True = not allowed to attend
        return bool(torch.equal(mask, future))
    return bool(torch.isneginf(mask[future]).all()) and bool((mask[~future] == 0).all())


def _plain_blocks(transformer: nn.Module) -> bool:
    """Whether every block is open_clip's plain ResidualAttentionBlock with torch attention
    (packed input projection, no cross attention) and no gradient checkpointing."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or getattr(transformer, "grad_checkpointing", False):
        return False
    return all(
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and isinstance(block.attn, nn.MultiheadAttention)
        and block.attn.in_proj_weight is not None
        for block in blocks
    )


def _content_ids(tokenizer: Tokenizer, text: str, encoder: FrozenTextEncoder) -> list[int]:
    """Token ids of `text` without the start token, end token and padding."""
    ids = tokenizer([text])[0]
    end = int(encoder.pool_positions(ids[None])[0])
    return ids[1:end].tolist()


class PromptLearner(nn.Module):
    """CoOp (shared or class-specific context) and CoCoOp (context + per-image meta-net bias).

    forward(image_feature) -> text features: CoOp (n_cls, E); CoCoOp (B, n_cls, E).
    """

    # Buffers, registered in __init__.
    token_ids: Tensor
    eot_index: Tensor
    token_prefix: Tensor
    token_suffix: Tensor

    def __init__(
        self,
        text_encoder: FrozenTextEncoder,
        token_embedding: nn.Embedding,
        tokenizer: Tokenizer,
        cfg: PromptConfig,
        strategy: Strategy = "coop",
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if strategy not in ("coop", "cocoop"):
            raise ConfigError(f"fit.strategy={strategy!r}: expected 'coop' or 'cocoop'")
        if strategy == "cocoop" and feature_dim is None:
            raise ValueError("CoCoOp needs feature_dim, the width of the image feature it reads")
        self.text_encoder = text_encoder
        self.strategy = strategy
        self.position = cfg.class_token_position
        self.class_specific = cfg.class_specific
        self.classnames = tuple(name.replace("_", " ") for name in cfg.classnames)
        width = token_embedding.embedding_dim
        embed = token_embedding.weight.detach()
        ctx = self._initial_context(token_embedding, tokenizer, cfg)
        n_ctx = ctx.shape[-2]
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(embed.device))

        prompts = [" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in self.classnames]
        token_ids = tokenizer(prompts).to(embed.device)
        self._check_layout(tokenizer, token_ids, text_encoder, cfg)
        with torch.no_grad():
            embedded = token_embedding(token_ids).float()
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eot_index", text_encoder.pool_positions(token_ids), persistent=False)
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)
        self.name_lengths = [
            len(_content_ids(tokenizer, name, text_encoder)) for name in self.classnames
        ]
        # Positions the text tower must run: up to the last output token when its attention is
        # causal (the rest is padding no output token sees), never fewer than the names need.
        full = token_ids.shape[1]
        last_needed = max(int(self.eot_index.max()) + 1, 1 + n_ctx + max(self.name_lengths))
        self.text_length = min(full, last_needed) if text_encoder.causal else full
        # All classes start with the same positions (start token + shared context) when the class
        # tokens come last: a causal tower then computes those positions once for all classes
        # (CoCoOp, whose B x n_cls prompts make the saving worth it: see forward).
        same_start = bool((self.token_prefix == self.token_prefix[:1]).all())
        self.shares_prefix = (
            self.position == "end"
            and not self.class_specific
            and same_start
            and text_encoder.causal
            and text_encoder.plain_blocks
        )
        # False runs the straightforward computation (all positions); tests compare the two.
        self.exact_shortcuts = True

        self.meta_net: nn.Sequential | None = None
        if strategy == "cocoop" and feature_dim is not None:  # None refused above
            hidden = max(1, feature_dim // cfg.meta_net_reduction)
            self.meta_net = nn.Sequential(
                nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width)
            )

    def _initial_context(
        self, token_embedding: nn.Embedding, tokenizer: Tokenizer, cfg: PromptConfig
    ) -> Tensor:
        """(n_ctx, T), or (n_cls, n_ctx, T) class-specific: the embeddings of `ctx_init`'s words,
        or N(0, ctx_init_std) vectors."""
        embed = token_embedding.weight.detach()
        init_words = cfg.ctx_init.replace("_", " ").strip() if cfg.ctx_init else ""
        if cfg.ctx_init is not None and not init_words:
            raise ConfigError(
                "fit.prompt.ctx_init is empty; give words such as 'a photo of a' or null"
            )
        n_cls, width = len(self.classnames), token_embedding.embedding_dim
        if not init_words:
            shape = (n_cls, cfg.n_ctx, width) if self.class_specific else (cfg.n_ctx, width)
            return torch.randn(shape) * cfg.ctx_init_std
        init_ids = _content_ids(tokenizer, init_words, self.text_encoder)
        if not init_ids:
            raise ConfigError(f"fit.prompt.ctx_init={cfg.ctx_init!r} has no tokens; give words")
        ctx = embed[torch.tensor(init_ids, device=embed.device)].float().clone()
        return ctx.unsqueeze(0).repeat(n_cls, 1, 1) if self.class_specific else ctx

    @classmethod
    def from_clip(
        cls,
        clip_model: nn.Module,
        tokenizer: Tokenizer,
        cfg: PromptConfig,
        strategy: Strategy = "coop",
        feature_dim: int | None = None,
    ) -> PromptLearner:
        encoder = FrozenTextEncoder(clip_model)
        return cls(encoder, token_embedding_of(clip_model), tokenizer, cfg, strategy, feature_dim)

    def _check_layout(
        self, tokenizer: Tokenizer, token_ids: Tensor, encoder: FrozenTextEncoder, cfg: PromptConfig
    ) -> None:
        placeholder = _content_ids(tokenizer, PLACEHOLDER, encoder)
        ends = encoder.pool_positions(token_ids)
        needed = [
            1 + self.n_ctx + len(_content_ids(tokenizer, f"{n}.", encoder)) for n in self.classnames
        ]
        if any(int(end) != need for end, need in zip(ends.tolist(), needed, strict=True)):
            raise ConfigError(
                f"fit.prompt: {self.n_ctx} context tokens plus class names {list(cfg.classnames)} "
                f"do not fit the text context of {token_ids.shape[1]} tokens; lower n_ctx"
            )
        if len(placeholder) != 1 or not bool(
            (token_ids[:, 1 : 1 + self.n_ctx] == placeholder[0]).all()
        ):
            raise ModelLoadError(
                "tokenizer does not produce '<start> X X ... <name>.' token layouts; "
                "use the open_clip tokenizer of the CLIP model"
            )

    @property
    def feature_dim(self) -> int | None:
        if self.meta_net is None:
            return None
        # Sequential indexes as a plain Module; the first layer is the Linear built in __init__.
        return cast(nn.Linear, self.meta_net[0]).in_features

    def _class_context(self) -> Tensor:
        """(n_cls, n_ctx, T) whether the context is shared or class-specific."""
        if self.class_specific:
            return self.ctx
        return self.ctx.unsqueeze(0).expand(len(self.classnames), -1, -1)

    def assemble(self, ctx: Tensor, length: int | None = None) -> Tensor:
        """ctx (..., n_cls, n_ctx, T) -> prompt embeddings (..., n_cls, L, T), or only their
        first `length` positions (at least 1 + n_ctx + the longest name)."""
        lead = ctx.shape[:-3]
        prefix = self.token_prefix.expand(*lead, -1, -1, -1).to(ctx.dtype)
        suffix = self.token_suffix
        if length is not None:
            # Every layout ends with the suffix's tail, so cutting it cuts the prompt's end.
            suffix = suffix[:, : length - 1 - self.n_ctx]
        suffix = suffix.expand(*lead, -1, -1, -1).to(ctx.dtype)
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=-2)
        per_class = []
        half = self.n_ctx // 2
        for index, name_length in enumerate(self.name_lengths):
            start, context = prefix[..., index, :, :], ctx[..., index, :, :]
            name = suffix[..., index, :name_length, :]
            rest = suffix[..., index, name_length:, :]
            if self.position == "front":
                parts = [start, name, context, rest]
            else:  # middle
                parts = [start, context[..., :half, :], name, context[..., half:, :], rest]
            per_class.append(torch.cat(parts, dim=-2))
        return torch.stack(per_class, dim=-3)

    def _shared_prefix_features(self, context: Tensor) -> Tensor:
        """context (S, n_ctx, T), one per image (CoCoOp) or S=1 (CoOp) -> (S, n_cls, E)."""
        start = self.token_prefix[0].to(context.dtype).expand(context.shape[0], -1, -1)
        prefix = torch.cat([start, context], dim=1)  # (S, 1 + n_ctx, T)
        tails = self.token_suffix[:, : self.text_length - 1 - self.n_ctx].to(context.dtype)
        tails = tails.expand(context.shape[0], -1, -1, -1)  # (S, n_cls, Lt, T)
        return self.text_encoder.forward_shared_prefix(prefix, tails, self.eot_index)

    def forward(self, image_feature: Tensor | None = None) -> Tensor:
        ctx = self._class_context()
        length = self.text_length if self.exact_shortcuts else None
        shared = self.exact_shortcuts and self.shares_prefix
        if self.meta_net is None:
            # CoOp's two prompts are too short for the shared start to pay for the extra calls
            # (ViT-L/14 text tower on a CPU: 0.235 s against 0.196 s forward + backward).
            return self.text_encoder(self.assemble(ctx, length), self.eot_index)
        if image_feature is None:
            raise ValueError("CoCoOp prompts need the image feature (B, D) that conditions them")
        bias = self.meta_net(F.normalize(image_feature.to(ctx.dtype), dim=-1))  # (B, T)
        if shared:
            return self._shared_prefix_features(self.ctx.unsqueeze(0) + bias[:, None, :])
        prompts = self.assemble(
            ctx.unsqueeze(0) + bias[:, None, None, :], length
        )  # (B, n_cls, L, T)
        batch, n_cls = prompts.shape[:2]
        # All B x n_cls prompts go through one text-encoder call.
        features = self.text_encoder(prompts.flatten(0, 1), self.eot_index.repeat(batch))
        return features.view(batch, n_cls, -1)
