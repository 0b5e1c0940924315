"""Trainable heads of stage two (docs/design.md §3.1-3.2).

Every head reads only what stage one stored per image:
- `cls`    (B, E)       CLIP image embedding,
- `tokens` (B, P, W)    patch tokens of the last block before ln_post, P = g*g,
- `lare`   (B, 4, H, H) latent reconstruction error (non-negative).

Widths are taken from the CLIP model at build time, never hard-coded; the head's own sizes
(heads, head width, lift widths, gate width, init scale) come from `HeadConfig`, whose defaults
are the reference settings.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clare.config import HeadConfig

# A LaRE map has the 4 channels of the SD latent: a fact of the store, not a head setting.
LARE_CHANNELS = 4

AttentionVariant = Literal["v1", "v2"]


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _check_tokens(tokens: Tensor, grid: int) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != grid * grid:
        raise ValueError(
            f"patch tokens must be (B, {grid * grid}, W) for a {grid}x{grid} grid, got {tuple(tokens.shape)}"
        )


def _with_mean_token(tokens: Tensor) -> Tensor:
    """[mean token; patch tokens]: (B, P, W) -> (B, P+1, W)."""
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


class _SingleQueryAttention(nn.Module):
    """Multi-head attention with one query token, residual on the query, then LayerNorm."""

    def __init__(self, width: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(width, inner)
        self.to_k = nn.Linear(width, inner)
        self.to_v = nn.Linear(width, inner)
        self.to_out = nn.Linear(inner, width)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)
        # False runs the straightforward computation (keys and values of every token).
        self.exact_shortcuts = True

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def attend(self, query: Tensor, context: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """query (B, W), context (B, N, W), bias (B, heads, N) or None.

        Returns the pooled feature (B, W) and the attention weights (B, heads, N).
        """
        if self.exact_shortcuts:
            return self._attend_folded(query, context, bias)
        q = self._split(self.to_q(query.unsqueeze(1)))  # (B, h, 1, d)
        k = self._split(self.to_k(context))  # (B, h, N, d)
        v = self._split(self.to_v(context))
        logits = (q @ k.transpose(-2, -1)).squeeze(2) / math.sqrt(self.head_dim)  # (B, h, N)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        weights = logits.softmax(dim=-1)
        pooled = (self.dropout(weights).unsqueeze(2) @ v).squeeze(2)  # (B, h, d)
        out = self.to_out(pooled.flatten(1))
        return self.norm(query + self.dropout(out)), weights

    def _attend_folded(
        self, query: Tensor, context: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """`attend` with the key and value projections moved off the N context tokens.

        With one query, q.(W_k x + b_k) = (W_k^T q).x + q.b_k and sum_n a_n (W_v x_n + b_v) =
        W_v (sum_n a_n x_n) + b_v sum_n a_n: the same numbers (up to rounding) for about 1/d
        of the multiply-adds, since the projections then act on one vector per head instead
        of on every token. The dropout mask is drawn from the same weights tensor in the same
        order, so training draws the same masks as the straightforward path.
        """
        batch, width = query.shape
        heads, head_dim = self.heads, self.head_dim
        q = self.to_q(query).view(batch, heads, head_dim)
        w_k = self.to_k.weight.view(heads, head_dim, width)
        w_v = self.to_v.weight.view(heads, head_dim, width)
        reach = torch.einsum("bhd,hdw->bhw", q, w_k)  # the query seen from the token side
        logits = reach @ context.transpose(1, 2)  # (B, h, N)
        if self.to_k.bias is not None:
            logits = logits + (q * self.to_k.bias.view(heads, head_dim)).sum(-1, keepdim=True)
        logits = logits / math.sqrt(head_dim)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        weights = logits.softmax(dim=-1)
        dropped = self.dropout(weights)
        mixed = dropped @ context  # (B, h, W): the attention-weighted token per head
        pooled = torch.einsum("bhw,hdw->bhd", mixed, w_v)
        if self.to_v.bias is not None:
            pooled = pooled + dropped.sum(-1, keepdim=True) * self.to_v.bias.view(heads, head_dim)
        out = self.to_out(pooled.flatten(1))
        return self.norm(query + self.dropout(out)), weights


class ErrorGuidedAttention(nn.Module):
    """v1 (LaRE² error-guided spatial attention): the LaRE map biases the attention logits.

    Tokens [mean; patches] + learned positional embedding; the mean token is the only query;
    each head gets an additive bias from a 1x1 conv of the LaRE map pooled to the patch grid.
    """

    def __init__(
        self, grid: int, width: int, shape: HeadConfig | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__()
        shape = shape or HeadConfig()
        self.grid = grid
        self.pos_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * shape.pos_init_std)
        self.lare_bias = nn.Conv2d(LARE_CHANNELS, shape.heads, kernel_size=1)
        self.attention = _SingleQueryAttention(width, shape.heads, shape.head_dim, dropout)

    def head_bias(self, lare: Tensor) -> Tensor:
        """Per-head additive logits (B, heads, P+1); the mean position gets the mean bias."""
        pooled = F.adaptive_avg_pool2d(lare.to(_param_dtype(self)), self.grid)
        per_patch = self.lare_bias(pooled).flatten(2)  # (B, heads, P)
        return torch.cat([per_patch.mean(dim=-1, keepdim=True), per_patch], dim=-1)

    def forward(
        self, tokens: Tensor, lare: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        _check_tokens(tokens, self.grid)
        sequence = _with_mean_token(tokens.to(_param_dtype(self))) + self.pos_embedding
        pooled, weights = self.attention.attend(sequence[:, 0], sequence, self.head_bias(lare))
        return (pooled, weights) if return_attention else pooled


class LareCrossAttention(nn.Module):
    """v2 (CLaRE cross attention): the LaRE map supplies the query, CLIP patches the keys/values.

    The per-head LaRE map is lifted to the token width by 1x1 convs without nonlinearity; the
    query is the mean token of that lifted map plus its positional embedding. Attention has no
    additive bias, so LaRE reaches the output only through the query (and the residual).
    """

    def __init__(
        self, grid: int, width: int, shape: HeadConfig | None = None, dropout: float = 0.1
    ) -> None:
        super().__init__()
        shape = shape or HeadConfig()
        self.grid = grid
        self.lare_bias = nn.Conv2d(LARE_CHANNELS, shape.heads, kernel_size=1)
        widths = (shape.heads, *shape.lift_widths, width)
        self.lift = nn.Sequential(
            *(
                nn.Conv2d(c_in, c_out, kernel_size=1)
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        # The query sequence is [mean; positions] + a (P+1, W) embedding, but only its mean token
        # is used, so only row 0 of that embedding could ever matter: we store just that row
        # (identical output, and no parameter that can never receive a gradient).
        std = shape.pos_init_std
        self.query_pos_embedding = nn.Parameter(torch.randn(1, width) * std)
        self.context_pos_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * std)
        self.attention = _SingleQueryAttention(width, shape.heads, shape.head_dim, dropout)

        # False runs the straightforward computation (lift every position); tests compare them.
        self.exact_shortcuts = True

    def query_token(self, lare: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(lare.to(_param_dtype(self)), self.grid)
        if self.exact_shortcuts:
            # The 1x1 convs are affine with nothing between them, so they commute with the mean
            # over positions: lifting the one mean vector equals the mean of the lifted grid.
            pooled = pooled.mean(dim=(2, 3), keepdim=True)  # (B, 4, 1, 1)
        lifted = self.lift(self.lare_bias(pooled)).flatten(2)  # (B, W, P) or (B, W, 1)
        return lifted.mean(dim=-1) + self.query_pos_embedding  # mean over positions -> (B, W)

    def forward(
        self, tokens: Tensor, lare: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        _check_tokens(tokens, self.grid)
        context = _with_mean_token(tokens.to(_param_dtype(self))) + self.context_pos_embedding
        pooled, weights = self.attention.attend(self.query_token(lare), context, bias=None)
        return (pooled, weights) if return_attention else pooled


class ChannelGate(nn.Module):
    """x_c = mean patch token ⊙ sigmoid(MLP(global mean of the full-resolution LaRE))."""

    def __init__(self, width: int, hidden: int = HeadConfig().gate_hidden) -> None:
        super().__init__()
        self.squeeze = nn.Linear(LARE_CHANNELS, hidden, bias=False)
        self.excite = nn.Linear(hidden, width, bias=False)

    def forward(self, tokens: Tensor, lare: Tensor) -> Tensor:
        dtype = _param_dtype(self)
        channel_means = lare.to(dtype).mean(dim=(2, 3))  # (B, 4)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(channel_means))))
        return tokens.to(dtype).mean(dim=1) * gate


def make_attention(
    variant: AttentionVariant,
    grid: int,
    width: int,
    shape: HeadConfig | None = None,
    dropout: float = 0.1,
) -> ErrorGuidedAttention | LareCrossAttention:
    if variant == "v1":
        return ErrorGuidedAttention(grid, width, shape, dropout)
    if variant == "v2":
        return LareCrossAttention(grid, width, shape, dropout)
    raise ValueError(f"attention variant must be 'v1' or 'v2', got {variant!r}")


class FusionFeatures(nn.Module):
    """f = [x_g, x_s, x_c] (B, 3W): projected CLS, LaRE-guided attention pool, gated mean token."""

    def __init__(
        self,
        embed_dim: int,
        grid: int,
        width: int,
        variant: AttentionVariant = "v2",
        shape: HeadConfig | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        shape = shape or HeadConfig()
        self.variant = variant
        self.width = width
        self.image_proj: nn.Module = (
            nn.Identity() if embed_dim == width else nn.Linear(embed_dim, width)
        )
        self.attention = make_attention(variant, grid, width, shape, dropout)
        self.gate = ChannelGate(width, shape.gate_hidden)

    @property
    def feature_dim(self) -> int:
        return 3 * self.width

    def forward(self, cls: Tensor, tokens: Tensor, lare: Tensor) -> Tensor:
        dtype = _param_dtype(self.gate)
        tokens = tokens.to(dtype)  # stored float16
        x_g = self.image_proj(cls.to(dtype))
        x_s = self.attention(tokens, lare)
        x_c = self.gate(tokens, lare)
        return torch.cat([x_g, x_s, x_c], dim=-1)


class LareHead(nn.Module):
    """The `lare` module (LaRE² EGRE on frozen CLIP): fusion features with v1 attention -> 2 logits."""

    def __init__(
        self,
        embed_dim: int,
        grid: int,
        width: int,
        shape: HeadConfig | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.features = FusionFeatures(embed_dim, grid, width, "v1", shape, dropout)
        self.classifier = nn.Linear(self.features.feature_dim, 2)

    def forward(self, cls: Tensor, tokens: Tensor, lare: Tensor) -> Tensor:
        return self.classifier(self.features(cls, tokens, lare))
