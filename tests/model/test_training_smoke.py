"""The whole training path on a tiny generated data folder: features, alignment with the three
tiers, decoder pre-training and fine-tuning, calibration, weights, export, runtime, resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (installed by build.py setup)")
pytest.importorskip("pycocoevalcap", reason="training reports caption metrics with pycocoevalcap")


def _make_data(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_training_data",
                                                  Path(__file__).resolve().parents[1] / "data" / "make_training_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(root)


def test_train_export_and_run_on_tiny_data(tmp_path, capsys):
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.modeling.export import export_bundle, load_weights
    from rs_vlm_train.train import main

    data = _make_data(tmp_path / "data")
    weights, cache, report = tmp_path / "w.npz", tmp_path / "cache", tmp_path / "report"
    args = ["--data", str(data), "--out", str(weights), "--cache", str(cache), "--report", str(report),
            "--steps", "3", "--pretrain-epochs", "1", "--decoder-epochs", "1", "--decoder-views", "2",
            "--mosaics", "6", "--leave-out", "--locate-steps", "2"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "[final_3] step 3/3" in log and "routing" in log and "[decoder-pretrain] epoch 1/1" in log
    assert "[final_3 locate] step 2/2 locate" in log and (cache / "align_final_3_locate2.pt").exists()
    # The leave-classes-out runs: issue 3's recipe and the open-vocabulary one, without the drawn classes.
    assert "[lco_v2_3] step 3/3" in log and "[lco_v4_3] step 3/3" in log
    lco = json.loads((report / "open_vocabulary.json").read_text())
    assert set(lco["leave_out"]["ucm"]) == {"golfcourse", "harbor"} and set(lco["leave_out"]["resisc"]) == {"desert", "lake"}
    # AID's own classes (those no UCM / RESISC class shares) are drawn too; forest stays seen.
    assert set(lco["leave_out"]["aid"]) == {"bridge", "church"} and "forest" not in lco["leave_out"]["groups"]
    for row in lco["rows"].values():
        gz = row["gzsl"]["ucm_val"]
        assert gz["unseen_classes"] == ["golfcourse", "harbor"] and set(gz["per_class"]) >= {"golfcourse", "forest"}
        assert 0 <= row["truthfulness"]["resisc_held_back"]["truthful"] <= 100
        assert row["truthfulness"]["unseen"]["images"] > 0
    assert lco["rows"]["lco v2"]["recipe"]["geometry"] == 0 and lco["rows"]["lco v4"]["recipe"]["geometry"] > 0
    v4 = lco["rows"]["lco v4"]
    assert v4["recipe"]["aid"] and v4["recipe"]["open_blocks"] == 2 and 0 <= v4["aid_accuracy"] <= 100
    assert v4["gzsl"]["aid_val"]["unseen_classes"] == ["bridge", "church"]
    assert 0 <= v4["truthfulness"]["aid_val"]["truthful"] <= 100
    for row in lco["rows"].values():  # calibrated stacking: gamma chosen on UCM val, measured on both splits
        sb = row["seen_bias"]
        assert sb["gamma"] in sb["ucm_val_H_by_gamma"] or str(sb["gamma"]) in sb["ucm_val_H_by_gamma"]
        assert "golf course" not in sb["trained_classes"] and "forest" in sb["trained_classes"]
        assert set(row["gzsl_stacked"]) == {"ucm_val", "resisc_held_back", "aid_val", "mean"}
    arrays, meta, vocab = load_weights(weights)
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and "forest" in vocab
    assert {"image.object_head.fc1.weight", "image.fusion.router.weight", "decoder.embed.weight",
            "stats.image_mean"} <= set(arrays)
    assert all(a.dtype == np.float16 for k, a in arrays.items() if k.endswith("fc1.weight"))
    val = meta["val"]
    assert set(val["captioning"]) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert 0.0 <= val["qa"]["threshold"] <= 1.0 and val["objects"]["boxes"] >= 1
    assert meta["query_knowledge"]["beta"] > 0 and meta["recipe"]["name"] == "v4"
    assert meta["config"]["fine_blocks"] == 2 and "image.top.blocks.0._project_conv.weight" in arrays
    assert len(val["routing"]) == 3 and all(len(w) == 3 for w in val["routing"])
    train_report = json.loads((report / "train.json").read_text())
    assert train_report["final"]["retrieval"]["mR"] >= 0

    # A second run finds every stage done and resumes without training again.
    assert main(args) == 0
    assert "step 1/3" not in capsys.readouterr().out

    manifest = export_bundle(tmp_path / "bundle", weights)
    assert set(manifest["parity_max_abs_diff"]) == {"image_encoder", "text_encoder", "decoder"}
    assert manifest["qa"]["threshold"] == pytest.approx(val["qa"]["threshold"])
    assert manifest["query_knowledge"] == meta["query_knowledge"]
    # The final model's stacking margin is the leave-classes-out run's, against every trained class.
    assert meta["seen_bias"]["gamma"] == lco["rows"]["lco v4"]["seen_bias"]["gamma"]
    assert "golf course" in meta["seen_bias"]["trained_classes"] and manifest["seen_bias"] == meta["seen_bias"]
    bundle = ModelBundle.load(tmp_path / "bundle")
    tiles = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    captions = bundle.caption(bundle.encode_tiers(tiles))
    assert len(captions) == 2 and all(c.endswith(".") or c == "" for c in captions)


def test_box_head_trains_exports_and_answers(tmp_path, bundle_dir, capsys):
    """rs_vlm_train.boxes on the tiny VHR-10 folder, its head added to a copy of the bundle, then a search."""
    import shutil

    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.search import search
    from rs_vlm_plugin.core.locate.boxes import BoxConfig
    from rs_vlm_plugin.core.raster import open_raster
    from rs_vlm_plugin.modeling.boxnet import add_boxes_to_bundle
    from rs_vlm_train.boxes import main

    data = _make_data(tmp_path / "data")
    weights = tmp_path / "boxes.npz"
    assert main(["--data", str(data), "--out", str(weights), "--epochs", "2", "--cache", str(tmp_path / "cache"),
                 "--bundle", str(bundle_dir)]) == 0
    log = capsys.readouterr().out
    assert "epoch 2/2" in log and "val mAP50 of the trained classes" in log
    report = json.loads(weights.with_suffix(".json").read_text())
    assert set(report["ap50"]) >= {"storage tank", "ship"} and report["best_epoch"] in (1, 2)
    assert main(["--data", str(data), "--out", str(tmp_path / "measured.npz"), "--weights", str(weights),
                 "--cache", str(tmp_path / "cache"), "--bundle", str(bundle_dir)]) == 0
    measured = json.loads((tmp_path / "measured.json").read_text())
    assert measured["ap50"] == report["ap50"] and measured["best_epoch"] == report["best_epoch"]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    entry = add_boxes_to_bundle(copy, weights)
    assert entry["parity_max_abs_diff"] <= 1e-3
    image = next((data / "vhr10" / "images").glob("*.jpg"))
    with open_raster(image) as source:
        result = search(source, ModelBundle.load(copy), "storage tanks",
                        config=JobConfig(answers="boxes", boxes=BoxConfig(min_score=0.0)))
    assert result.outlines is not None and all(o.found_by == "boxes" for o in result.outlines)


def test_anchored_recipe_needs_a_teacher_and_keeps_fine_views_near_it(tmp_path, capsys):
    """Recipe v5: zoomed-in UCM views (``ucm_zoom``) held near a teacher's global and region tokens."""
    from rs_vlm_plugin.modeling.rsvlm import ModelConfig
    from rs_vlm_train import features as feat
    from rs_vlm_train.align import anchor_loss, anchor_teacher
    from rs_vlm_train.recipe import DEFAULT_OUT, KNOWLEDGE_BASE
    from rs_vlm_train.train import main

    data = _make_data(tmp_path / "data")
    weights, cache, report = tmp_path / "w.npz", tmp_path / "cache", tmp_path / "report"
    args = ["--data", str(data), "--out", str(weights), "--cache", str(cache), "--report", str(report),
            "--steps", "3", "--pretrain-epochs", "1", "--decoder-epochs", "1", "--decoder-views", "2",
            "--mosaics", "6", "--recipe", "v5"]
    with pytest.raises(SystemExit) as refused:  # no teacher: refused before any feature is computed
        main(args)
    assert refused.value.code == 2 and "--anchor-weights" in capsys.readouterr().err
    assert not cache.exists()
    teacher_file = tmp_path / "teacher.npz"
    teacher_file.write_bytes(DEFAULT_OUT.read_bytes())
    assert main(args + ["--anchor-weights", str(teacher_file)]) == 0
    log = capsys.readouterr().out
    assert "[final_3] step 3/3" in log and " anchor " in log
    from rs_vlm_plugin.modeling.export import load_weights

    _, meta, _ = load_weights(weights)
    import hashlib

    assert meta["recipe"]["name"] == "v5" and meta["recipe"]["anchor"] > 0
    assert meta["recipe"]["anchor_sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()

    # The zoomed-in views: 4 per UCM train image, finer than the image (no view is the whole image).
    zoom = json.loads((cache / "ucm_zoom.json").read_text())
    assert zoom["fine_shape"][:2] == [len(zoom["files"]), feat.ZOOM_VIEWS]
    from PIL import Image

    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8), (256, 256))
    image = Image.fromarray(np.stack([ramp, ramp.T, np.zeros_like(ramp)], -1))  # red across, green down
    views = feat.zoomed_in_views(image, 224, np.random.default_rng(0), 8)
    spans = [[int(v[..., c].max()) - int(v[..., c].min()) for c in (0, 1)] for v in views]
    assert all(v.shape == (224, 224, 3) for v in views) and max(max(s) for s in spans) <= 130
    assert min(min(s) for s in spans) >= 70  # at least 2/7 of the side

    # The loss: zero against itself, positive against another model; a file without heads is refused.
    from rs_vlm_train.texts import Texts

    kb = json.loads(KNOWLEDGE_BASE.read_text(encoding="utf-8"))
    config = ModelConfig(fine_blocks=2)
    sets = feat.build_all(data, cache, ModelConfig(fine_blocks=feat.CACHED_FINE_BLOCKS), n_mosaics=6)
    texts = Texts(sets, kb, cache)
    teacher = anchor_teacher(config, texts, kb, str(teacher_file))
    fine, mid = feat._run_blocks(cache, config, "ucm_zoom", sets["ucm_zoom"], 2).take(np.arange(2), np.zeros(2, int))
    with torch.no_grad():
        assert float(anchor_loss(teacher, teacher, fine, mid)) == pytest.approx(0.0, abs=1e-5)
        other = anchor_teacher(config, texts, kb, str(weights))
        assert float(anchor_loss(other, teacher, fine, mid)) > 0.01
    empty = tmp_path / "empty.npz"
    np.savez(empty, meta_json=np.asarray("{}"))
    with pytest.raises(ValueError, match="tier heads"):
        anchor_teacher(config, texts, kb, str(empty))
