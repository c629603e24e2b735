"""open_clip's own code as the reference for the CLIP import tests.

open_clip cannot be imported here (it needs torchvision, and ftfy for its tokenizer), so its
source files are read from the ``open_clip_torch`` wheel that ``python3 build.py setup`` fetches
into ``.cache/wheels`` and loaded as a package with three small stand-ins: torchvision's
``FrozenBatchNorm2d`` (never used by CLIP inference), the Hugging Face text encoder (not used by
these architectures) and ``ftfy.fix_text`` (identity: the test strings are clean text).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache" / "wheels"
CLIP_BPE = ROOT / ".cache" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"


def require(path: Path | None, what: str) -> Path:
    """The path, or a skip (a failure under CI) saying how to get it."""
    if path is None or not path.exists():
        message = f"{what} is missing; run `python3 build.py setup` first."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


_LOADED: types.SimpleNamespace | None = None


def load_open_clip(work: Path) -> types.SimpleNamespace:
    """open_clip's ``model`` and ``tokenizer`` modules, loaded from the cached wheel's sources.

    The torchvision and ftfy stand-ins are in ``sys.modules`` only while open_clip imports: left
    there, they would make other libraries (transformers) believe torchvision is installed.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    wheels = sorted(WHEELS.glob("open_clip_torch-3.3.0-*.whl"))
    wheel = require(wheels[-1] if wheels else None, "The open_clip_torch 3.3.0 wheel")
    import torch.nn as nn

    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith("open_clip/") and member.endswith((".py", ".gz")):
                archive.extract(member, work)
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = nn.BatchNorm2d
    ops = types.ModuleType("torchvision.ops")
    ops.misc = misc
    vision = types.ModuleType("torchvision")
    vision.ops = ops
    hf = types.ModuleType("open_clip.hf_model")
    hf.HFTextEncoder = None
    ftfy = types.ModuleType("ftfy")
    ftfy.fix_text = lambda text: text
    package = types.ModuleType("open_clip")
    package.__path__ = [str(work / "open_clip")]
    stand_ins = {"torchvision": vision, "torchvision.ops": ops, "torchvision.ops.misc": misc, "ftfy": ftfy}
    for name, module in {**stand_ins, "open_clip": package, "open_clip.hf_model": hf}.items():
        sys.modules.setdefault(name, module)
    try:
        _LOADED = types.SimpleNamespace(model=importlib.import_module("open_clip.model"),
                                        tokenizer=importlib.import_module("open_clip.tokenizer"))
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return _LOADED


def open_clip_kwargs(config) -> dict:
    """Arguments of open_clip's ``CLIP`` for one of our ``ClipConfig``s."""
    v, t = config.vision, config.text
    vision = {"image_size": v.image_size, "width": v.width, "layers": list(v.layers) if v.is_resnet else v.layers,
              "patch_size": v.patch_size, "head_width": v.head_width}
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers}
    return {"embed_dim": config.embed_dim, "vision_cfg": vision, "text_cfg": text, "quick_gelu": config.quick_gelu}
