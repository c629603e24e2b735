#!/usr/bin/env python3
"""RS-VLM build tool: set-up, demo, tests, packaging, benchmarks, training.

    python3 build.py demo            set everything up, then caption and search the demo scene
    python3 build.py test            set everything up, then run the whole test suite
    python3 build.py setup           apt packages, virtual environment, pip packages, model export, sample data
    python3 build.py package [--model DIR]   dist/: repository zip (no model), model package, offline zip
    python3 build.py release [--model DIR]   the same, and record the model package in the registry
    python3 build.py screenshots     drive the panel in the QGIS desktop (Xvfb); docs/screenshots/*.jpg
    python3 build.py install-plugin  unpack that zip into a QGIS profile and enable it
    python3 build.py wheel [--dist DIR]  dist/rs_vlm_core-VERSION-py3-none-any.whl: the core for Dask workers (no QGIS)
    python3 build.py bench           DRIS vs uniform grid, ONNX vs torch speed, parity (prints figures)
    python3 build.py bench-index     build a 12k-tile embedding index, time 200+ text queries against it
    python3 build.py bench-import    import a full-size random ViT-B-32 CLIP: export time, ONNX vs torch speed
    python3 build.py bench-speed [--provider cuda]   image tower tiles/s, planning share, peak memory at 10k/20k
    python3 build.py train --data ../shared/data [--ablations]   train the model (resumable), then `export`
    python3 build.py train-boxes --data ../shared/data [--hold-out] [--epochs N]   train the object box head
                                     (out/boxes/; copy the .npz to rs_vlm_plugin/resources/weights/rs_vlm_boxes.npz)
    python3 build.py export          re-export the ONNX bundle from the committed weights
    python3 build.py fit-decoder --model BUNDLE_DIR --data ../shared/data [--epochs N] [--max-sentences N]
                                     fit a caption decoder to any bundle's text space from caption text alone
    python3 build.py styles          rebuild the layer styles (rs_vlm_plugin/resources/styles/*.qml)
    python3 build.py eval --data ../shared/data   captioning, retrieval, scenes, objects, ablations (JSON + Markdown)
    python3 build.py eval --captions DIR --split NAME | --scenes DIR | --objects DIR   any folder laid out alike

Runs with the system Python (only the standard library); everything else happens in `.venv`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
SYSTEM_PY = "/usr/bin/python3"  # the interpreter QGIS's Python bindings are built for
PLUGIN = ROOT / "rs_vlm_plugin"
BUNDLE = PLUGIN / "models" / "rs-vlm-lite0"
CACHE = ROOT / ".cache"
SAMPLES = CACHE / "samples"
APT_PACKAGES = ["qgis", "python3-qgis", "python3-rasterio", "python3-venv", "xvfb", "xauth"]
# Registry package that ships the demo imagery (NEON aerial RGB, 10 cm), fetched at set-up.
SAMPLE_PACKAGE = "deepforest==2.1.0"
DEMO_SOURCE = "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png"
DEMO_LARGE_SOURCE = "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png"
GEOTIFF_SOURCE = "deepforest/data/OSBS_029.tif"
# open_clip's BPE vocabulary, for the tokenizer of imported CLIP checkpoints (modeling/clip/tokenizer.py).
OPEN_CLIP_PACKAGE = "open_clip_torch==3.3.0"
CLIP_BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE = CACHE / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"


def log(message: str) -> None:
    """A build step's headline."""
    print(f"[build] {message}", flush=True)


def run(cmd: list, env: dict | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, echoing it."""
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], env={**os.environ, **(env or {})}, check=check, **kw)


# --- set-up ---------------------------------------------------------------------------------

def ensure_apt() -> None:
    """Install QGIS and friends from Debian when missing."""
    missing = [p for p in APT_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if sudo and not shutil.which("sudo"):
        sys.exit(f"Debian packages {missing} are missing and this is not root; install them with apt-get.")
    run(sudo + ["apt-get", "update", "-qq"])
    run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env={"DEBIAN_FRONTEND": "noninteractive"})


def ensure_venv() -> None:
    """The project's virtual environment on QGIS's interpreter, with the pinned packages."""
    if not VENV_PY.exists():
        log("creating .venv (system site packages, so qgis, osgeo and rasterio import)")
        run([SYSTEM_PY, "-m", "venv", "--system-site-packages", VENV])
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log("installing pip packages")
    run([VENV_PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", ROOT / "requirements.txt"])
    stamp.write_text(digest)


def bundle_inputs_digest() -> str:
    """Hash of everything the exported bundle depends on, to re-export only when needed."""
    h = hashlib.sha256()
    weights = PLUGIN / "resources" / "weights"
    files = [PLUGIN / "resources" / "knowledge_base.json", weights / "rs_vlm_lite0.npz", weights / "rs_vlm_boxes.npz",
             *sorted((PLUGIN / "modeling").glob("*.py")), ROOT / "requirements.txt"]
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def ensure_bundle(force: bool = False) -> None:
    """Export the default model to ONNX when the bundle is missing or stale."""
    stamp = BUNDLE / ".inputs.sha256"
    digest = bundle_inputs_digest()
    if not force and (BUNDLE / "manifest.json").exists() and stamp.exists() and stamp.read_text() == digest:
        return
    log("exporting the default model to ONNX")
    run([VENV_PY, "-m", "rs_vlm_plugin.modeling.export", "--out", BUNDLE], cwd=ROOT)
    stamp.write_text(digest)


def fetched_wheel(spec: str, pattern: str, what: str) -> Path:
    """A registry package's wheel in the ignored cache, downloaded once (``pip download --no-deps``)."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(pattern))
    if not found:
        log(f"fetching {what}: pip download --no-deps {spec}")
        run([VENV_PY, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check", spec, "-d", wheels])
        found = sorted(wheels.glob(pattern))
    return found[-1]


def ensure_samples() -> dict:
    """Fetch the registry package with real imagery into the ignored cache; write the GeoTIFFs."""
    SAMPLES.mkdir(parents=True, exist_ok=True)
    demo = SAMPLES / "demo_scene.tif"
    large = SAMPLES / "demo_scene_large.tif"
    osbs = SAMPLES / "OSBS_029.tif"
    if not (demo.exists() and large.exists() and osbs.exists()):
        with zipfile.ZipFile(fetched_wheel(SAMPLE_PACKAGE, "deepforest-*.whl", "sample imagery")) as wheel:
            for member in (DEMO_SOURCE, DEMO_LARGE_SOURCE, GEOTIFF_SOURCE):
                target = SAMPLES / Path(member).name
                target.write_bytes(wheel.read(member))
        run([VENV_PY, ROOT / "scripts" / "make_samples.py", SAMPLES], cwd=ROOT)
    return {"demo": demo, "large": large, "osbs": osbs}


def ensure_clip_vocab() -> Path:
    """open_clip's BPE vocabulary in the ignored cache, extracted from the open_clip_torch wheel (no install)."""
    if not CLIP_BPE.exists():
        CLIP_BPE.parent.mkdir(parents=True, exist_ok=True)
        wheel_path = fetched_wheel(OPEN_CLIP_PACKAGE, "open_clip_torch-3.3.0-*.whl", "the CLIP tokenizer vocabulary")
        with zipfile.ZipFile(wheel_path) as wheel:
            CLIP_BPE.write_bytes(wheel.read(CLIP_BPE_MEMBER))
    return CLIP_BPE


def setup() -> None:
    """Everything the demo and the tests need."""
    ensure_apt()
    ensure_venv()
    ensure_bundle()
    ensure_samples()
    ensure_clip_vocab()


# --- commands -------------------------------------------------------------------------------

def qgis_path() -> str:
    """PATH for QGIS's programs, without any Python installation but the system one.

    QGIS's embedded Python finds its standard library from the first ``python3`` on PATH;
    a pyenv or conda interpreter there (``pyenv exec`` puts its own first) makes
    ``qgis_process`` and the desktop fail with "No module named 'qgis'".
    """
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not any(tag in p for tag in (".pyenv", "conda", "virtualenvs"))]
    return os.pathsep.join(keep)


def headless_env() -> dict:
    """Environment for QGIS without a screen."""
    return {"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(CACHE / "xdg"),
            "PATH": qgis_path()}


def cmd_demo(args) -> int:
    """Caption and search the demo scene; write out/demo.gpkg and out/demo.png."""
    setup()
    (CACHE / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    return run([VENV_PY, ROOT / "scripts" / "demo.py", "--out", ROOT / "out", "--query", args.query],
               env=headless_env(), check=False, cwd=ROOT).returncode


def cmd_test(args) -> int:
    """The whole test suite (pytest's 'no tests collected' counts as a failure)."""
    setup()
    (CACHE / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    code = run([VENV_PY, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", *args.pytest_args],
               env=headless_env(), check=False, cwd=ROOT).returncode
    if code == 5:
        print("pytest collected no tests; that is a failure here.", file=sys.stderr)
        return 1
    return code


def run_desktop_tour(folder: Path, raster: Path | None, steps: list[str], shots: Path | None = None,
                     max_tiles: int = 24, timeout_s: int = 900) -> dict:
    """Drive the plugin's panel in the real QGIS desktop under Xvfb (``scripts/desktop_tour.py``).

    QGIS runs with a fresh profile in ``folder`` and the plugin from this checkout; the tour's
    project file, result GeoPackages and ``tour.json`` end up in ``folder``.

    Returns:
        What the tour saw (see the script), with the last lines of QGIS's output under "log".
    """
    import signal

    qgis = shutil.which("qgis.bin") or shutil.which("qgis")
    xvfb = shutil.which("xvfb-run")
    if not (qgis and xvfb):
        raise RuntimeError("the QGIS desktop (qgis) and xvfb-run are needed; run `python3 build.py setup`")
    folder.mkdir(parents=True, exist_ok=True)
    plugins = folder / "plugins"
    plugins.mkdir(exist_ok=True)
    link = plugins / "rs_vlm_plugin"
    if not link.exists():
        link.symlink_to(PLUGIN, target_is_directory=True)
    result = folder / "tour.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}  # a real (virtual) display
    purelib = subprocess.run([str(VENV_PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True).stdout.strip() if VENV_PY.exists() else ""
    env.update(QGIS_PLUGINPATH=str(plugins), QGIS_CUSTOM_CONFIG_PATH=str(folder / "profile"),
               RSVLM_RESULT=str(result), RSVLM_RASTER=str(raster or ""), RSVLM_STEPS=",".join(steps),
               RSVLM_SHOTS=str(shots or ""), RSVLM_MAX_TILES=str(max_tiles), PATH=qgis_path(),
               PYTHONPATH=os.pathsep.join([p for p in (purelib, env.get("PYTHONPATH", "")) if p]))
    # A session of its own, so a QGIS that hangs is killed with its X server.
    child = subprocess.Popen([xvfb, "-a", "-s", "-screen 0 1600x1000x24", qgis, "--nologo", "--noversioncheck",
                              "--code", str(ROOT / "scripts" / "desktop_tour.py")],
                             env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        log = child.communicate(timeout=timeout_s)[0][-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        log = f"QGIS did not exit within {timeout_s} s: " + child.communicate()[0][-3000:]
    seen = json.loads(result.read_text()) if result.exists() else {"error": f"the tour wrote no result; QGIS said:\n{log}"}
    seen["log"] = log
    return seen


SCREENSHOT_STEPS = ["describe", "describe", "search", "classify", "ask", "index", "search_index"]
README_SHOTS = ["describe", "search", "classify", "ask", "search_index"]


def cmd_screenshots(args) -> int:
    """Screenshots of the panel in the real QGIS desktop (docs/screenshots/), with timings."""
    setup()
    docs = ROOT / "docs" / "screenshots"
    folder = ROOT / "out" / "tour"
    shutil.rmtree(folder / "rs_vlm_runs", ignore_errors=True)
    shots = folder / "shots"
    seen = run_desktop_tour(folder, SAMPLES / "demo_scene.tif", SCREENSHOT_STEPS, shots, max_tiles=48)
    if "error" in seen:
        print(seen["error"], file=sys.stderr)
        return 1
    docs.mkdir(parents=True, exist_ok=True)
    for name in README_SHOTS:
        shutil.copyfile(shots / f"{name}.jpg", docs / f"{name}.jpg")
    for step, record in seen["steps"].items():
        print(f"{step:15s} click to layers {record['click_to_layers_s']:6.2f} s  results {record['results']:3d}  "
              f"{record['answer'] or record['status']}")
    log(f"screenshots in {docs} (all steps in {shots}); figures in {folder / 'tour.json'}")
    return 0


def package(bundle: Path = BUNDLE, dist: Path | None = None, release: bool = False) -> dict:
    """The three artefacts (scripts/package_plugin.py): repository zip, model package, offline zip.

    ``release``: the release step, which alone writes the registry (size, SHA-256, release URL of the
    new model package) before the plugin zips are made; otherwise the registry is left as tracked.
    """
    sys.path.insert(0, str(ROOT / "scripts"))
    from package_plugin import package_all, release_all

    # open_clip's BPE vocabulary (MIT), so an installed plugin can import CLIP checkpoints; fetched, never committed
    extra = {f"resources/open_clip/{CLIP_BPE.name}": CLIP_BPE} if CLIP_BPE.exists() else {}
    return (release_all if release else package_all)(PLUGIN, bundle, dist or ROOT / "dist", extra)


SHIPPED_FORMATS = {"image": "fp16", "text": "fp16", "decoder": "fp16"}  # float16 storage, float32 compute


def shrunk_bundle() -> Path:
    """The default bundle as it ships: a float16-weight copy (``modeling/quantize.py``) in
    ``build_artifacts/rs-vlm-lite0`` (the folder name is the model's name in the registry),
    rebuilt when the exported bundle changed. Parity and sizes are in its manifest."""
    out = ROOT / "build_artifacts" / BUNDLE.name
    stamp = out / ".source.sha256"
    digest = hashlib.sha256((BUNDLE / "manifest.json").read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        shutil.rmtree(out, ignore_errors=True)
        log("shrinking the bundle to float16 weights for the model package")
        run([VENV_PY, "-m", "rs_vlm_plugin.modeling.quantize", BUNDLE, "--out", out,
             *(f"--{k}={v}" for k, v in SHIPPED_FORMATS.items()), "--raster", SAMPLES / "demo_scene.tif",
             "--report", ROOT / "out" / "shrink.json"], cwd=ROOT, stdout=subprocess.DEVNULL)
        stamp.write_text(digest)
    return out


def cmd_package(args) -> int:
    """dist/: the repository zip (no model), the model package and the offline zip (plugin + model);
    the tracked registry is not written (``release`` does that)."""
    setup()
    bundle = Path(args.model) if getattr(args, "model", None) else shrunk_bundle()
    made = package(bundle, release=args.command == "release")
    from rs_vlm_plugin.core.models.archive import sha256_of

    for kind in ("repository", "model", "offline"):
        path = made[kind]
        log(f"wrote {kind:10s} {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_of(path)})")
    if "url" in made:
        log(f"registry: {made['model'].name} recorded in rs_vlm_plugin/resources/models.json; upload it as {made['url']}")
    elif not made["registry_matches"]:
        log(f"note: {made['model'].name} differs from the package in rs_vlm_plugin/resources/models.json (another "
            "model or commit); the plugin zips accept the registry's package, the offline zip carries this one. "
            "`python3 build.py release` records this package.")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_plugin_zip.py"), str(made["repository"]),
                           "--forbid", "models/", "resources/weights/"]).returncode


def cmd_wheel(args) -> int:
    """The core's wheel (scripts/build_wheel.py): `pip install` it on the scheduler and every Dask worker."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_wheel import build_wheel

    wheel = build_wheel(ROOT, Path(args.dist) if args.dist else ROOT / "dist")
    log(f"wrote {wheel} ({wheel.stat().st_size / 1e3:.0f} kB); on each machine of the cluster: "
        f"python -m pip install {wheel.name}")
    return 0


def qgis_profile_dir(profile: str) -> Path:
    """The plugins folder of a QGIS 3 profile."""
    return Path.home() / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / profile


def cmd_install_plugin(args) -> int:
    """Unpack the plugin zip into a QGIS profile and enable it there."""
    setup()
    # plugin and model as shipped: works without a download; the checkout's registry stays the release's
    offline = package(shrunk_bundle())["offline"]
    profile = Path(args.profile_dir) if args.profile_dir else qgis_profile_dir(args.profile)
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(plugins / "rs_vlm_plugin", ignore_errors=True)
    with zipfile.ZipFile(offline) as zf:
        zf.extractall(plugins)
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    text = ini.read_text() if ini.exists() else ""
    if "rs_vlm_plugin=true" not in text:
        if "[PythonPlugins]" in text:
            text = text.replace("[PythonPlugins]", "[PythonPlugins]\nrs_vlm_plugin=true", 1)
        else:
            text += "\n[PythonPlugins]\nrs_vlm_plugin=true\n"
        ini.write_text(text)
    log(f"installed into {plugins / 'rs_vlm_plugin'} and enabled in {ini}")
    return 0


def cmd_bench(args) -> int:
    """Benchmarks that print figures (no timing assertions anywhere)."""
    setup()
    extra = ["--data", args.data] if args.data else []
    return run([VENV_PY, ROOT / "scripts" / "bench.py", "--samples", SAMPLES, *extra], env=headless_env(),
               check=False, cwd=ROOT).returncode


def cmd_bench_index(args) -> int:
    """Embedding index benchmark: build time, file size, open time, per-query latency (prints figures)."""
    setup()
    extra = ["--grid", args.grid, "--queries", str(args.queries)] + (["--reuse"] if args.reuse else [])
    return run([VENV_PY, ROOT / "scripts" / "bench_index.py", "--samples", SAMPLES, "--work", CACHE / "bench_index",
                "--out", ROOT / "out" / "bench_index.json", *extra], env=headless_env(), check=False,
               cwd=ROOT).returncode


def cmd_bench_import(args) -> int:
    """CLIP import benchmark: export time of a full-size ViT-B-32, ONNX vs torch tower speed (prints figures)."""
    ensure_apt()
    ensure_venv()
    ensure_clip_vocab()
    scenes = ["--scenes", Path(args.data) / "resisc12" / "train"] if args.data else []
    return run([VENV_PY, ROOT / "scripts" / "bench_clip_import.py", "--arch", args.arch, "--work",
                CACHE / "bench_import", "--out", ROOT / "out" / "bench_import.json", *scenes], env=headless_env(),
               check=False, cwd=ROOT).returncode


def cmd_bench_soak(args) -> int:
    """Soak benchmark: 200 jobs in one process, resident memory after every 20 (prints figures)."""
    setup()
    return run([VENV_PY, ROOT / "scripts" / "bench_soak.py", "--work", CACHE / "bench_soak",
                "--out", ROOT / "out" / "bench_soak.json"], env=headless_env(), check=False, cwd=ROOT).returncode


def cmd_bench_speed(args) -> int:
    """Speed and memory: image-tower tiles/s per graph, tier and precision (ONNX vs torch), planning's
    share of a job at 2560 and 10k px, peak memory of a uniform caption at 10k and 20k px (prints figures)."""
    setup()
    extra = ["--provider", args.provider, *sum((["--skip", s] for s in args.skip or []), [])]
    return run([VENV_PY, ROOT / "scripts" / "bench_speed.py", "--samples", SAMPLES, "--work", CACHE / "bench_speed",
                "--out", ROOT / "out" / "bench_speed.json", *extra], env=headless_env(), check=False,
               cwd=ROOT).returncode


def cmd_bench_scale(args) -> int:
    """Scale-out benchmark: batch captioning in this process and on Dask clusters of 1 and 2 workers."""
    setup()
    return run([VENV_PY, ROOT / "scripts" / "bench_scale.py", "--work", CACHE / "bench_scale",
                "--out", ROOT / "out" / "bench_scale.json"], env=headless_env(), check=False, cwd=ROOT).returncode


def cmd_bench_locate(args) -> int:
    """Locate benchmark: text-guided DRIS vs complexity DRIS vs the native grid on VHR-10 mosaics and NAIP scenes."""
    setup()
    return run([VENV_PY, ROOT / "scripts" / "bench_locate.py", "--data", Path(args.data).resolve(),
                "--out", ROOT / "out" / "bench_locate.json", *args.locate_args], check=False, cwd=ROOT).returncode


def cmd_train(args) -> int:
    """Train the model on a data folder laid out like ../shared/data (stages resume from checkpoints)."""
    ensure_apt()
    ensure_venv()
    return run([VENV_PY, "-m", "rs_vlm_train.train", *args.train_args], check=False, cwd=ROOT).returncode


def cmd_train_boxes(args) -> int:
    """Train the object box head on VHR-10's boxes (rs_vlm_train/boxes.py; default out/boxes/head.npz)."""
    ensure_apt()
    ensure_venv()
    extra = list(args.train_args)
    if "--out" not in extra:
        extra += ["--out", str(ROOT / "out" / "boxes" / ("held_out.npz" if "--hold-out" in extra else "head.npz"))]
    return run([VENV_PY, "-m", "rs_vlm_train.boxes", *extra], check=False, cwd=ROOT).returncode


def cmd_fit_decoder(args) -> int:
    """Fit a caption decoder to a bundle's text space from caption text (rs_vlm_train/fit_decoder.py)."""
    ensure_apt()
    ensure_venv()
    return run([VENV_PY, "-m", "rs_vlm_train.fit_decoder", *args.fit_args], check=False, cwd=ROOT).returncode


def cmd_eval(args) -> int:
    """Evaluate the bundle on folders laid out like ../shared/data."""
    setup()
    return run([VENV_PY, "-m", "rs_vlm_train.evaluate", *args.eval_args], check=False, cwd=ROOT).returncode


def cmd_export(args) -> int:
    """Re-export the ONNX bundle."""
    ensure_apt()
    ensure_venv()
    ensure_bundle(force=True)
    return 0


def cmd_styles(args) -> int:
    """Rebuild the layer styles (rs_vlm_plugin/resources/styles/*.qml) in a headless QGIS."""
    ensure_apt()
    ensure_venv()
    (CACHE / "xdg").mkdir(parents=True, exist_ok=True, mode=0o700)
    return run([VENV_PY, ROOT / "scripts" / "make_styles.py"], env=headless_env(), check=False,
               cwd=ROOT).returncode


def main(argv=None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="set up, then caption and search the demo scene")
    p.add_argument("--query", default="a paved road through a forest")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("test", help="set up, then run the tests")
    p.add_argument("pytest_args", nargs="*")
    p.set_defaults(func=cmd_test)
    sub.add_parser("setup", help="set up only").set_defaults(func=lambda a: setup() or 0)
    p = sub.add_parser("package", help="the repository zip, the model package and the offline zip")
    p.add_argument("--model", default=None, help="bundle folder to package (default: a float16 copy of "
                   "rs_vlm_plugin/models/rs-vlm-lite0)")
    p.set_defaults(func=cmd_package)
    p = sub.add_parser("release", help="package, and record the model package (size, SHA-256, release URL) in the "
                       "registry: the only step that writes rs_vlm_plugin/resources/models.json")
    p.add_argument("--model", default=None, help="bundle folder to package (default: as package)")
    p.set_defaults(func=cmd_package)
    p = sub.add_parser("wheel", help="the core's wheel for Dask workers and the command line (no QGIS)")
    p.add_argument("--dist", default=None, help="folder to write it to (default: dist/)")
    p.set_defaults(func=cmd_wheel)
    sub.add_parser("screenshots", help="drive the panel in QGIS under Xvfb, save docs/screenshots/*.jpg"
                   ).set_defaults(func=cmd_screenshots)
    p = sub.add_parser("install-plugin", help="install the zip into a QGIS profile")
    p.add_argument("--profile", default="default")
    p.add_argument("--profile-dir", default=None, help="a profile folder (overrides --profile)")
    p.set_defaults(func=cmd_install_plugin)
    p = sub.add_parser("bench", help="print benchmark figures")
    p.add_argument("--data", default=None, help="optional ../shared/data for the NAIP scenes")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("bench-index", help="embedding index: build 10k+ tiles once, time 200+ queries")
    p.add_argument("--grid", default="18x6", help="copies of the large demo scene in the VRT mosaic (x by y)")
    p.add_argument("--queries", type=int, default=216, help="timed text queries (at least 200)")
    p.add_argument("--reuse", action="store_true", help="reuse the index of an earlier run")
    p.set_defaults(func=cmd_bench_index)
    p = sub.add_parser("bench-import", help="CLIP import: export time of a full-size random model, ONNX vs torch speed")
    p.add_argument("--arch", default="ViT-B-32", help="architecture of the random checkpoint")
    p.add_argument("--data", default=None, help="../shared/data: also compare zero-shot torch vs ONNX on RESISC12")
    p.set_defaults(func=cmd_bench_import)
    sub.add_parser("bench-soak", help="200 jobs in one process, memory after each 20").set_defaults(func=cmd_bench_soak)
    locate = sub.add_parser("bench-locate", help="text-guided DRIS and outlines: AP, recall, area, pixels (VHR-10 mosaics, NAIP)")
    locate.add_argument("--data", required=True, help="folder laid out like ../shared/data")
    locate.add_argument("locate_args", nargs=argparse.REMAINDER, help="more options of scripts/bench_locate.py")
    locate.set_defaults(func=cmd_bench_locate)
    p = sub.add_parser("bench-speed", help="image tower tiles/s (tiers, fp16/int8, torch), planning share, peak memory")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="cuda: onnxruntime-gpu")
    p.add_argument("--skip", action="append", choices=("tower", "planning", "memory"), help="leave out a part")
    p.set_defaults(func=cmd_bench_speed)
    sub.add_parser("bench-scale", help="batch captioning on Dask: 1 and 2 workers, tiles/s").set_defaults(
        func=cmd_bench_scale)
    p = sub.add_parser("train", help="train the model: --data DIR [--ablations] (see rs_vlm_train/train.py)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-boxes", help="train the object box head: --data DIR [--hold-out] [--epochs N] "
                       "(see rs_vlm_train/boxes.py)")
    p.set_defaults(func=cmd_train_boxes)
    sub.add_parser("export", help="re-export the ONNX bundle").set_defaults(func=cmd_export)
    p = sub.add_parser("fit-decoder", help="fit a caption decoder to a bundle's text space: --model DIR --data DIR "
                       "[--epochs N] [--max-sentences N] (see rs_vlm_train/fit_decoder.py)")
    p.set_defaults(func=cmd_fit_decoder)
    sub.add_parser("styles", help="rebuild the .qml layer styles").set_defaults(func=cmd_styles)
    p = sub.add_parser("eval", help="evaluate: --data DIR, or --captions DIR --split NAME, --scenes DIR, --objects DIR")
    p.set_defaults(func=cmd_eval)
    args, extra = parser.parse_known_args(argv)
    if args.command == "eval":
        args.eval_args = extra  # passed on to rs_vlm_train.evaluate, which checks them
    elif args.command in ("train", "train-boxes"):
        args.train_args = extra  # passed on to rs_vlm_train.train / rs_vlm_train.boxes
    elif args.command == "fit-decoder":
        args.fit_args = extra  # passed on to rs_vlm_train.fit_decoder, which checks them
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
