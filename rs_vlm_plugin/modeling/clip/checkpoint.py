"""Load open_clip checkpoints safely, recognise their architecture, build the model strictly.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only.
A file that needs code to be run to unpickle it is refused, never retried unsafely.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .configs import ARCHITECTURES, ClipConfig, TextConfig, VisionConfig, get_config
from .model import CLIP

# Keys some checkpoints carry that are no model weights: OpenAI's scalar attributes (dropped, as
# open_clip does) and keys open_clip's own loader tolerates or fills in.
DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size")
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
OPTIONAL_KEYS = ("logit_bias",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be imported; the message is a sentence saying what to do."""


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an open_clip checkpoint, on the CPU.

    Accepts a raw state dict, ``{"state_dict": ...}`` (open_clip training checkpoints) or
    ``{"model": ...}``, with or without the ``module.`` prefix of DistributedDataParallel.

    Raises:
        CheckpointError: The file is missing, is not a torch checkpoint, needs code execution to
            load (refused), or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {path} does not exist; check the path and try again.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path.name} is not a readable .safetensors file ({exc}); check that the "
                                  "download is complete.") from exc
    else:
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch reports both a forbidden object and plain garbage as an UnpicklingError; quote only
            # the line naming the object, not torch's advice to retry without weights_only.
            detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
            if detail is None:
                raise CheckpointError(f"{path.name} is not a readable torch checkpoint; check that the download is "
                                      "complete and that it is an open_clip .pt/.pth/.bin file.") from exc
            raise CheckpointError(
                f"{path.name} needs Python code to be run to load it ({detail}), so it was refused for safety. "
                "Re-save it as a plain state dict (torch.save(model.state_dict())) or as .safetensors in the "
                "environment that made it, and import that file."
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({exc}); check that the "
                                  "download is complete and that it is an open_clip .pt/.pth/.bin file.") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path.name} holds no state dict of tensors; give the open_clip checkpoint "
                              "(a state dict, or a training checkpoint with a 'state_dict' entry).")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return {k: v for k, v in data.items() if k not in DROPPED_KEYS}


def _count_blocks(state: dict, prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"The checkpoint has no {key!r}, so it is not an open_clip CLIP checkpoint; "
                              "check the file, or give the architecture with --arch.")
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor]) -> ClipConfig:
    """The architecture read from the keys and shapes (head widths assumed 64 unless known).

    Raises:
        CheckpointError: When the keys are not those of an open_clip CLIP.
    """
    embed_dim = _shape(state, "text_projection")[1]
    text_width = _shape(state, "ln_final.weight")[0]
    text = TextConfig(context_length=_shape(state, "positional_embedding")[0],
                      vocab_size=_shape(state, "token_embedding.weight")[0], width=text_width,
                      heads=max(1, text_width // 64), layers=_count_blocks(state, "transformer.resblocks."))
    if "visual.layer1.0.conv1.weight" in state:
        width = _shape(state, "visual.conv3.weight")[0]
        layers = tuple(_count_blocks(state, f"visual.layer{i}.") for i in range(1, 5))
        spatial = round((_shape(state, "visual.attnpool.positional_embedding")[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=spatial * 32, width=width, layers=layers, patch_size=None)
    else:
        width, _, patch, _ = _shape(state, "visual.conv1.weight")
        grid = round((_shape(state, "visual.positional_embedding")[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=grid * patch, width=width,
                              layers=_count_blocks(state, "visual.transformer.resblocks."), patch_size=patch,
                              head_width=80 if width == 1280 else 64)
    return ClipConfig(name="custom", embed_dim=embed_dim, vision=vision, text=text)


def _signature(config: ClipConfig) -> tuple:
    """What a state dict shows of a configuration (all but head counts and the activation)."""
    v, t = config.vision, config.text
    return (config.embed_dim, v.image_size, v.width, v.layers, v.patch_size, t.context_length, t.vocab_size,
            t.width, t.layers)


def detect_architecture(state: dict[str, torch.Tensor], arch: str | None = None,
                        quick_gelu: bool | None = None) -> ClipConfig:
    """The configuration of a checkpoint: the user's ``arch``, else the known one whose shapes match.

    Args:
        state: The state dict.
        arch: An architecture name (see ``configs.ARCHITECTURES``) that overrides detection.
        quick_gelu: Force quick GELU on or off (it cannot be seen in the weights); None keeps
            the named architecture's choice (off unless ``arch`` ends in ``-quickgelu``).

    Returns:
        The configuration; a checkpoint that matches no known family gets one inferred from its
        shapes, named ``custom``.

    Raises:
        CheckpointError: ``arch`` is unknown, or the keys are not those of an open_clip CLIP.
    """
    if arch:
        try:
            config = get_config(arch)
        except KeyError as exc:
            raise CheckpointError(str(exc.args[0])) from exc
    else:
        inferred = infer_config(state)
        config = next((known for known in ARCHITECTURES.values() if _signature(known) == _signature(inferred)),
                      inferred)
    return config if quick_gelu is None else config.with_quick_gelu(quick_gelu)


def build_model(config: ClipConfig, state: dict[str, torch.Tensor]) -> CLIP:
    """The CLIP model of ``config`` with the checkpoint's weights, in eval mode, float32.

    Raises:
        CheckpointError: Listing missing tensors, unexpected tensors and shape mismatches
            (nothing is loaded leniently).
    """
    model = CLIP(config)
    expected = model.state_dict()
    given = {k: v for k, v in state.items() if k not in OPTIONAL_KEYS}
    missing = sorted(k for k in expected if k not in given and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in given if k not in expected)
    shapes = sorted(f"{k} {tuple(given[k].shape)} (expected {tuple(expected[k].shape)})" for k in given
                    if k in expected and given[k].shape != expected[k].shape)
    if "logit_scale" in given and given["logit_scale"].numel() == 1:
        given["logit_scale"] = given["logit_scale"].reshape(expected["logit_scale"].shape)
        shapes = [s for s in shapes if not s.startswith("logit_scale ")]
    if missing or unexpected or shapes:
        def listing(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "") if items else "none"

        raise CheckpointError(
            f"The checkpoint does not fit the {config.name} architecture: missing tensors: {listing(missing)}; "
            f"unexpected tensors: {listing(unexpected)}; wrong shapes: {listing(shapes)}. Check that the file is "
            "a complete open_clip checkpoint, or name its architecture with --arch."
        )
    for key, value in expected.items():  # e.g. num_batches_tracked, which open_clip also fills in
        given.setdefault(key, value)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in given.items()}, strict=True)
    return model.eval()
