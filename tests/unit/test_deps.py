"""The dependency check and the pip installer's pieces (rs_vlm_plugin.deps), without QGIS.

Import blocking runs in subprocesses (a meta-path finder), fake broken packages in a temporary
folder; the pip failure sentences come from pip output recorded on a real machine
(tests/unit/data/pip_output/).
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rs_vlm_plugin import deps

REPO = Path(__file__).resolve().parents[2]
PIP_OUTPUT = Path(__file__).parent / "data" / "pip_output"

BLOCKER_SITE = REPO / "tests" / "data" / "import_blocker"  # its sitecustomize blocks RSVLM_TEST_BLOCK


def run_blocked(blocked: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python where the modules in ``blocked`` cannot be imported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BLOCKER_SITE), str(REPO)]), RSVLM_TEST_BLOCK=blocked)
    return subprocess.run([sys.executable, "-c", "import sys\n" + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_reports_blocked_modules_as_missing_and_never_imports_numpy():
    done = run_blocked("numpy,onnxruntime,shapely", """
        import json
        from rs_vlm_plugin import deps
        report = deps.check()
        print(json.dumps({"ok": report.ok, "numpy_loaded": "numpy" in sys.modules,
                          "states": {s.requirement.import_name: s.status for s in report.states},
                          "to_install": [s.requirement.pip_name for s in report.to_install],
                          "summary": report.summary()}))
    """)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"] is False
    assert out["numpy_loaded"] is False
    assert out["states"]["numpy"] == deps.MISSING
    assert out["states"]["onnxruntime"] == deps.MISSING
    assert out["states"]["shapely"] == deps.MISSING
    assert out["states"]["tokenizers"] == deps.OK
    # NumPy belongs to QGIS: the installer must not try to replace it, and the user is told so.
    assert out["to_install"] == ["onnxruntime", "shapely"]
    assert "onnxruntime is not installed: it runs the vision-language model" in out["summary"]
    assert "NumPy belongs to QGIS" in out["summary"]
    assert 'Click "Install dependencies"' in out["summary"]


def test_check_passes_in_the_project_environment():
    report = deps.check()
    assert report.ok, report.summary()
    assert report.state("numpy").version == __import__("numpy").__version__


@pytest.fixture()
def fake_packages(tmp_path, monkeypatch):
    """A folder on sys.path where tests write fake packages; they are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("rsvlm_fake"):
            del sys.modules[name]


def fake(folder: Path, name: str, body: str) -> deps.Requirement:
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return deps.Requirement(name, name, f"{name}==2.0.0", "1.5", "3", "is a test package")


@pytest.mark.parametrize("body, status, error", [
    ("raise ImportError('numpy.core.multiarray failed to import')", deps.BROKEN,
     "ImportError: numpy.core.multiarray failed to import"),
    ("raise AttributeError('_ARRAY_API not found')", deps.BROKEN, "AttributeError: _ARRAY_API not found"),
    ("raise SystemExit(3)", deps.BROKEN, "SystemExit: 3"),
    ("import rsvlm_fake_absent_dependency", deps.BROKEN, "No module named 'rsvlm_fake_absent_dependency'"),
    ("__version__ = '1.4.9'", deps.TOO_OLD, None),
    ("__version__ = '3.0.0rc1'", deps.TOO_NEW, None),
    ("__version__ = '1.5'", deps.OK, None),
    ("__version__ = '2.9.1.post2'", deps.OK, None),
])
def test_check_one_judges_imports_and_versions(fake_packages, body, status, error):
    requirement = fake(fake_packages, "rsvlm_fake_pkg", body)
    state = deps.check_one(requirement)
    assert state.status == status
    if error is not None:
        assert error in state.error
        assert error in state.describe()
    assert state.installable == (status != deps.OK)


def test_report_explains_what_pip_cannot_fix():
    gdal = deps.Requirement("rsvlm_fake_missing_gdal", None, None, None, None, "writes GeoPackages")
    report = deps.check([gdal])
    assert report.problems and not report.to_install
    assert "comes with QGIS; reinstall QGIS" in report.summary()
    assert "Install dependencies" not in report.summary()


def test_optional_packages_do_not_fail_the_report():
    optional = deps.Requirement("rsvlm_fake_optional", "x", "x==1", None, None, "helps", required=False)
    assert deps.check([optional]).ok


def test_pins_match_the_runtime_section_of_requirements_txt():
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    runtime = []
    for line in lines[1:]:
        if line.startswith("#"):
            break
        runtime.append(line.split("#")[0].strip())
    for requirement in deps.REQUIREMENTS:
        if requirement.pin and requirement.pip_name != "rasterio":  # Debian's rasterio, not in requirements.txt
            assert requirement.pin in runtime, f"{requirement.pin} is not in requirements.txt's runtime section"


def third_party_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    tops = {name.split(".")[0] for name in names}
    return {t for t in tops if t not in sys.stdlib_module_names and t != "__future__"}


def test_every_package_core_imports_is_checked():
    checked = {r.import_name.split(".")[0] for r in deps.REQUIREMENTS}
    checked.add("cloudpickle")  # a requirement of dask.distributed, imported only with it (distributed/preflight.py)
    imported = third_party_imports(REPO / "rs_vlm_plugin" / "core")
    assert imported <= checked, f"core imports {sorted(imported - checked)} which deps.REQUIREMENTS lacks"


def test_deps_uses_the_standard_library_only():
    tree = ast.Module(body=[node for f in sorted((REPO / "rs_vlm_plugin" / "deps").glob("*.py"))
                             for node in ast.parse(f.read_text(encoding="utf-8")).body], type_ignores=[])
    tops = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    tops |= {node.module.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert tops - {"__future__"} <= set(sys.stdlib_module_names)


# Private folder and constraints -------------------------------------------------------------

def test_private_site_dir_is_per_python_version(tmp_path):
    folder = deps.private_site_dir(tmp_path / "profiles" / "default")
    version = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    assert folder == tmp_path / "profiles" / "default" / "python" / "rs_vlm_deps" / version


def test_activate_private_site_puts_an_existing_folder_first(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert deps.activate_private_site(tmp_path / "absent") is False
    assert str(tmp_path / "absent") not in sys.path
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "rsvlm_fake_private.py").write_text("WHERE = 'private'\n", encoding="utf-8")
    assert deps.activate_private_site(tmp_path / "site") is True
    assert deps.activate_private_site(tmp_path / "site") is True
    assert sys.path.index(str(tmp_path / "site")) == 0 and sys.path.count(str(tmp_path / "site")) == 1
    import rsvlm_fake_private

    assert rsvlm_fake_private.WHERE == "private"
    del sys.modules["rsvlm_fake_private"]


def test_host_constraints_pin_the_installed_numpy_and_more():
    import numpy

    pins = deps.host_constraints()
    assert pins["numpy"] == numpy.__version__
    for name in ("shapely", "packaging"):
        from importlib.metadata import version

        assert pins[name] == version(name)
    assert "onnxruntime" not in deps.host_constraints(exclude=["onnxruntime"])
    assert f"numpy=={numpy.__version__}\n" in deps.constraints_text(pins)


def dist_info(folder: Path, name: str, version: str, files: dict[str, str] | None = None) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    rows = []
    for relative, text in (files or {}).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text, encoding="utf-8")
        rows.append(f"{relative},,")
    rows += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_host_constraints_drop_local_labels_and_unparsable_versions(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    dist_info(first, "Debian_Thing", "1.2.3+dfsg")
    dist_info(first, "weird", "2:1.0-debian")
    dist_info(second, "debian-thing", "9.9")
    dist_info(second, "other", "0.5.post1")
    dist_info(tmp_path / "rs_vlm_deps" / "py3.11", "private", "1.0")
    pins = deps.host_constraints(paths=[str(first), str(second), str(tmp_path / "rs_vlm_deps" / "py3.11")])
    assert pins == {"debian-thing": "1.2.3", "other": "0.5.post1"}


def test_remove_host_duplicates_keeps_what_was_asked_for(tmp_path):
    dist_info(tmp_path, "numpy", "1.24.2", {"numpy/__init__.py": "", "numpy/core/x.py": "", "bin/f2py": ""})
    dist_info(tmp_path, "tqdm", "4.70.1", {"tqdm/__init__.py": ""})
    removed = deps.remove_host_duplicates(tmp_path, {"numpy": "1.24.2", "tqdm": "4.70.1"}, keep=["tqdm"])
    assert removed == ["numpy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tqdm", "tqdm-4.70.1.dist-info"]


# GPU choice and the pip command --------------------------------------------------------------

def script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.skipif(os.name == "nt", reason="shell scripts stand in for nvidia-smi")
def test_cuda_available_reads_nvidia_smi_and_the_driver_folder(tmp_path):
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    listing = script(tmp_path, "smi-gpu", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-1234)'")
    nothing = script(tmp_path, "smi-none", "echo 'No devices were found'; exit 6")
    assert deps.cuda_available(nvidia_smi=listing, proc_gpus=gpus) is True
    assert deps.cuda_available(nvidia_smi=nothing, proc_gpus=gpus) is False
    assert deps.cuda_available(nvidia_smi=None, proc_gpus=tmp_path / "absent") is False
    (gpus / "0000:01:00.0").mkdir()
    assert deps.cuda_available(nvidia_smi=nothing, proc_gpus=gpus) is True
    assert deps.cuda_available(override=False, nvidia_smi=listing, proc_gpus=gpus) is False
    assert deps.cuda_available(override=True, nvidia_smi=None, proc_gpus=tmp_path / "absent") is True


def test_gpu_machines_get_onnxruntime_gpu():
    report = deps.DependencyReport([deps.DependencyState(r, deps.MISSING) for r in deps.REQUIREMENTS if r.required])
    assert deps.pip_specs(report.to_install, cuda=False) == [
        "onnxruntime>=1.14,<=1.32.0", "tokenizers>=0.13,<=0.23.3", "shapely>=1.8,<=2.2.0"]
    assert deps.pip_specs(report.to_install, cuda=True)[0] == "onnxruntime-gpu>=1.14,<=1.32.0"
    assert [s.requirement.pip_name for s in report.not_installable] == ["numpy", None]


def test_pip_command():
    command = deps.pip_command("/usr/bin/python3.11", Path("/p/rs_vlm_deps/py3.11"), "/tmp/c.txt",
                               ["onnxruntime>=1.14,<=1.32.0", "shapely>=1.8,<=2.2.0"])
    assert command == ["/usr/bin/python3.11", "-m", "pip", "install", "--target", "/p/rs_vlm_deps/py3.11",
                       "--constraint", "/tmp/c.txt", "--only-binary", ":all:", "--no-warn-script-location",
                       "--disable-pip-version-check",
                       "--progress-bar", "off", "--no-input", "--upgrade",
                       "onnxruntime>=1.14,<=1.32.0", "shapely>=1.8,<=2.2.0"]


def test_find_python_finds_an_interpreter_of_this_version():
    python = deps.find_python()
    assert python is not None
    done = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert done.stdout.strip() == str(tuple(sys.version_info[:2]))


# pip's failures, recognised from recorded output ----------------------------------------------

@pytest.mark.parametrize("sample, expected", [
    ("nopip.txt", r"^pip is not available for /opt/qgis/python.*install pip for Python 3\.\d+ .*python3-pip"),
    ("conflict.txt", r"^The packages RS-VLM needs conflict with versions QGIS already has \(The user requested "
                     r"numpy==1\.26\.4; The user requested \(constraint\) numpy==1\.24\.2\)"),
    ("conflict_shapely_numpy.txt", r"conflict .*shapely 2\.2\.0 depends on numpy>=1\.26; .*numpy==1\.24\.2\)"),
    ("network.txt", r"^pip could not reach the package index .*connect to the internet"),
    ("network_dns.txt", r"^pip could not reach the package index"),
    ("no_matching.txt", r"^No release of onnxruntime-gpu==0\.0\.1 fits Python 3\.\d+ on "),
])
def test_pip_failures_become_sentences(sample, expected):
    lines = (PIP_OUTPUT / sample).read_text(encoding="utf-8").splitlines()
    message = deps.explain_pip_failure(lines, 1, "/opt/qgis/python", "/p/rs_vlm_deps/py3.11")
    assert re.search(expected, message), message
    assert message.endswith(".")


def test_unknown_failures_quote_pips_last_error():
    message = deps.explain_pip_failure(["Collecting x", "ERROR: something odd happened", "trailing"], 2, "py", "/t")
    assert message.startswith("pip failed (exit code 2): ERROR: something odd happened")
    none_found = deps.explain_pip_failure(["ERROR: Could not find a version that satisfies the requirement zz "
                                           "(from versions: none)", "ERROR: No matching distribution found for zz"],
                                          1, "py", "/t")
    assert "found no release of zz at all" in none_found


def test_install_can_be_cancelled(tmp_path):
    seen = []
    result = deps.install(["tqdm==4.70.1"], tmp_path / "site", constraints={}, python=sys.executable,
                          on_line=seen.append, is_canceled=lambda: True)
    assert result.canceled and not result.ok
    assert "cancelled" in result.message


def test_install_without_an_interpreter_says_what_to_do(tmp_path):
    result = deps.install(["tqdm==4.70.1"], tmp_path, constraints={}, python=str(tmp_path / "no-python"))
    assert not result.ok and "could not be started" in result.message
