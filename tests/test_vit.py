"""eurosat.vit: the ViT of notebook 10 (single process, fast). Shapes, the parameter count (827,530 with the defaults:
793,088 in the four blocks), the names the checks rely on, seeded initialisation, and the head-major qkv layout that
lets a tensor-parallel rank run the same Attention code on a contiguous slice of whole heads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from eurosat.vit import Attention, Block, ViT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = ViT()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 827_530
    assert sum(p.numel() for p in model.blocks.parameters()) == 4 * 198_272
    small = ViT(num_classes=5, image_size=32, patch_size=4, width=64, heads=2, depth=2, mlp_ratio=2, bias=False)
    assert small(torch.randn(3, 3, 32, 32)).shape == (3, 5)
    assert small.pos_embed.shape == (1, 64, 64)


def test_the_names_the_checks_use():
    model = ViT(bias=False)
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == 4
    assert isinstance(model.patch_embed, nn.Conv2d) and isinstance(model.head, nn.Linear)
    block = model.blocks[0]
    assert isinstance(block, Block) and isinstance(block.attn, Attention) and block.attn.heads == 4
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {"norm1.weight": (128,), "norm1.bias": (128,), "attn.qkv.weight": (384, 128),
                      "attn.proj.weight": (128, 128), "norm2.weight": (128,), "norm2.bias": (128,),
                      "mlp.fc1.weight": (512, 128), "mlp.fc2.weight": (128, 512)}
    assert ViT().blocks[0].attn.proj.bias.shape == (128,)


def test_a_seed_fixes_the_weights():
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(ViT().state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["blocks.0.attn.qkv.weight"], states[2]["blocks.0.attn.qkv.weight"])
    assert states[0]["blocks.0.attn.qkv.bias"].abs().sum() > 0, "non-zero biases: a bias added twice shows"


def test_attention_matches_the_textbook_formula():
    """Head h's q, k, v are features [h*3*d, h*3*d + d), [.. + d, .. + 2d), [.. + 2d, (h+1)*3*d) of qkv's output."""
    torch.manual_seed(1)
    attn, x = Attention(32, 4).double(), torch.randn(2, 5, 32, dtype=torch.float64)
    qkv, d = attn.qkv(x), 8
    heads = []
    for h in range(4):
        q, k, v = (qkv[..., h * 3 * d + i * d: h * 3 * d + (i + 1) * d] for i in range(3))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1) @ v)
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, dim=-1)))


@pytest.mark.parametrize("first, last", [(0, 2), (2, 4), (1, 3), (3, 4)])
def test_a_contiguous_slice_of_qkv_holds_whole_heads(first, last):
    """A rank's shard: qkv's rows for heads [first, last), proj's matching input columns, attn.heads = last - first.
    The same Attention code then gives exactly those heads' outputs, and the shards' proj outputs add up (plus the
    bias once) to the full layer's: what Megatron's column- and row-parallel split of attention relies on."""
    torch.manual_seed(2)
    width, n_heads, head_dim = 64, 4, 16
    full = Attention(width, n_heads).double()
    x = torch.randn(3, 7, width, dtype=torch.float64)
    proj = full.proj
    full.proj = nn.Identity()
    heads_out = full(x)                                       # (B, T, heads * head_dim), before proj
    full.proj = proj

    def shard(a: int, b: int) -> Attention:
        part = Attention(width, n_heads).double()
        rows = slice(a * 3 * head_dim, b * 3 * head_dim)
        part.qkv.weight.data, part.qkv.bias.data = full.qkv.weight[rows].clone(), full.qkv.bias[rows].clone()
        part.heads = b - a
        part.proj = nn.Identity()
        return part

    torch.testing.assert_close(shard(first, last)(x), heads_out[..., first * head_dim:last * head_dim])

    total = proj.bias.clone()
    for a in range(0, n_heads, 2):                            # two "ranks" of two heads each
        part = shard(a, a + 2)
        part.proj = nn.Linear(2 * head_dim, width, bias=False).double()
        part.proj.weight.data = proj.weight[:, a * head_dim:(a + 2) * head_dim].clone()
        total = total + part(x)
    torch.testing.assert_close(total, proj(heads_out))
