"""A small Vision Transformer (ViT) for EuroSAT: the model that notebook 10 makes tensor-parallel.

3x64x64 image -> 8x8 patches (an 8x8 grid: 64 tokens) -> `depth` pre-norm transformer blocks -> mean over the
tokens -> 10 class logits. No class token: the mean-pooled tokens feed the head, which keeps the model short.

With the defaults (width 128, 4 heads, 4 blocks, MLP ratio 4) it has 827,530 parameters, 793,088 of them in the
blocks, and almost all of those in four Linear layers per block: attention's `qkv` and `proj`, the MLP's `fc1` and
`fc2`. Those are the layers tensor parallelism splits over ranks (Megatron-LM, Shoeybi et al. 2019, section 3).

The names are part of the course's contract (the checks and the notebook rely on them): `model.patch_embed`,
`model.pos_embed`, `model.blocks` (an nn.ModuleList of `Block`), `model.norm`, `model.head`; in a block `norm1`,
`attn` (`attn.qkv`, `attn.proj`, `attn.heads`), `norm2`, `mlp` (`mlp.fc1`, `mlp.act`, `mlp.fc2`).

Weights start from PyTorch's default initialisation (so a seed fixes them: `torch.manual_seed(s); ViT()`), which
also gives every Linear a non-zero bias; the position embedding starts from N(0, 0.02^2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


class Attention(nn.Module):
    """Multi-head self-attention: one `qkv` Linear makes queries, keys and values of every head, `proj` mixes the
    heads' outputs.

    The `3 * width` output features of `qkv` are laid out **head-major**: head h owns the contiguous block of
    features [h * 3 * head_dim, (h + 1) * 3 * head_dim), its q, then its k, then its v (as Megatron-LM lays out its
    `query_key_value`). So a contiguous slice of qkv's output features (rows of its weight) holds whole heads, q, k
    and v together, and a rank that keeps such a slice can run attention for its heads without anything from the
    other ranks. The more common layout, all q's then all k's then all v's, would need three slices per rank.

    `forward` reads the head size from the features qkv actually produces and from `self.heads`, never from the
    width given to the constructor: a tensor-parallel rank that keeps heads/N whole heads of `qkv` (and the matching
    input features of `proj`) and sets `attn.heads = heads // N` runs this very code on its shard.
    """

    def __init__(self, width: int, heads: int, bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} does not divide into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)                                     # (B, T, 3 * heads * head_dim), head-major
        batch, tokens, features = qkv.shape
        head_dim = features // (3 * self.heads)
        # (B, T, heads, 3, head_dim) -> (3, B, heads, T, head_dim): q, k, v, each with one row per head.
        q, k, v = qkv.view(batch, tokens, self.heads, 3, head_dim).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)         # softmax(q k^T / sqrt(head_dim)) v, per head
        out = out.transpose(1, 2).reshape(batch, tokens, self.heads * head_dim)   # heads side by side again
        return self.proj(out)


class MLP(nn.Module):
    """Linear (width -> mlp_ratio * width), GELU, Linear (back to width): applied to every token alone."""

    def __init__(self, width: int, mlp_ratio: int = 4, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_ratio * width, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

    `bias` applies to the four Linear layers (qkv, proj, fc1, fc2); the layer norms always have theirs.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, bias=bias)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Image (B, 3, image_size, image_size) -> (B, num_classes) logits.

    patch_embed: a Conv2d with kernel = stride = patch_size, i.e. one Linear applied to every non-overlapping
    patch; plus a learned position embedding per patch; then `depth` Blocks, a final LayerNorm, the mean over the
    tokens and a Linear head. `bias` is the blocks' (see Block).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = 64, patch_size: int = 8, width: int = 128,
                 heads: int = 4, depth: int = 4, mlp_ratio: int = 4, bias: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, bias) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)   # (B, width, H/p, W/p) -> (B, tokens, width)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
