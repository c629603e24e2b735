"""Configurations of the open_clip CLIP families, full size and tiny (for tests).

The full-size values are those of open_clip's ``model_configs/*.json``. Head counts cannot be
read from a state dict, so they are derived from a head width (64, or 80 for ViT-H-14's vision
tower, as in open_clip). The tiny configurations keep each family's structure (ResNet stages and
attention pooling, class token, head width, image size / patch ratio) at a fraction of the
widths and depths, so tests build and export every family in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class VisionConfig:
    """The image tower.

    Attributes:
        image_size: Input side in pixels.
        width: Transformer width (ViT) or stem width (ModifiedResNet, 64 for RN50).
        layers: Transformer blocks (ViT) or blocks per ResNet stage (a 4-tuple).
        patch_size: Patch side (ViT); None for a ModifiedResNet.
        head_width: Width of one attention head.
    """

    image_size: int = 224
    width: int = 768
    layers: int | tuple[int, int, int, int] = 12
    patch_size: int | None = 32
    head_width: int = 64

    @property
    def is_resnet(self) -> bool:
        """Whether this is a ModifiedResNet (the RN50 family)."""
        return isinstance(self.layers, (tuple, list))

    @property
    def heads(self) -> int:
        """Attention heads (the ResNet's attention pool works on width * 32 channels)."""
        return (self.width * 32 if self.is_resnet else self.width) // self.head_width

    @property
    def native_grid(self) -> int:
        """Side of the dense feature grid: patches per side (ViT) or image_size / 32 (ResNet)."""
        return self.image_size // (32 if self.is_resnet else self.patch_size)


@dataclass(frozen=True)
class TextConfig:
    """The text tower (a causal transformer over CLIP BPE tokens)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class ClipConfig:
    """A whole CLIP model.

    Attributes:
        name: The open_clip architecture name (or a tiny one's name).
        embed_dim: Width of the joint embedding space.
        quick_gelu: ``x * sigmoid(1.702 x)`` in the MLPs (OpenAI-trained weights, SkyCLIP ViT-L-14)
            instead of the exact GELU.
    """

    name: str
    embed_dim: int
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (written into the bundle manifest)."""
        out = asdict(self)
        if self.vision.is_resnet:
            out["vision"]["layers"] = list(self.vision.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ClipConfig":
        """The inverse of :meth:`to_dict`."""
        vision = dict(data["vision"])
        if isinstance(vision["layers"], list):
            vision["layers"] = tuple(vision["layers"])
        return cls(name=data["name"], embed_dim=int(data["embed_dim"]), vision=VisionConfig(**vision),
                   text=TextConfig(**data["text"]), quick_gelu=bool(data.get("quick_gelu", False)))

    def with_quick_gelu(self, quick_gelu: bool) -> "ClipConfig":
        """A copy with the activation chosen (the name gets open_clip's ``-quickgelu`` suffix)."""
        if quick_gelu == self.quick_gelu:
            return self
        base = self.name.removesuffix("-quickgelu")
        return replace(self, quick_gelu=quick_gelu, name=f"{base}-quickgelu" if quick_gelu else base)


def _text(width: int, layers: int, heads: int | None = None, context: int = 77, vocab: int = 49408) -> TextConfig:
    return TextConfig(context_length=context, vocab_size=vocab, width=width, heads=heads or width // 64,
                      layers=layers)


FULL_CONFIGS: dict[str, ClipConfig] = {
    "RN50": ClipConfig("RN50", 1024, VisionConfig(224, 64, (3, 4, 6, 3), None), _text(512, 12)),
    "ViT-B-32": ClipConfig("ViT-B-32", 512, VisionConfig(224, 768, 12, 32), _text(512, 12)),
    "ViT-L-14": ClipConfig("ViT-L-14", 768, VisionConfig(224, 1024, 24, 14), _text(768, 12)),
    "ViT-L-14-336": ClipConfig("ViT-L-14-336", 768, VisionConfig(336, 1024, 24, 14), _text(768, 12)),
    "ViT-H-14": ClipConfig("ViT-H-14", 1024, VisionConfig(224, 1280, 32, 14, head_width=80), _text(1024, 24)),
}

# Tiny stand-ins: same structure, small widths; the vocabulary stays full size (the real
# tokenizer runs against them) but the embedding table is only 49408 x width.
TINY_CONFIGS: dict[str, ClipConfig] = {
    "tiny-RN50": ClipConfig("tiny-RN50", 32, VisionConfig(96, 8, (1, 1, 1, 1), None, head_width=32), _text(32, 1, 2)),
    "tiny-ViT-B-32": ClipConfig("tiny-ViT-B-32", 32, VisionConfig(64, 32, 2, 8, head_width=16), _text(32, 2, 2)),
    "tiny-ViT-L-14": ClipConfig("tiny-ViT-L-14", 40, VisionConfig(56, 48, 2, 14, head_width=16), _text(48, 2, 3)),
    "tiny-ViT-L-14-336": ClipConfig("tiny-ViT-L-14-336", 40, VisionConfig(84, 48, 2, 14, head_width=16),
                                    _text(48, 2, 3)),
    "tiny-ViT-H-14": ClipConfig("tiny-ViT-H-14", 48, VisionConfig(56, 80, 2, 14, head_width=40), _text(64, 2, 4)),
}

ARCHITECTURES: dict[str, ClipConfig] = {**FULL_CONFIGS, **TINY_CONFIGS}


def get_config(name: str) -> ClipConfig:
    """The configuration called ``name`` (an open_clip name, optionally with ``-quickgelu``).

    Raises:
        KeyError: With a sentence listing the known names.
    """
    base = name.removesuffix("-quickgelu")
    if base not in ARCHITECTURES:
        raise KeyError(f"Unknown architecture {name!r}; choose one of {', '.join(FULL_CONFIGS)} "
                       "(optionally with -quickgelu).")
    return ARCHITECTURES[base].with_quick_gelu(name.endswith("-quickgelu"))
