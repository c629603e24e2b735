"""The image graph's rewrites (modeling/onnx_passes.py) change its speed, never its results:
Pad folded into Conv, the object tier behind a gate; and the shipped bundle's graph with its
gate off gives the same global and region tokens as with it on."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the graph passes need onnx (installed by build.py setup)")
torch = pytest.importorskip("torch", reason="the toy graphs are exported from torch")

import onnxruntime as ort  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from rs_vlm_plugin.modeling.onnx_passes import (OBJECTS_GATE, fold_pads_into_convs, gate_object_tier,  # noqa: E402
                                                hoist_branch_constants)

OUTPUTS = ["embedding", "regions", "objects", "routing"]


class ToyTower(nn.Module):
    """A tiny image tower shaped like the real one: SAME-padded convs (one asymmetric), a shared
    trunk, global and region tokens, object tokens from every cell, routing of all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.cells = nn.Linear(8, 16)
        self.objects = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.router = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu6(self.stem(F.pad(x, (0, 1, 0, 1))))  # TensorFlow SAME at stride 2: pad right and bottom
        x = F.relu6(self.dw(F.pad(x, (1, 1, 1, 1))))
        cells = self.cells(x.flatten(2).transpose(1, 2))  # (N, 64, 16)
        g = F.normalize(cells.mean(1), dim=-1)
        r = F.normalize(torch.stack([cells[:, :32].mean(1), cells[:, 32:].mean(1)], 1), dim=-1)
        o = F.normalize(self.objects(cells), dim=-1)
        routing = torch.cat([self.router(g).softmax(-1).unsqueeze(1), self.router(r).softmax(-1),
                             self.router(o).softmax(-1)], 1)
        return g, r, o, routing


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    torch.manual_seed(0)
    model = ToyTower().eval()
    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    torch.onnx.export(model, (torch.zeros(2, 3, 16, 16),), str(path), input_names=["images"], output_names=OUTPUTS,
                      dynamic_axes={"images": {0: "n"}} | {k: {0: "n"} for k in OUTPUTS}, opset_version=17,
                      dynamo=False)
    return model, path


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(OUTPUTS, feeds)


def test_pads_fold_into_convs_with_the_same_outputs(toy, tmp_path):
    model, path = toy
    graph = onnx.load(str(path))
    assert sum(n.op_type == "Pad" for n in graph.graph.node) == 2
    assert fold_pads_into_convs(graph) == 2
    assert not any(n.op_type == "Pad" for n in graph.graph.node)
    stem = next(n for n in graph.graph.node if n.op_type == "Conv")
    assert next(list(a.ints) for a in stem.attribute if a.name == "pads") == [0, 0, 1, 1]  # asymmetric kept
    folded = tmp_path / "folded.onnx"
    onnx.save(graph, str(folded))
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    for a, b in zip(_run(path, {"images": x}), _run(folded, {"images": x})):
        np.testing.assert_array_equal(a, b)


def test_gate_skips_the_object_tier_and_keeps_the_rest(toy, tmp_path):
    model, path = toy
    graph = onnx.load(str(path))
    fold_pads_into_convs(graph)
    moved = gate_object_tier(graph)
    assert moved > 0 and graph.graph.node[-1].op_type == "If"
    gated = tmp_path / "gated.onnx"
    onnx.save(graph, str(gated))
    x = np.random.default_rng(2).normal(size=(5, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    on = _run(gated, {"images": x, OBJECTS_GATE: np.array(True)})
    for a, b in zip(ref, on):
        np.testing.assert_allclose(a, b, atol=1e-5)
    off = _run(gated, {"images": x, OBJECTS_GATE: np.array(False)})
    assert off[2].shape == (5, 0, 16) and off[3].shape == (5, 3, 3)  # no objects; global + 2 region weights
    np.testing.assert_array_equal(off[0], on[0])
    np.testing.assert_array_equal(off[1], on[1])
    np.testing.assert_array_equal(off[3], on[3][:, :3])


def test_large_branch_constants_move_to_the_initializers_with_the_same_outputs(toy, tmp_path):
    _, path = toy
    model = onnx.load(str(path))
    gate_object_tier(model)
    # a constant inside the branch, as the export leaves the object head's folded matrices
    branch = next(a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    linear = next(n for n in branch.node if n.op_type == "MatMul")
    weight = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    branch.node.insert(0, onnx.helper.make_node("Constant", [], ["extra_w"],
                                                value=onnx.numpy_helper.from_array(weight)))
    linear.input[1] = "extra_w"
    feeds = {"images": np.random.default_rng(1).random((3, 3, 16, 16), np.float32), OBJECTS_GATE: np.array(True)}
    onnx.save(model, str(tmp_path / "with_constant.onnx"))
    before = _run(tmp_path / "with_constant.onnx", feeds)
    assert hoist_branch_constants(model, min_elements=64) >= 1
    assert not [n for n in branch.node if n.op_type == "Constant" and np.prod(n.attribute[0].t.dims) >= 64]
    assert "extra_w" in {i.name for i in model.graph.initializer}
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "hoisted.onnx"))
    for a, b in zip(before, _run(tmp_path / "hoisted.onnx", feeds)):
        np.testing.assert_array_equal(a, b)


def test_shipped_graph_is_gated_and_its_tokens_do_not_depend_on_the_gate(bundle):
    graph = bundle.manifest["image_encoder"].get("graph_passes", {})
    assert graph.get("constants_hoisted", 0) >= 2  # the object head's folded matrices (and the knowledge base)
    assert bundle.object_gate == OBJECTS_GATE
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (5, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    every = bundle.encode_tiers(tiles)
    some = bundle.encode_tiers(tiles, tiers=("embedding", "regions"))
    assert set(some) == {"embedding", "regions"}
    np.testing.assert_array_equal(some["embedding"], every["embedding"])
    np.testing.assert_array_equal(some["regions"], every["regions"])
    assert every["objects"].shape == (5, 196, bundle.embed_dim) and every["routing"].shape == (5, 3, 3)
    assert set(bundle.encode_tiers(tiles[:0], tiers=("embedding",))) == {"embedding"}


def test_int8_copy_of_the_gated_graph_keeps_rankings_on_real_tiles(bundle_dir, demo_scene, tmp_path):
    """int8 weights (dynamic quantisation, which reaches into the gate's branch), then float16
    storage of the rest (whose nodes must be ordered again for the branch), stay close to float32
    on tiles of a real scene; the figures are printed for the record."""
    from rs_vlm_plugin.modeling.quantize import raster_tiles, shrink_bundle

    tiles = raster_tiles(demo_scene, 224, grid=3)
    report = shrink_bundle(bundle_dir, tmp_path / "int8", {"image_encoder": "int8+fp16"}, tiles)
    parity = report["parity"]
    assert parity["image_objects"]["max_abs_diff"] > 0  # the object tier was quantised too
    print({k: parity[k] for k in ("image_embedding", "image_regions", "image_objects", "tile_to_text_top1_agreement",
                                  "captions_identical")})
    assert parity["image_embedding"]["min_cosine"] > 0.97
    assert parity["image_regions"]["min_cosine"] > 0.95 and parity["image_objects"]["min_cosine"] > 0.9
    assert parity["tile_to_text_top1_agreement"] >= 0.75
