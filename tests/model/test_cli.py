"""The command line over raster files: outputs, messages and exit codes."""

from __future__ import annotations

import json
import re

import pytest
import subprocess
import sys
from pathlib import Path

from osgeo import ogr

from rs_vlm_plugin.core.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _layers(path: Path) -> dict[str, int]:
    ds = ogr.Open(str(path))
    try:
        return {ds.GetLayer(i).GetName(): ds.GetLayer(i).GetFeatureCount() for i in range(ds.GetLayerCount())}
    finally:
        ds = None


def test_caption_writes_three_layers(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "caps.gpkg"
    assert main(["caption", str(generated["scene"]), "-o", str(out), "--max-tiles", "8", "-q",
                 "--model", str(bundle_dir)]) == 0
    layers = _layers(out)
    assert layers["captions_global"] == 1 and layers["captions_region"] == 4
    assert 1 <= layers["captions_object"] <= 8
    assert "Wrote" in capsys.readouterr().out


def test_search_json_summary(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "hits.gpkg"
    assert main(["search", str(generated["scene"]), "a road", "-o", str(out), "--top-k", "3", "-q", "--json",
                 "--model", str(bundle_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in summary["hits"]] == [1, 2, 3]
    layers = _layers(out)  # the outlines layer is written beside the hits (empty when nothing is relevant enough)
    assert layers["search_hits"] == 3 and set(layers) <= {"search_hits", "search_outlines"}
    plain = tmp_path / "plain.gpkg"
    assert main(["search", str(generated["scene"]), "a road", "-o", str(plain), "--top-k", "3", "-q", "--json",
                 "--no-outlines", "--model", str(bundle_dir)]) == 0
    assert [h["rank"] for h in json.loads(capsys.readouterr().out)["hits"]] == [1, 2, 3]
    assert _layers(plain) == {"search_hits": 3}


def test_missing_file_is_a_sentence_and_writes_nothing(bundle_dir, tmp_path, capsys):
    out = tmp_path / "never.gpkg"
    assert main(["caption", str(tmp_path / "nope.tif"), "-o", str(out), "-q", "--model", str(bundle_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "nope.tif" in err
    assert not out.exists()


def test_not_a_raster_is_a_sentence(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "never.gpkg"
    assert main(["caption", str(generated["not_a_raster"]), "-o", str(out), "-q", "--model", str(bundle_dir)]) == 1
    assert "Error: " in capsys.readouterr().err
    assert not out.exists()


def test_empty_query_exit_code(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "never.gpkg"
    assert main(["search", str(generated["scene"]), " ", "-o", str(out), "-q", "--model", str(bundle_dir)]) == 1
    assert "search text is empty" in capsys.readouterr().err
    assert not out.exists()


def _caption_command(generated, bundle_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rs_vlm_plugin", "caption", str(generated["scene"]), "-o", str(out),
            "--max-tiles", "4", "--model", str(bundle_dir), *extra]


def test_python_dash_m_entry_point_writes_plain_progress_lines_to_a_log(bundle_dir, generated, tmp_path):
    out, log = tmp_path / "m.gpkg", tmp_path / "stderr.log"
    with open(log, "w") as stderr:  # stderr redirected to a file: no bar, a line per 10 % or 30 s
        proc = subprocess.run(_caption_command(generated, bundle_dir, out), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=stderr, text=True)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert out.exists()
    assert "\r" not in text and "|" not in text
    lines = [line for line in text.splitlines() if re.search(r": \d+ % after ", line)]
    assert 2 <= len(lines) <= 11, text
    assert lines[-1].split(": ")[-1].startswith("100 % after")
    assert all(re.search(r"\d+ % after \d+ (s|min)", line) for line in lines)


def test_a_terminal_gets_the_bar(bundle_dir, generated, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    out = tmp_path / "tty.gpkg"
    leader, follower = pty.openpty()  # a real terminal for stderr, 100 columns wide
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def pump() -> None:  # read while the command runs, so that it never waits on a full terminal
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        proc = subprocess.run(_caption_command(generated, bundle_dir, out), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=follower, text=True)
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "\r" in text and "100%|" in text  # the bar redraws in place
    assert " % after " not in text


@pytest.mark.parametrize("flag", ["--json", "-q"])
def test_json_and_quiet_keep_stderr_clean(bundle_dir, generated, tmp_path, flag):
    out = tmp_path / "clean.gpkg"
    proc = subprocess.run(_caption_command(generated, bundle_dir, out, flag), cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    if flag == "--json":
        assert json.loads(proc.stdout)["warnings"] == []


def test_pixel_budget(bundle_dir, generated, tmp_path):
    out = tmp_path / "px.gpkg"
    assert main(["caption", str(generated["scene"]), "-o", str(out), "--max-pixels", str(2 * 224 * 224), "-q",
                 "--model", str(bundle_dir)]) == 0
    assert _layers(out)["captions_object"] == 1  # two tiles do not allow a split into four


def test_classify_and_ask_subcommands(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "classes.gpkg"
    assert main(["classify", str(generated["scene"]), "forest, water, buildings", "-o", str(out), "--max-tiles", "8",
                 "-q", "--json", "--model", str(bundle_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scene"][0][0] in {"forest", "water", "buildings"}
    assert sum(summary["shares"].values()) == pytest.approx(1.0)
    assert _layers(out) == {"classes": summary["records"]}
    out = tmp_path / "answer.gpkg"
    assert main(["ask", str(generated["scene"]), "is there a river?", "-o", str(out), "--max-tiles", "8", "-q",
                 "--model", str(bundle_dir)]) == 0
    text = capsys.readouterr().out
    assert "Q: is there a river?" in text and ("A: Yes" in text or "A: No" in text)
    assert _layers(out)["evidence"] >= 1


def test_ask_what_it_cannot_answer_is_a_sentence(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "answer.gpkg"
    assert main(["ask", str(generated["scene"]), "tell me a story", "-o", str(out), "-q",
                 "--model", str(bundle_dir)]) == 1
    assert "I do not understand" in capsys.readouterr().err
    assert not out.exists()


def test_classify_and_ask_agree_on_the_tiles(bundle_dir, generated, tmp_path, capsys):
    """The whole view's class is the tiles' largest share, and Ask's share of it is Classify's."""
    common = [str(generated["scene"]), "--max-tiles", "16", "-q", "--json", "--model", str(bundle_dir)]
    assert main(["classify", *common[:1], "-o", str(tmp_path / "c.gpkg"), *common[1:]]) == 0
    classified = json.loads(capsys.readouterr().out)
    top, share = max(classified["shares"].items(), key=lambda kv: kv[1])
    assert classified["scene"][0][0] == top and classified["scene"][0][1] == pytest.approx(share)
    assert main(["ask", common[0], f"how much of the area is {top}?", "-o", str(tmp_path / "a.gpkg"),
                 *common[1:]]) == 0
    answered = json.loads(capsys.readouterr().out)
    assert answered["value"] <= share + 1e-9  # counted only where it also passes the presence threshold
    assert answered["tiles"] == classified["tiles"]  # the same plan, not one guided by the subject


def test_an_unfamiliar_query_is_told_on_stderr_and_in_the_json(bundle_dir, generated, tmp_path, capsys):
    odd = "a violin concerto in a minor key"
    out = tmp_path / "odd.gpkg"
    assert main(["search", str(generated["scene"]), odd, "-o", str(out), "--top-k", "3", "-q",
                 "--model", str(bundle_dir)]) == 0
    assert f"Warning: RS-VLM has seen little like '{odd}'" in capsys.readouterr().err
    assert main(["search", str(generated["scene"]), odd, "-o", str(tmp_path / "odd_json.gpkg"), "--top-k", "3", "--json",
                 "--model", str(bundle_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert any(w.startswith(f"RS-VLM has seen little like '{odd}'") for w in json.loads(captured.out)["warnings"])
