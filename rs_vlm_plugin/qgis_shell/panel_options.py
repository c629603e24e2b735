"""What the panel offers and what it hands over: its modes, scopes, devices and answers (with their labels),
and the :class:`DockRequest` the plugin validates and runs. No widgets: the panel (:mod:`.dock`)
shows these, the plugin (:mod:`.plugin`) reads the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.locate.boxes import BoxConfig

MODES = {
    # mode: (label, query label, placeholder, run button text, tooltip)
    "describe": ("Describe", "", "", "Describe",
                 "Caption the area at three levels: the whole view, its regions and every fine tile."),
    "search": ("Search", "Search for", "e.g. storage tanks next to a river", "Search",
               "Find the places that match a text, best first (uses the layer's index when one exists)."),
    "classify": ("Classify", "Classes", "e.g. forest, farmland, water, buildings (empty: scene types)", "Classify",
                 "Label every fine tile with the best of your classes (comma-separated)."),
    "ask": ("Ask", "Question", "e.g. Is there a storage tank? / How much of the area is forest?", "Ask",
            "Answer a question: is there X, what is this area, where is X, how much of the area is X."),
}
SCOPES = {"visible": "Visible extent", "layer": "Whole layer", "selection": "Selected polygons (mask)"}
DEVICES = {"auto": "Auto (GPU when available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}
ANSWERS = {"auto": "Auto (boxes for objects, outlines for regions)", "boxes": "Boxes (one per object)",
           "outlines": "Outlines (relevance)"}
"""How search and "where is X?" draw what they find (the keys are :data:`...core.locate.boxes.ANSWERS`)."""


@dataclass
class DockRequest:
    """What the user asked the panel for, handed to the plugin to validate and run.

    Attributes:
        mode: "describe", "search", "classify" or "ask".
        query: Search text, class list or question (empty for describe).
        layer: The raster layer.
        scope: "visible", "layer" or "selection".
        mask_layer: The vector layer whose selected polygons are the mask (scope "selection").
        max_tiles: The DRIS tile budget.
        model_dir: The chosen model bundle folder.
        device: "auto", "cpu" or "cuda".
        show_plan: Also add the DRIS quadtree (where compute went) as a layer.
        answers: "auto", "boxes" or "outlines" (search and "where is X?"; see :data:`ANSWERS`).
        boxes: The box answers' settings (the panel sets their minimum score).
    """

    mode: str
    query: str
    layer: object
    scope: str
    mask_layer: object
    max_tiles: int
    model_dir: Path | None
    device: str
    show_plan: bool
    answers: str = "auto"
    boxes: BoxConfig = field(default_factory=BoxConfig)
