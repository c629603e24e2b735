"""The object box head (issue 22): one box per object, with an embedding in the shared text space.

On the frozen ImageNet trunk (the same blocks the image tower freezes), three feature maps::

    stride 8  (40 ch)  ─ 1x1 ─┐
    stride 16 (112 ch) ─ 1x1 ─┼─ top-down sum (nearest upsampling) ─ 2 separable 3x3 convs (stride 8)
    stride 32 (192 ch) ─ 1x1 ─┘
        -> heat   (1):   class-agnostic object centre probability (CenterNet's Gaussian heat map)
        -> size   (2):   log of the box's width and height in stride-8 cells
        -> offset (2):   the centre's sub-cell position in [0, 1]
        -> embed  (384): the box's embedding, L2-normalised, in MiniLM's text space

A query scores a box as ``heat * sigmoid(scale * cos(embed, text) + bias)``: open vocabulary, the
head knows no fixed class list. The graph takes a fixed window (``WINDOW`` px, a tile plus a margin on
every side) so an object cut by a tile's edge is still seen whole; the job keeps the boxes whose
centres fall in the tile's own part and suppresses duplicates across seams.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import EfficientNetLite

STRIDE = 8
EMBED_DIM = 384
WIDTH = 96
TILE = 224
MARGIN = 48
WINDOW = TILE + 2 * MARGIN  # 320 px, a multiple of 32 so the trunk's SAME padding holds


class BoxTrunk(nn.Module):
    """Stem and blocks of the ImageNet backbone up to the ones the image tower fine-tunes, returning
    the inputs of the stride-2 blocks (stride 8 and 16) and the last output (stride 32)."""

    def __init__(self, net: EfficientNetLite, fine_blocks: int = 2) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        n = len(net._blocks)
        self.blocks = nn.ModuleList(net._blocks[: n - fine_blocks])
        down = [i for i, b in enumerate(self.blocks) if b._depthwise_conv.stride == (2, 2)]
        self.taps = (down[-2], down[-1])  # inputs of the 8->16 and 16->32 blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: D102
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self.blocks):
            if i in self.taps:
                taps.append(x)
            x = block(x)
        return taps[0], taps[1], x

    @property
    def channels(self) -> tuple[int, int, int]:  # noqa: D102
        # a tap is the input of its block: the output of the block before it
        return tuple(self.blocks[i - 1]._project_conv.out_channels for i in (*self.taps, len(self.blocks)))


def _separable(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                         nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class BoxHead(nn.Module):
    """The trained part: a small feature pyramid and the four outputs at stride 8."""

    def __init__(self, channels: tuple[int, int, int] = (40, 112, 192), width: int = WIDTH,
                 embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.tower = nn.Sequential(_separable(width), _separable(width))
        self.heat = nn.Conv2d(width, 1, 3, padding=1)
        self.size = nn.Conv2d(width, 2, 3, padding=1)
        self.offset = nn.Conv2d(width, 2, 3, padding=1)
        # 1x1 only, so training embeds the centre cells alone (the tower gives them their context)
        self.embed = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(2 * width, embed_dim, 1))
        nn.init.constant_(self.heat.bias, -2.19)  # CenterNet's prior of 0.1
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    def features(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor) -> torch.Tensor:
        """The pyramid's stride-8 map (N, WIDTH, h, w) every output is read from."""
        p32 = self.lateral[2](s32)
        p16 = self.lateral[1](s16) + F.interpolate(p32, size=s16.shape[-2:], mode="nearest")
        p8 = self.lateral[0](s8) + F.interpolate(p16, size=s8.shape[-2:], mode="nearest")
        return self.tower(p8)

    def embed_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Raw embeddings (n, D) of feature vectors (n, WIDTH): the embedding branch on chosen cells."""
        return self.embed(cells[:, :, None, None])[:, :, 0, 0]

    def forward(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor):
        """Heat logits, log sizes, offsets (logits) and raw embeddings, all at stride 8."""
        x = self.features(s8, s16, s32)
        return self.heat(x), self.size(x), self.offset(x), self.embed(x)


class BoxNet(nn.Module):
    """Trunk and head as one graph: normalised RGB windows -> heat, size, offset, embedding."""

    def __init__(self, trunk: BoxTrunk, head: BoxHead) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, images: torch.Tensor):  # noqa: D102
        heat, size, offset, embed = self.head(*self.trunk(images))
        return torch.sigmoid(heat), size, torch.sigmoid(offset), F.normalize(embed, dim=1)


def peak_mask(heat: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Cells that are the maximum of their neighbourhood (CenterNet's max-pool suppression)."""
    return heat == F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)


def load_head(weights) -> tuple[BoxHead, dict]:
    """The trained head and its metadata from ``rs_vlm_train.boxes``'s ``.npz``."""
    import json

    import numpy as np

    arrays = dict(np.load(weights, allow_pickle=False))
    meta = json.loads(str(arrays.pop("meta_json")))
    head = BoxHead(tuple(meta.get("channels", (40, 112, 192))))
    head.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    return head.eval(), meta


def export_boxes(weights, work, backbone: str = "efficientnet-lite0") -> dict:
    """Write ``boxes.onnx`` (trunk and head, fixed ``WINDOW`` x ``WINDOW`` windows, dynamic batch) into
    the bundle folder ``work`` and return its manifest entry; the graph is checked against torch."""
    from pathlib import Path

    import numpy as np

    from .efficientnet_lite import LITE_MEAN, LITE_STD, load_efficientnet_lite

    head, meta = load_head(weights)
    net = BoxNet(BoxTrunk(load_efficientnet_lite(backbone)).eval(), head).eval()
    path = Path(work) / "boxes.onnx"
    example = torch.randn(2, 3, WINDOW, WINDOW)
    outputs = ["heat", "size", "offset", "embedding"]
    torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=outputs,
                      dynamic_axes={"images": {0: "n"}, **{o: {0: "n"} for o in outputs}}, opset_version=17,
                      dynamo=False)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.randn(3, 3, WINDOW, WINDOW)
    with torch.inference_mode():
        expected = net(check)
    got = session.run(outputs, {"images": check.numpy()})
    diff = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got))
    if diff > 1e-3:
        raise RuntimeError(f"The exported box head differs from torch by {diff:.2e} (limit 1e-3).")
    return {"file": "boxes.onnx", "input": "images", "outputs": outputs, "window": WINDOW, "margin": MARGIN,
            "tile": TILE, "stride": STRIDE, "mean": list(LITE_MEAN), "std": list(LITE_STD),
            "logit_scale": head.logit_scale.item(), "logit_bias": head.logit_bias.item(),
            "score": "heat * sigmoid(logit_scale * cos(embedding, query) + logit_bias)",
            "parity_max_abs_diff": float(f"{diff:.1e}"),
            "training": {k: meta[k] for k in meta if k != "channels"}}


def add_boxes_to_bundle(bundle_dir, weights) -> dict:
    """Add (or replace) the box head of an exported bundle in place: ``boxes.onnx`` and the manifest's
    ``boxes`` entry."""
    import json
    from pathlib import Path

    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["boxes"] = export_boxes(weights, bundle_dir, manifest["image_encoder"].get("backbone", "efficientnet-lite0"))
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest["boxes"]


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Add the trained box head to an exported bundle.")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args()
    print(add_boxes_to_bundle(args.bundle, args.weights))
    sys.exit(0)
