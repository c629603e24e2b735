"""``python -m rs_vlm_plugin models list|install|remove`` (see :mod:`rs_vlm_plugin.core.cli`).

    python -m rs_vlm_plugin models list [--models-dir DIR] [--json]
    python -m rs_vlm_plugin models install rs-vlm-lite0 [--mirror URL] [--models-dir DIR]
    python -m rs_vlm_plugin models install rs-vlm-lite0-1.0.0.zip      (a package file, offline)
    python -m rs_vlm_plugin models remove rs-vlm-lite0 [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..progress import ProgressBackend
from ..errors import RsVlmError
from .download import TIMEOUT_S, make_opener
from .install import clean_partial, install_archive, install_from_registry, installed_models, remove_model
from .registry import load_registry, user_models_dir

COMMANDS = ("models",)


def add_parsers(sub) -> None:
    """Add ``models`` and its three actions to the main parser's subparsers."""
    models = sub.add_parser("models", help="list, install (download or from a file) and remove models")
    actions = models.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=None,
                        help=f"where models are installed (default: ${'{'}RSVLM_MODELS_DIR{'}'} or {user_models_dir()})")
    common.add_argument("--registry", type=Path, default=None, help="registry file (default: the plugin's own)")
    common.add_argument("--json", action="store_true", help="print JSON instead of lines")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress and no messages on stderr, only warnings and errors")
    actions.add_parser("list", parents=[common], help="models in the registry and installed ones")
    install = actions.add_parser("install", parents=[common], help="download a registry model or install a package file")
    install.add_argument("model", help="a registry name (rs-vlm-lite0) or a package file (.zip)")
    install.add_argument("--mirror", default="", help="download from this base URL instead of the project's releases")
    install.add_argument("--proxy", default="", help="HTTP(S) proxy URL (default: the environment's)")
    install.add_argument("--timeout", type=float, default=TIMEOUT_S,
                         help=f"seconds without data from the server before giving up (default {TIMEOUT_S:g})")
    remove = actions.add_parser("remove", parents=[common], help="remove an installed model")
    remove.add_argument("model", help="the installed model's name")


def run(args: argparse.Namespace, progress: ProgressBackend) -> dict:
    """Do one action; returns the summary :func:`report` prints."""
    root = args.models_dir or user_models_dir()
    registry = load_registry(args.registry)
    if args.action == "install":
        clean_partial(root)
        if args.model.lower().endswith(".zip") or Path(args.model).is_file():
            folder = install_archive(Path(args.model), root, progress=progress)
        else:
            if not args.timeout > 0:
                raise RsVlmError(f"--timeout must be a positive number of seconds, not {args.timeout:g}.")
            folder = install_from_registry(registry, args.model, root, args.mirror, progress, make_opener(args.proxy),
                                           args.timeout)
        return {"action": "installed", "model": folder.name, "folder": str(folder)}
    if args.action == "remove":
        return {"action": "removed", "model": args.model, "folder": str(remove_model(args.model, root))}
    installed = {m.name: m for m in installed_models(root)}
    rows = [{"name": e.name, "version": e.version, "size_mb": round(e.size / 1e6, 1), "licence": e.licence,
             "installed": e.name in installed, "folder": str(installed[e.name].folder) if e.name in installed else None}
            for e in registry.models]
    rows += [{"name": m.name, "version": m.version, "size_mb": None, "licence": "", "installed": True,
              "folder": str(m.folder)} for m in installed.values() if m.name not in {e.name for e in registry.models}]
    return {"action": "list", "models_dir": str(root), "models": rows}


def report(result: dict, as_json: bool) -> None:
    """Print an action's summary."""
    if as_json:
        print(json.dumps(result, indent=2))
    elif result["action"] == "list":
        print(f"Models folder: {result['models_dir']}")
        for row in result["models"]:
            size = f"{row['size_mb']:7.1f} MB" if row["size_mb"] is not None else " " * 10
            state = "installed" if row["installed"] else "not installed"
            print(f"{row['name']:<20} {row['version']:<8} {size}  {state:<13}  {row['licence']}")
    else:
        print(f"{result['action'].capitalize()} {result['model']} ({result['folder']})")
