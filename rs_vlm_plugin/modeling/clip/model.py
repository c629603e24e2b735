"""open_clip's CLIP (ViT and ModifiedResNet image towers, causal text tower) in plain torch.

Every parameter and buffer has exactly the name and shape it has in open_clip
(``src/open_clip/model.py``, ``transformer.py``, ``modified_resnet.py``), so an open_clip
state dict loads with ``strict=True``. Attention is written out with ``in_proj_weight`` /
``out_proj`` (the layout of ``nn.MultiheadAttention``) so the ONNX export is plain MatMul /
Softmax, whatever fast path torch would take.

Besides open_clip's pooled features, :meth:`CLIP.dense_image_features` gives one joint-space
vector per patch (ViT: ``ln_post`` and ``proj`` on every patch token) or per cell of the last
ResNet stage (the attention pool's value path ``v_proj`` then ``c_proj``, as MaskCLIP does).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .configs import ClipConfig, VisionConfig


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, L, W); mask an additive (L, L) float mask or None."""
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        head_dim = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        out = scores.softmax(-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``ln_1``, ``attn``, ``ln_2``, ``mlp.{c_fc, gelu, c_proj}``."""

    def __init__(self, width: int, heads: int, quick_gelu: bool, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        for block in self.resblocks:
            x = block(x, mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ``VisionTransformer`` (class-token pooling, ``ln_pre``, ``ln_post``, ``proj``)."""

    def __init__(self, config: VisionConfig, embed_dim: int, quick_gelu: bool) -> None:
        super().__init__()
        width, grid = config.width, config.native_grid
        self.conv1 = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) -> every token in the joint space, (N, 1 + G*G, D); token 0 is the class token."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled image features (N, D), as open_clip computes them."""
        return self.tokens(x)[:, 0]


class Bottleneck(nn.Module):
    """ModifiedResNet block: anti-aliased (avg-pool) strides, ``downsample.{0, 1}`` after an avg-pool."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """The ResNet's QKV attention pool: the mean cell queries every cell (``q/k/v/c_proj``)."""

    def __init__(self, spatial: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial ** 2 + 1, width) / width ** 0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, H, W) -> pooled features (N, D)."""
        x = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        x = torch.cat([x.mean(1, keepdim=True), x], 1) + self.positional_embedding
        n, length, width = x.shape
        head_dim = width // self.heads
        q = self.q_proj(x[:, :1]).reshape(n, 1, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).reshape(n, length, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).reshape(n, length, self.heads, head_dim).transpose(1, 2)
        out = ((q * head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v  # (N, heads, 1, hd)
        return self.c_proj(out.transpose(1, 2).reshape(n, width))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Every cell through the value path (MaskCLIP): (N, C, H, W) -> (N, H*W, D)."""
        return self.c_proj(self.v_proj(x.flatten(2).transpose(1, 2)))


class ModifiedResNet(nn.Module):
    """open_clip's ``ModifiedResNet``: a 3-conv stem, anti-aliased stages, an attention pool."""

    def __init__(self, config: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        width = config.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, config.layers[0])
        self.layer2 = self._make_layer(width * 2, config.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, config.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, config.layers[3], stride=2)
        self.attnpool = AttentionPool2d(config.native_grid, width * 32, config.heads, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the last stage's feature map (N, 32 * width, S/32, S/32)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled image features (N, D)."""
        return self.attnpool(self.features(x))


class CLIP(nn.Module):
    """open_clip's ``CLIP``: ``visual`` plus the text tower's modules at the top level."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        v, t = config.vision, config.text
        if v.is_resnet:
            self.visual = ModifiedResNet(v, config.embed_dim)
        else:
            self.visual = VisionTransformer(v, config.embed_dim, config.quick_gelu)
        self.transformer = Transformer(t.width, t.layers, t.heads, config.quick_gelu)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width).normal_(std=0.01))
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim).normal_(std=t.width ** -0.5))
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)  # log(1 / 0.07), open_clip's start
        mask = torch.full((t.context_length, t.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image features (N, D), not normalised (open_clip's ``encode_image``)."""
        return self.visual(images)

    def dense_image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (N, D) and dense features (N, G, G, D) on the native grid, not normalised."""
        g = self.config.vision.native_grid
        if isinstance(self.visual, ModifiedResNet):
            fmap = self.visual.features(images)
            pooled, dense = self.visual.attnpool(fmap), self.visual.attnpool.dense(fmap)
        else:
            tokens = self.visual.tokens(images)
            pooled, dense = tokens[:, 0], tokens[:, 1:]
        return pooled, dense.reshape(dense.shape[0], g, g, dense.shape[-1])

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L), L <= context length -> features at the end-of-text token (N, D), not normalised.

        The causal mask means padding after the end-of-text token changes nothing, so texts padded
        to the longest one give what open_clip gives for texts padded to 77 tokens.
        """
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        eot = ids.argmax(-1)  # the end-of-text token has the highest id
        pooled = x.gather(1, eot[:, None, None].expand(-1, 1, x.shape[-1])).squeeze(1)
        return pooled @ self.text_projection
