"""The RS-VLM model (issue 3): three tiers of visual tokens, knowledge-base augmentation with
semantic-aware experts, and a small caption decoder.

Image side, for one 224 px tile::

    EfficientNet-Lite trunk (frozen, ImageNet)  ->  F16 (112 x 14 x 14)  and  F_mid (192 x 7 x 7)
    top (last two blocks + head conv, fine-tuned) ->  F32 (1280 x 7 x 7)
    cells = [F16, upsample(F32)]  (1392 x 14 x 14): the fine feature map
    object tokens  = object head on every cell                       (196 tokens)
    region tokens  = region head on pooled windows: 2x2 and 3x3 grids (13 tokens)
    global token   = global head on the mean of all cells              (1 token)
    each token -> KnowledgeFusion: retrieve the top-k knowledge-base concepts, route the
    token, its retrieved knowledge and the levels of what was retrieved to a mixture of
    object / region / scene experts, add the experts' output, normalise.

Text side: all-MiniLM-L6-v2, frozen and shared by the three tiers.

Caption decoder: a 2-layer transformer decoder over the augmented tokens of all tiers
(objects pooled 2x2 to 49 tokens), with its own word vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import EfficientNetLite, load_efficientnet_lite

TIERS = ("object", "region", "scene")
REGION_GRIDS = (2, 3)  # region windows: the 2x2 quadrants, then the 3x3 grid (row-major)
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)


@dataclass
class ModelConfig:
    """Shapes and switches of the RS-VLM model (saved with the weights)."""

    backbone: str = "efficientnet-lite0"
    image_size: int = 224
    embed_dim: int = 384
    head_hidden: int = 768
    fine_blocks: int = 0  # trainable last MBConv blocks of the backbone; its head conv is always trained
    kb_top_k: int = 8
    kb_temperature: float = 0.05
    expert_hidden: int = 512
    n_experts: int = 3
    augment: bool = True  # knowledge-base retrieval fused into the tokens
    experts: bool = True  # mixture of experts (False: one MLP in the same place)
    # decoder
    vocab_size: int = 0
    dec_dim: int = 256
    dec_layers: int = 2
    dec_heads: int = 4
    dec_ff: int = 768
    max_caption_tokens: int = 32
    tiers: dict = field(default_factory=lambda: {"object": True, "region": True, "global": True})

    def to_dict(self) -> dict:  # noqa: D102
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":  # noqa: D102
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def region_pooling_matrix(grid: int = 14, grids=REGION_GRIDS) -> torch.Tensor:
    """(R, grid*grid) weights that average the cells under each region window.

    Windows split the tile into g x g equal squares for each g in ``grids``; a cell cut by a
    window border counts with the fraction of its area inside the window.
    """
    rows = []
    for g in grids:
        edges = [i * grid / g for i in range(g + 1)]
        for r in range(g):
            for c in range(g):
                w = torch.zeros(grid, grid)
                for y in range(grid):
                    fy = max(0.0, min(y + 1, edges[r + 1]) - max(y, edges[r]))
                    for x in range(grid):
                        fx = max(0.0, min(x + 1, edges[c + 1]) - max(x, edges[c]))
                        w[y, x] = fy * fx
                rows.append((w / w.sum()).flatten())
    return torch.stack(rows)


def box_cell_weights(box: tuple[float, float, float, float], grid: int = 14) -> torch.Tensor:
    """(grid*grid,) weights averaging the cells under a box given in tile fractions (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (v * grid for v in box)
    w = torch.zeros(grid, grid)
    for y in range(grid):
        fy = max(0.0, min(y + 1, y1) - max(y, y0))
        for x in range(grid):
            fx = max(0.0, min(x + 1, x1) - max(x, x0))
            w[y, x] = fy * fx
    if float(w.sum()) <= 0:  # degenerate box: the nearest cell
        cx, cy = min(grid - 1, int((x0 + x1) / 2)), min(grid - 1, int((y0 + y1) / 2))
        w[cy, cx] = 1.0
    return (w / w.sum()).flatten()


class Trunk(nn.Module):
    """The frozen part of the backbone: stem and blocks up to the fine-tuned ones."""

    def __init__(self, net: EfficientNetLite, fine_blocks: int) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        n = len(net._blocks)
        self.blocks = nn.ModuleList(net._blocks[: n - fine_blocks])
        # The fine map is the output of the last stride-16 block (before the last downsampling).
        self.fine_index = max(i for i, b in enumerate(self.blocks) if b._depthwise_conv.stride == (2, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> (fine map at stride 16, features entering the fine-tuned blocks)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        fine = None
        for i, block in enumerate(self.blocks):
            if i == self.fine_index:
                fine = x
            x = block(x)
        return fine, x


class Top(nn.Module):
    """The fine-tuned part of the backbone: the last blocks and the head convolution."""

    def __init__(self, net: EfficientNetLite, fine_blocks: int) -> None:
        super().__init__()
        n = len(net._blocks)
        self.blocks = nn.ModuleList(net._blocks[n - fine_blocks:])
        self._conv_head, self._bn1 = net._conv_head, net._bn1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        for block in self.blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


class TierHead(nn.Module):
    """LayerNorm -> MLP from cell features to the joint space (one per tier)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.from_hidden(self.fc1(self.norm(x)))

    def from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rest of the head after its first layer (``fc1(norm(x))``, see :meth:`ImageModel.object_hidden`)."""
        return self.fc2(F.gelu(hidden))


class KnowledgeFusion(nn.Module):
    """Retrieval-based semantic augmentation with a mixture of semantic-aware experts.

    For each token: cosine similarity to every knowledge-base concept, the top-k concepts
    softmax-weighted into one knowledge vector, and the share of object / region / scene
    concepts among them.  A router reads [token, knowledge, level shares] and weighs the
    experts; each expert maps [token, knowledge] to a residual update of the token.  Training
    adds a semantic routing loss (the router's weights against the level shares of what the
    token retrieved), so expert k becomes the expert of knowledge level k: object, region, scene.
    """

    def __init__(self, config: ModelConfig, kb_embeddings: torch.Tensor, kb_levels: torch.Tensor) -> None:
        super().__init__()
        d = config.embed_dim
        self.config = config
        self.register_buffer("kb", kb_embeddings.float().clone(), persistent=False)
        self.register_buffer("kb_levels", F.one_hot(kb_levels.long(), 3).float(), persistent=False)
        n = config.n_experts if config.experts else 1
        self.router = nn.Linear(2 * d + 3, n)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(2 * d, config.expert_hidden), nn.GELU(),
                                                   nn.Linear(config.expert_hidden, d)) for _ in range(n))
        for expert in self.experts:  # start as the identity: the aligned token passes unchanged
            nn.init.zeros_(expert[2].weight)
            nn.init.zeros_(expert[2].bias)
        # (gates, level shares) of each call while training, for the semantic routing loss
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def retrieve(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Knowledge vector and level shares for normalised tokens (..., D)."""
        sims = tokens @ self.kb.t()
        k = min(self.config.kb_top_k, self.kb.shape[0])
        top, idx = sims.topk(k, dim=-1)
        weights = (top / self.config.kb_temperature).softmax(-1)
        knowledge = (weights.unsqueeze(-1) * self.kb[idx]).sum(-2)
        levels = (weights.unsqueeze(-1) * self.kb_levels[idx]).sum(-2)
        return knowledge, levels

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented normalised tokens (..., D) and the router's weights (..., n_experts)."""
        tokens = F.normalize(tokens, dim=-1)
        if self.config.augment:
            knowledge, levels = self.retrieve(tokens)
        else:
            knowledge = torch.zeros_like(tokens)
            levels = torch.zeros(*tokens.shape[:-1], 3, dtype=tokens.dtype, device=tokens.device)
        gates = self.router(torch.cat([tokens, knowledge, levels], -1)).softmax(-1)
        if self.training:
            self.seen.append((gates, levels))
        both = torch.cat([tokens, knowledge], -1)
        update = sum(gates[..., i:i + 1] * expert(both) for i, expert in enumerate(self.experts))
        return F.normalize(tokens + update, dim=-1), gates


class ImageModel(nn.Module):
    """Top of the backbone, three tier heads and the knowledge fusion (on trunk outputs)."""

    def __init__(self, config: ModelConfig, net: EfficientNetLite, kb_embeddings: torch.Tensor,
                 kb_levels: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.top = Top(net, config.fine_blocks)
        fine_ch = net._blocks[Trunk(net, config.fine_blocks).fine_index - 1]._bn2.num_features
        cell_dim = fine_ch + net.num_features
        self.cell_dim = cell_dim
        d, h = config.embed_dim, config.head_hidden
        self.object_head = TierHead(cell_dim, h, d)
        self.object_head_coarse_dim = net.num_features
        self._object_fold: tuple | None = None  # see freeze_object_fold
        self.region_head = TierHead(cell_dim, h, d)
        self.global_head = TierHead(cell_dim, h, d)
        self.fusion = KnowledgeFusion(config, kb_embeddings, kb_levels)
        self.grid = config.image_size // 16
        pool = region_pooling_matrix(self.grid)
        ys, xs = torch.meshgrid(torch.arange(self.grid), torch.arange(self.grid), indexing="ij")
        up_index = ((ys // 2) * (self.grid // 2) + xs // 2).flatten()  # fine cell -> its coarse cell
        upsample = F.one_hot(up_index, (self.grid // 2) ** 2).float()  # (G*G, (G/2)^2)
        self.register_buffer("region_pool", pool, persistent=False)
        self.register_buffer("region_pool_coarse", pool @ upsample, persistent=False)
        self.register_buffer("up_index", up_index, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def features(self, fine: torch.Tensor, mid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fine cells (N, G*G, 112) and coarse cells (N, (G/2)^2, 1280) from the trunk's outputs.

        The fine feature map is [fine, nearest-upsampled coarse] per cell; it is never built in
        full during training: means and window pools of the upsampled part are taken on the
        coarse grid directly (an exact identity), and object cells are gathered.
        """
        coarse = self.top(mid)
        return fine.flatten(2).transpose(1, 2), coarse.flatten(2).transpose(1, 2)

    def cells(self, feats: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
        """Cell features (N, cells, 1392) of the fine map, all cells or the given cell indices."""
        fine, coarse = feats
        if index is None:
            return torch.cat([fine, coarse[:, self.up_index]], -1)
        return torch.cat([fine[:, index], coarse[:, self.up_index[index]]], -1)

    def global_tokens(self, feats) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        fine, coarse = feats
        return self.fusion(self.global_head(torch.cat([fine.mean(1), coarse.mean(1)], -1)))

    def region_tokens(self, feats) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        fine, coarse = feats
        pooled = torch.cat([torch.einsum("rc,ncd->nrd", self.region_pool, fine),
                            torch.einsum("rc,ncd->nrd", self.region_pool_coarse, coarse)], -1)
        return self.fusion(self.region_head(pooled))

    def object_tokens(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Object tokens of cell features (..., 1392) from :meth:`cells`."""
        return self.fusion(self.object_head(cells))

    def object_hidden(self, feats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The object head's first layer on every cell, without building the (N, G*G, 1392) cell map.

        A cell is [fine (112), coarse (1280)], and each coarse vector is shared by four cells, so
        LayerNorm then ``fc1`` is rewritten exactly: with ``W' = W diag(gamma)``,
        ``fc1(LN(x)) = (W'x - mean(x) W'1) / std(x) + (W beta + b)``, where ``W'x`` is the fine
        part on 196 cells plus the coarse part on 49 cells (gathered), and the mean and variance
        come from the two parts' sums. It is 3.2x fewer multiply-adds than the plain layer (the
        largest matrix of the image graph) for the same values up to float rounding.
        """
        fine, coarse = feats
        w_fine, w_coarse, w_sum, bias = self._object_fold or self.object_fold()
        norm = self.object_head.norm
        total = fine.shape[-1] + coarse.shape[-1]
        coarse_part = (coarse @ w_coarse)[:, self.up_index]  # (N, G*G, H) from (N, (G/2)^2, H)
        sums = fine.sum(-1) + coarse.sum(-1)[:, self.up_index]
        squares = (fine * fine).sum(-1) + (coarse * coarse).sum(-1)[:, self.up_index]
        mean = sums / total
        var = (squares / total - mean * mean).clamp(min=0.0)
        inv_std = torch.rsqrt(var + norm.eps)
        projected = fine @ w_fine + coarse_part - mean.unsqueeze(-1) * w_sum
        return projected * inv_std.unsqueeze(-1) + bias

    def object_fold(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The folded weights of :meth:`object_hidden` from the live parameters: the fine and coarse
        parts of ``W'`` (transposed), ``W'1`` and ``W beta + b``."""
        norm, fc1 = self.object_head.norm, self.object_head.fc1
        n_fine = fc1.weight.shape[1] - self.object_head_coarse_dim
        weight = fc1.weight * norm.weight
        return (weight[:, :n_fine].t(), weight[:, n_fine:].t(), weight.sum(1),
                (fc1.weight * norm.bias).sum(1) + fc1.bias)

    def freeze_object_fold(self) -> None:
        """Compute :meth:`object_fold` once and keep it (for export: the graph then holds the folded
        matrices as plain initializers, not the ops that make them)."""
        with torch.no_grad():
            self._object_fold = tuple(t.detach().clone().contiguous() for t in self.object_fold())

    def forward(self, fine: torch.Tensor, mid: torch.Tensor):
        """All tiers: global (N, D), regions (N, 13, D), objects (N, 196, D), routing (N, 210, E)."""
        feats = self.features(fine, mid)
        g, rg = self.global_tokens(feats)
        r, rr = self.region_tokens(feats)
        o, ro = self.fusion(self.object_head.from_hidden(self.object_hidden(feats)))
        return g, r, o, torch.cat([rg.unsqueeze(1), rr, ro], 1)


class ImageTower(nn.Module):
    """Trunk + image model: the exported image graph (normalised images in, four outputs)."""

    def __init__(self, trunk: Trunk, model: ImageModel) -> None:
        super().__init__()
        self.trunk = trunk
        self.model = model

    def forward(self, images: torch.Tensor):  # noqa: D102
        fine, mid = self.trunk(images)
        return self.model(fine, mid)


def pool_objects(objects: torch.Tensor, grid: int) -> torch.Tensor:
    """Object tokens (N, grid*grid, D) averaged over 2x2 cells -> (N, (grid/2)^2, D)."""
    n, _, d = objects.shape
    x = objects.reshape(n, grid // 2, 2, grid // 2, 2, d).mean((2, 4))
    return x.reshape(n, (grid // 2) ** 2, d)


class Attention(nn.Module):
    """Multi-head attention written out (exports to ONNX with dynamic batch and length)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        n, d = x.shape[0], x.shape[2]
        h = self.heads
        q = self.q(x).reshape(n, -1, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(n, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if mask is not None:
            att = att + mask
        y = att.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(n, -1, d))


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: causal self-attention, cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.norm1(x)
        x = x + self.drop(self.self_attn(y, y, causal))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory))
        return x + self.drop(self.mlp(self.norm3(x)))


def causal_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Additive (T, T) mask that hides later positions."""
    t = tokens.shape[1]
    idx = torch.arange(t, device=tokens.device)
    return torch.where(idx[None, :] > idx[:, None], torch.tensor(-1e9), torch.tensor(0.0))


class CaptionDecoder(nn.Module):
    """A small transformer decoder over the augmented tokens of all three tiers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.dec_dim, padding_idx=PAD)
        self.pos = nn.Embedding(c.max_caption_tokens + 2, c.dec_dim)
        self.tier = nn.Embedding(3, c.dec_dim)  # global, region, object
        self.memory_proj = nn.Sequential(nn.LayerNorm(c.embed_dim), nn.Linear(c.embed_dim, c.dec_dim))
        self.layers = nn.ModuleList(DecoderLayer(c.dec_dim, c.dec_heads, c.dec_ff) for _ in range(c.dec_layers))
        self.norm = nn.LayerNorm(c.dec_dim)
        for emb in (self.embed, self.pos, self.tier):  # small init: the output layer is the tied embedding
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()

    def memory(self, global_tok: torch.Tensor, regions: torch.Tensor | None, objects: torch.Tensor | None) -> torch.Tensor:
        """Decoder memory (N, M, dec_dim) from the tiers (objects already pooled to 49 tokens)."""
        parts = [self.memory_proj(global_tok.unsqueeze(1)) + self.tier.weight[0]]
        if regions is not None:
            parts.append(self.memory_proj(regions) + self.tier.weight[1])
        if objects is not None:
            parts.append(self.memory_proj(objects) + self.tier.weight[2])
        return torch.cat(parts, 1)

    def hidden(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Final hidden states (N, T, dec_dim) of a token prefix."""
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        mask = causal_mask(tokens)
        for layer in self.layers:
            x = layer(x, memory, mask)
        return self.norm(x)

    def forward(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) for every position of ``tokens`` (N, T) (teacher forcing)."""
        return self.hidden(memory, tokens) @ self.embed.weight.t()


class DecoderStep(nn.Module):
    """The exported decoder graph: tiers + a token prefix -> logits of the next token."""

    def __init__(self, decoder: CaptionDecoder, grid: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.grid = grid

    def forward(self, global_tok, regions, objects, tokens):  # noqa: D102
        memory = self.decoder.memory(global_tok, regions, pool_objects(objects, self.grid))
        return self.decoder.hidden(memory, tokens)[:, -1] @ self.decoder.embed.weight.t()


def build_backbone(config: ModelConfig, pretrained: bool = True) -> tuple[Trunk, EfficientNetLite]:
    """The ImageNet backbone and its frozen trunk."""
    net = load_efficientnet_lite(config.backbone, pretrained=pretrained)
    trunk = Trunk(net, config.fine_blocks).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk, net
