"""The image and text towers of the default RS-VLM model, as exported to ONNX.

Image tower: EfficientNet-Lite features -> global average pool -> alignment head -> a
normalised embedding in the text space.  Text tower: the frozen sentence encoder plus a
residual adapter (zero-initialised, so an untrained adapter is the identity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .efficientnet_lite import LITE_CONFIGS, EfficientNetLite, load_efficientnet_lite


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the trained alignment head and text adapter."""

    image_features: int = 1280
    hidden: int = 1024
    embed_dim: int = 384
    dropout: float = 0.1

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


class AlignmentHead(nn.Module):
    """Maps pooled image features into the sentence-embedding space."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.image_features)
        self.fc1 = nn.Linear(config.image_features, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.embed_dim)
        self.skip = nn.Linear(config.image_features, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.norm(features)
        y = self.fc2(self.drop(nn.functional.gelu(self.fc1(x)))) + self.skip(x)
        return nn.functional.normalize(y, dim=-1)


class TextAdapter(nn.Module):
    """Residual linear map on normalised sentence embeddings (identity at init)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.normalize(emb + self.proj(emb), dim=-1)


class ImageTower(nn.Module):
    """Normalised images (N, 3, S, S) -> embeddings (N, D)."""

    def __init__(self, backbone: EfficientNetLite, head: AlignmentHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.head(self.backbone.forward_features(images).mean(dim=(2, 3)))


class BackboneFeatures(nn.Module):
    """Normalised images -> pooled backbone features (N, 1280); used to cache training features."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.backbone.forward_features(images).mean(dim=(2, 3))


class TextTower(nn.Module):
    """Token ids and mask -> adapted, normalised embeddings (N, D)."""

    def __init__(self, encoder: nn.Module, adapter: TextAdapter) -> None:
        super().__init__()
        self.encoder = encoder
        self.adapter = adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.adapter(self.encoder(input_ids, attention_mask))


def build_towers(weights: dict | None, backbone_name: str = "efficientnet-lite0") -> tuple[ImageTower, TextTower, dict]:
    """Assemble both towers from registry weights plus the trained head state.

    Args:
        weights: ``{"head.<name>": array, "adapter.<name>": array, ...}`` as saved by the trainer,
            or None for an untrained head (random, seeded) and identity adapter.
        backbone_name: Which EfficientNet-Lite to use.

    Returns:
        (image tower, text tower, head config as a dict).
    """
    from .text_encoder import SentenceEncoder

    torch.manual_seed(0)
    config = HeadConfig()
    head = AlignmentHead(config)
    adapter = TextAdapter(config.embed_dim)
    if weights is not None:
        head.load_state_dict({k[5:]: torch.as_tensor(v).float() for k, v in weights.items() if k.startswith("head.")},
                             strict=True)
        adapter.load_state_dict({k[8:]: torch.as_tensor(v).float() for k, v in weights.items()
                                 if k.startswith("adapter.")}, strict=True)
    assert backbone_name in LITE_CONFIGS, backbone_name
    image = ImageTower(load_efficientnet_lite(backbone_name), head).eval()
    text = TextTower(SentenceEncoder(), adapter).eval()
    return image, text, config.to_dict()
