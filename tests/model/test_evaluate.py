"""The eval command on tiny folders laid out like the shared data (made here, seeded)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from rs_vlm_train.evaluate import main

COLOURS = {"water_body": (20, 60, 140), "bare_soil": (170, 130, 90), "grass_field": (60, 150, 50)}


def _image(path, colour, rng):
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_eval_captions_and_scenes(tmp_path, bundle_dir):
    rng = np.random.default_rng(0)
    images = []
    for name, colour in COLOURS.items():
        for k in range(2):
            rel = f"images/{name}/{name}{k}.png"
            _image(tmp_path / "caps" / rel, colour, rng)
            _image(tmp_path / "scenes" / name / f"{k}.png", colour, rng)
            words = name.replace("_", " ")
            images.append({"filename": rel, "class": name, "split": "val",
                           "sentences": [f"there is {words} .", f"a {words} area .", f"it is {words} ."]})
    (tmp_path / "caps" / "captions.json").write_text(json.dumps({"images": images}))
    out = tmp_path / "out"
    _objects(tmp_path / "objects", rng)
    assert main(["--model", str(bundle_dir), "--captions", str(tmp_path / "caps"), "--split", "val",
                 "--scenes", str(tmp_path / "scenes"), "--objects", str(tmp_path / "objects"), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    caps = report["captions"]
    assert (caps["images"], caps["captions"]) == (6, 18)
    assert caps["t2i_r10"] == 100.0  # only 6 images: every image ranks within 10
    assert caps["i2t_r1"] <= caps["i2t_r5"] <= caps["i2t_r10"] and 0 <= caps["mR"] <= 100
    scenes = report["scenes"]
    assert scenes["images"] == 6 and scenes["classes"] == 3 and set(scenes["per_class"]) == set(COLOURS)
    assert 0.0 <= scenes["accuracy"] <= 1.0
    captioning = caps["captioning"]
    assert set(captioning) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert all(0.0 <= v for v in captioning.values()) and captioning["BLEU-1"] <= 1.0
    objects = report["objects"]
    assert (objects["boxes"], objects["images"], objects["queries"]) == (6, 3, 2)
    assert 0.0 <= objects["mAP"] <= 100.0 and objects["hit@10"] == 100.0  # 6 boxes: every class is in the 10 best
    assert set(report["routing"]) == {"global token", "region tokens", "object tokens"}
    md = (out / "eval.md").read_text()
    for title in ("Zero-shot scenes", "Captioning", "SAA (Lu 2020)", "RemoteCLIP", "Text-to-box", "Expert routing"):
        assert title in md


def _objects(folder, rng):
    """Three images with a bright square (class 3, storage tank) and a dark bar (class 2, ship) each."""
    (folder / "images").mkdir(parents=True)
    (folder / "boxes").mkdir()
    for k in range(1, 4):
        pixels = np.clip(120 + rng.normal(0, 10, (300, 400, 3)), 0, 255).astype(np.uint8)
        pixels[50:90, 60:100] = 240
        pixels[200:215, 250:330] = 20
        Image.fromarray(pixels).save(folder / "images" / f"{k:03d}.jpg")
        (folder / "boxes" / f"{k:03d}.txt").write_text("(60,50),(100,90),3\n(250,200),(330,215),2\n")


def test_eval_on_a_data_folder_reports_knowledge_truthfulness_and_the_leave_out_table(tmp_path, bundle_dir):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_training_data", Path(__file__).resolve().parents[1] / "data" / "make_training_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.make(tmp_path / "data")
    missing = tmp_path / "none.json"
    out = tmp_path / "out"
    assert main(["--model", str(bundle_dir), "--data", str(data), "--no-meteor", "--out", str(out),
                 "--ablations", str(missing), "--open-vocabulary", str(missing)]) == 0
    scenes = json.loads((out / "eval.json").read_text())["scenes"]
    assert 0.0 <= scenes["accuracy_knowledge"] <= 1.0 and set(scenes["per_class_knowledge"]) == set(scenes["per_class"])
    truth = scenes["truthfulness"]
    assert truth["images"] == scenes["images"] and 0.0 <= truth["truthful"] <= 100.0
    assert set(truth["per_class"]) <= set(scenes["per_class"]) and truth["examples"]
    text = (out / "eval.md").read_text()
    assert "with query-time knowledge" in text and "Caption truthfulness" in text
