"""Shrinking a bundle (modeling/quantize.py): float16 storage halves the ONNX files and stays at
parity with the float32 bundle; the result is a bundle the plugin loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="shrinking needs onnx (installed by build.py setup)")


def test_fp16_storage_keeps_a_graph_exact_to_float16_rounding(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rs_vlm_plugin.modeling.quantize import fp16_storage

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 32)).astype(np.float32)
    bias = rng.normal(size=(32,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = fp16_storage(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert kinds == {"w__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}  # the small bias stays float32
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = rng.normal(size=(5, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ weight.astype(np.float16).astype(np.float32) + bias, rtol=1e-5, atol=1e-5)


def test_shrunk_bundle_is_half_the_size_and_at_parity(bundle_dir, tmp_path):
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.modeling.quantize import shrink_bundle, synthetic_tiles

    out = tmp_path / "rs-vlm-lite0"
    report = shrink_bundle(bundle_dir, out, {"image_encoder": "fp16", "text_encoder": "fp16", "decoder": "fp16"},
                           synthetic_tiles(224, count=6))
    for file in ("image_encoder.onnx", "text_encoder.onnx", "decoder.onnx"):
        assert report["sizes"][file]["after"] < 0.55 * report["sizes"][file]["before"], file
    parity = report["parity"]
    assert parity["text_embedding"]["min_cosine"] > 0.9999
    assert parity["image_embedding"]["min_cosine"] > 0.999 and parity["image_objects"]["min_cosine"] > 0.99
    assert parity["similarity_max_abs_diff"] < 0.02
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["formats"]["text_encoder"] == "fp16"
    assert not list(tmp_path.glob(".shrinking-*"))
    shrunk = ModelBundle.load(out)
    assert shrunk.encode_texts(["a road"]).shape == (1, shrunk.embed_dim)
    with pytest.raises(FileExistsError):
        shrink_bundle(bundle_dir, out, {})
