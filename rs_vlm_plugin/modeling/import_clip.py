"""Command line: import an open_clip checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP, ...) as an RS-VLM bundle.

    python -m rs_vlm_plugin.modeling.import_clip CHECKPOINT --out DIR [--arch NAME] [--quick-gelu]
        [--name NAME] [--license TEXT] [--source TEXT] [--bpe PATH]

Prints ``PROGRESS n`` lines (0-100) and a stage sentence after each, which the QGIS panel and
Processing algorithm parse; exits 0 when the bundle is written, otherwise 1 (2 for bad arguments)
with one sentence on stderr starting ``Error:``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .clip.checkpoint import CheckpointError
from .clip.configs import FULL_CONFIGS
from .clip.export_clip import export_clip_bundle
from .clip.tokenizer import DEFAULT_BPE


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, export, report failures as a sentence on stderr."""
    parser = argparse.ArgumentParser(description="Import an open_clip CLIP checkpoint as an RS-VLM ONNX bundle.")
    parser.add_argument("checkpoint", type=Path, help="open_clip checkpoint (.pt, .pth, .bin or .safetensors)")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced if it exists)")
    parser.add_argument("--arch", default=None,
                        help=f"architecture, instead of detecting it: {', '.join(FULL_CONFIGS)} (-quickgelu allowed)")
    parser.add_argument("--quick-gelu", action="store_true", default=None,
                        help="the weights were trained with quick GELU (OpenAI-initialised models, SkyCLIP ViT-L-14)")
    parser.add_argument("--name", default=None, help="model name shown in the plugin (default: the file name)")
    parser.add_argument("--license", dest="license_text", default=None, help="licence of the weights")
    parser.add_argument("--source", default=None, help="where the weights come from (paper, URL)")
    parser.add_argument("--bpe", type=Path, default=DEFAULT_BPE, help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args(argv)
    try:
        export_clip_bundle(args.checkpoint, args.out, arch=args.arch, quick_gelu=args.quick_gelu, name=args.name,
                           license_text=args.license_text, source=args.source, bpe=args.bpe)
    except (CheckpointError, FileNotFoundError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
