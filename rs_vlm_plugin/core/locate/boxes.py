"""Object boxes (issue 22): the box head on the finest tiles of a query's encoding, one polygon per object.

    the encoding's finest view of each part of the extent, down to ``zoom_out`` x coarser than its
    finest tiles (native ones where text-guided DRIS sent the budget, and the 2x coarser tiles over
    the ground no native tile covers: the head learnt objects at scales 1 to 0.5)
      -> each read again with a margin (``window`` px: the tile and ``margin`` px of its neighbours
         on every side, at the tile's own pixel size), so an object cut by a seam is seen whole
      -> the head's peaks: centre, size, embedding (:mod:`rs_vlm_plugin.modeling.boxnet`)
      -> kept when the centre lies in the tile's own footprint (every point of the extent belongs to
         one tile: a coarser tile owns only the parts of it that no finer one saw), scored
         ``heat * sigmoid(scale * cos(embedding, query) + bias)``
      -> non-maximum suppression across all tiles (IoU ``nms_iou``), ``min_score``, ``max_boxes``.

No tile is encoded for the boxes that the planner did not choose: the budget stays a hard bound on
the image tower's work, and the head runs once per chosen tile.

Whether a query gets boxes or relevance outlines (:func:`answer_kind`): boxes when it names an
object, a thing with a size and an outline of its own (one of the classes whose sizes
:mod:`.sizes` knows); outlines when it names a region ("flooded fields", "a forest", "a paved road").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..expansion import prompt_ensemble
from ..geometry import Extent
from ..progress import ProgressBackend, check_canceled
from ..qa import SUBJECT_PROMPTS
from ..records import OutlineRecord
from .outlines import outline_parts
from .sizes import class_size

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..encoding.tiles import Encoding
    from ..raster import RasterSource

ANSWERS = ("auto", "boxes", "outlines")


@dataclass(frozen=True)
class BoxConfig:
    """Settings of the box answers.

    Attributes:
        min_score: Boxes scoring below this (``heat * p(query)``, in [0, 1]) are dropped.
        max_boxes: At most this many boxes, best first.
        nms_iou: A box overlapping a better one by this IoU or more is a duplicate (across seams too).
        min_heat: Peaks of the head's centre map below this are not considered.
        peaks: At most this many peaks per tile.
        batch_size: Windows per run of the head.
        zoom_out: The head also runs on tiles up to this many times coarser than the encoding's
            finest ones, over the parts of them no finer tile covers (1: the finest tiles only). It
            learnt objects at scales 1 to 0.5, so 2 by default.
    """

    min_score: float = 0.10
    max_boxes: int = 100
    nms_iou: float = 0.5
    min_heat: float = 0.05
    peaks: int = 100
    batch_size: int = 8
    zoom_out: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"The minimum box score must be between 0 and 1, not {self.min_score}.")
        if self.max_boxes < 1:
            raise ValueError(f"The number of boxes to keep must be 1 or more, not {self.max_boxes}.")
        if self.zoom_out < 1.0:
            raise ValueError(f"The box head's zoom-out must be 1 (finest tiles only) or more, not {self.zoom_out}.")


def answer_kind(bundle: "ModelBundle", text: str, answers: str = "auto") -> str:
    """"boxes" or "outlines": what a query's answers are drawn as.

    Args:
        bundle: The model (boxes need its box head).
        text: The query.
        answers: "auto" (boxes when the query names an object), "boxes" or "outlines".
    """
    if answers not in ANSWERS:
        raise ValueError(f"answers must be one of {', '.join(ANSWERS)}, not {answers!r}.")
    if bundle.box_head is None or answers == "outlines":
        return "outlines"
    if answers == "boxes":
        return "boxes"
    return "boxes" if names_object(bundle, text) else "outlines"


def names_object(bundle: "ModelBundle", text: str) -> bool:
    """Whether a query names a thing with its own outline: one of the object classes whose sizes
    :mod:`.sizes` knows (the classes the box head was trained on, and their synonyms by the object
    tier's text space: "oil storage tanks", "cars"). Knowledge-base concepts of the object level are not
    enough: "road" and "trees" are object concepts there, but a road is no box and trees are a region."""
    return class_size(bundle, text) is not None


def query_embedding(bundle: "ModelBundle", text: str) -> np.ndarray:
    """The query's prompt ensemble, as a search embeds it (and as the head was trained against)."""
    return prompt_ensemble(bundle, [text], SUBJECT_PROMPTS)[0]


def box_parts(encoding: "Encoding", zoom_out: float = 2.0) -> dict[int, list[Extent]]:
    """Row -> footprints of the tiles the head runs on: the finest view of every part of the extent
    (:func:`.outlines.outline_parts`: a tile over the parts of it no encoded child covers), for tiles
    at most ``zoom_out`` x coarser than the finest; every point belongs to at most one of them."""
    tiles = encoding.tiles
    parts = outline_parts(encoding)
    if not parts:  # no object tokens kept: the encoding's finest tiles over their own footprints
        candidates = [i for i, t in enumerate(tiles) if "object" in t.levels] or list(range(len(tiles)))
        parts = [(i, tiles[i].extent) for i in candidates]
    finest = min(tiles[i].gsd_m for i, _ in parts)
    out: dict[int, list[Extent]] = {}
    for i, footprint in parts:
        if tiles[i].gsd_m <= finest * zoom_out * 1.01:
            out.setdefault(i, []).append(footprint)
    return out


def find_boxes(encoding: "Encoding", bundle: "ModelBundle", source: "RasterSource", text: str,
               config: BoxConfig | None = None, progress: ProgressBackend | None = None) -> list[OutlineRecord]:
    """One box per object ``text`` names in the finest tiles of ``encoding``, best first.

    Returns:
        Outline records with ``shape`` "box" and ``found_by`` "boxes", ranked from 1; their
        ``tile`` is the key of the tile each came from.
    """
    config = config or BoxConfig()
    spec = bundle.box_head
    window, margin = int(spec["window"]), int(spec["margin"])
    tile_px = window - 2 * margin
    query = query_embedding(bundle, text)
    scale, bias = float(spec["logit_scale"]), float(spec["logit_bias"])
    mpu = source.georef.metres_per_unit
    t0 = time.perf_counter()
    footprints = box_parts(encoding, config.zoom_out)
    rows = sorted(footprints)
    found: list[tuple[float, tuple[float, float, float, float], int]] = []
    for start in range(0, len(rows), config.batch_size):
        if progress is not None:
            check_canceled(progress)
        batch = rows[start:start + config.batch_size]
        reads = []
        for i in batch:
            ext = encoding.tiles[i].read_extent
            px = ext.width / tile_px  # map units per window pixel
            reads.append(Extent(ext.xmin - margin * px, ext.ymin - margin * ext.height / tile_px,
                                ext.xmax + margin * px, ext.ymax + margin * ext.height / tile_px))
        windows = np.stack([source.read(r, window, window) for r in reads])
        heat, size, offset, embed = bundle.detect(windows)
        for j, i in enumerate(batch):
            found += _tile_boxes(heat[j], size[j], offset[j], embed[j], reads[j], footprints[i],
                                 window, int(spec["stride"]), query, scale, bias, config, i)
    found = clip_boxes(found, source.georef.extent)
    kept = suppress(found, config.nms_iou)
    kept = [k for k in kept if k[0] >= config.min_score][:config.max_boxes]
    encoding.timings["boxes_s"] = encoding.timings.get("boxes_s", 0.0) + time.perf_counter() - t0
    encoding.timings["box_tiles"] = float(len(rows))
    return box_records(kept, encoding, text, mpu, source.name)


def _tile_boxes(heat, size, offset, embed, read: Extent, footprints: list[Extent], window: int, stride: int,
                query: np.ndarray, scale: float, bias: float, config: BoxConfig, row: int) -> list:
    """Scored boxes (map coordinates) of one window whose centres lie in one of the tile's footprints
    (the parts of the tile it owns)."""
    h, w = heat.shape
    padded = np.pad(heat, 1, constant_values=-1.0)
    neighbours = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.flatnonzero((heat >= neighbours) & (heat >= config.min_heat))
    if peaks.size == 0:
        return []
    peaks = peaks[np.argsort(-heat.flat[peaks], kind="stable")[:config.peaks]]
    iy, ix = np.divmod(peaks, w)
    ux, uy = read.width / window, read.height / window  # map units per window pixel
    cx = (ix + offset[0].flat[peaks]) * stride
    cy = (iy + offset[1].flat[peaks]) * stride
    bw = np.exp(size[0].flat[peaks]) * stride
    bh = np.exp(size[1].flat[peaks]) * stride
    prob = 1.0 / (1.0 + np.exp(-(scale * (embed[:, iy, ix].T @ query) + bias)))
    score = heat.flat[peaks] * prob
    out = []
    for k in range(len(peaks)):
        mx, my = read.xmin + cx[k] * ux, read.ymax - cy[k] * uy
        if not any(f.xmin <= mx < f.xmax and f.ymin < my <= f.ymax for f in footprints):
            continue
        half_w, half_h = bw[k] * ux / 2, bh[k] * uy / 2
        out.append((float(score[k]), (mx - half_w, my - half_h, mx + half_w, my + half_h), row))
    return out


def clip_boxes(boxes: list, extent: Extent) -> list:
    """Boxes cut to the raster's extent (an object at the edge is drawn up to it); empty ones dropped."""
    out = []
    for score, (x0, y0, x1, y1), row in boxes:
        x0, y0 = max(x0, extent.xmin), max(y0, extent.ymin)
        x1, y1 = min(x1, extent.xmax), min(y1, extent.ymax)
        if x1 > x0 and y1 > y0:
            out.append((score, (x0, y0, x1, y1), row))
    return out


def suppress(boxes: list, iou: float) -> list:
    """Greedy non-maximum suppression of (score, (xmin, ymin, xmax, ymax), row) triples, best first."""
    order = sorted(boxes, key=lambda b: -b[0])
    if not order:
        return []
    xy = np.asarray([b[1] for b in order], np.float64)
    area = (xy[:, 2] - xy[:, 0]) * (xy[:, 3] - xy[:, 1])
    alive = np.ones(len(order), bool)
    kept = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        kept.append(order[k])
        iw = np.clip(np.minimum(xy[k, 2], xy[:, 2]) - np.maximum(xy[k, 0], xy[:, 0]), 0, None)
        ih = np.clip(np.minimum(xy[k, 3], xy[:, 3]) - np.maximum(xy[k, 1], xy[:, 1]), 0, None)
        inter = iw * ih
        overlap = inter / np.maximum(area[k] + area - inter, 1e-12)
        alive &= overlap < iou
    return kept


def box_records(kept: list, encoding: "Encoding", text: str, metres_per_unit: float,
                source_name: str) -> list[OutlineRecord]:
    """Boxes as outline records for the writer (rank 1 first)."""
    from shapely.geometry import box as shapely_box

    records = []
    for rank, (score, (x0, y0, x1, y1), row) in enumerate(kept, start=1):
        tile = encoding.tiles[row]
        geometry = shapely_box(x0, y0, x1, y1)
        records.append(OutlineRecord(
            query=text, rank=rank, score=round(float(score), 6), shape="box", cells=0,
            area_m2=float(geometry.area) * metres_per_unit ** 2, depth=tile.depth, gsd_m=tile.gsd_m,
            extent=Extent(x0, y0, x1, y1), geometry_wkb=bytes(geometry.wkb), source=source_name,
            found_by="boxes", tile=tile.key))
    return records


def boxes_note(kind: str, text: str, count: int | None = None) -> str:
    """The sentence a job logs about how its answers are drawn."""
    if kind == "boxes":
        found = "" if count is None else f": {count} box{'es' if count != 1 else ''}"
        return f"\"{text}\" names an object: one box per object from the box head{found}."
    return f"\"{text}\" names a region or a kind of ground: outlines of its relevance map."


