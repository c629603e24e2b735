"""The image graph's object head: the rewritten first layer (no 1392-wide cell map) equals the plain one,
and the locate stage's cells and loss do what the outlines need (background low, classes high)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rs_vlm_plugin.modeling.rsvlm import ImageModel, ModelConfig, build_backbone  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig()
    trunk, net = build_backbone(config)
    kb = torch.nn.functional.normalize(torch.randn(40, config.embed_dim), dim=-1)
    image = ImageModel(config, net, kb, torch.randint(0, 3, (40,))).eval()
    with torch.no_grad():  # a trained-looking head: gamma and beta away from 1 and 0
        for p in image.object_head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return trunk.eval(), image


@pytest.mark.parametrize("seed", [0, 1])
def test_rewritten_object_head_equals_layer_norm_then_fc1(model, seed):
    trunk, image = model
    torch.manual_seed(seed)
    with torch.no_grad():
        fine, mid = trunk(torch.rand(3, 3, 224, 224) * (1 + 4 * seed))
        feats = image.features(fine, mid)
        cells = image.cells(feats)
        plain = image.object_head.fc1(image.object_head.norm(cells))
        rewritten = image.object_hidden(feats)
        assert rewritten.shape == plain.shape == (3, 196, image.config.head_hidden)
        assert torch.allclose(rewritten, plain, atol=2e-5, rtol=1e-4)
        tokens, _ = image.object_tokens(cells)
        _, _, objects, _ = image(fine, mid)  # the exported forward uses the rewrite
        assert torch.allclose(objects, tokens, atol=1e-5)
        image.freeze_object_fold()  # as the export does: the folded matrices computed once
        try:
            _, _, frozen, _ = image(fine, mid)
        finally:
            image._object_fold = None
        assert torch.equal(frozen, objects)


def test_locate_cells_split_object_cells_from_background_away_from_every_box():
    from rs_vlm_train.train import locate_cells

    rng = np.random.default_rng(0)
    objects = [("airplane", [0.0, 0.0, 0.5, 0.5]), ("vehicle", [0.75, 0.75, 0.8, 0.8])]
    pos, cls, bg = locate_cells(objects, 14, rng, per_crop=200)
    grid = np.zeros((14, 14), int)
    grid.flat[pos] = 1
    assert grid[:7, :7].sum() == 49 and grid.sum() == 49  # the small box covers no cell by half
    assert set(cls) == {0}  # VHR10_CLASSES[0] is the airplane
    rows, cols = np.divmod(np.asarray(bg), 14)
    assert not ((rows <= 7) & (cols <= 7)).any()  # not under the airplane nor next to it
    assert not ((rows >= 9) & (rows <= 12) & (cols >= 9) & (cols <= 12)).any()  # nor near the vehicle
    assert len(bg) == 196 - 64 - 16  # every other cell


def test_locate_loss_is_low_when_background_cells_sit_on_background_texts():
    from rs_vlm_train.train import locate_loss

    classes = torch.nn.functional.normalize(torch.eye(4)[:2], dim=-1)
    background = torch.nn.functional.normalize(torch.eye(4)[2:], dim=-1)
    right = torch.stack([classes[1], background[0], background[1]])
    wrong = torch.stack([background[0], classes[0], classes[1]])
    labels, is_object = torch.tensor([1, 0, 0]), torch.tensor([True, False, False])
    scale = torch.tensor(20.0)
    assert float(locate_loss(right, labels, is_object, classes, background, scale)) < 0.01
    assert float(locate_loss(wrong, labels, is_object, classes, background, scale)) > 10
