"""How big the object classes the object tier knows are: a size prior for the boxes of outlines.

The sizes are the median width and height of the NWPU VHR-10 boxes of the images training uses
(the 80 % it does not hold back, ``rs_vlm_train.data.read_object_boxes``), in that set's image
pixels, taken as metres: VHR-10's images have no stated pixel size, and the locate
benchmark's mosaics of them are written with 1 m pixels. On a raster of another scale the prior
is used in metres all the same (``LocateConfig.size_prior=False`` turns it off).

A query gets a class's size when its object-tier embedding is close to that class's name
(``MATCH_COSINE``): "storage tanks" and "oil tanks" take the storage tank's; "a lake" takes none,
and its boxes come from the relevant cells alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..bundle import ModelBundle

CLASS_SIZES_M: dict[str, tuple[float, float]] = {
    # class: (median width, median height); 2,444 training boxes of 402 images
    "airplane": (71.0, 68.0),
    "ship": (58.0, 51.0),
    "storage tank": (60.0, 58.0),
    "baseball diamond": (85.0, 72.0),
    "tennis court": (55.0, 61.0),
    "basketball court": (93.0, 76.0),
    "ground track field": (240.0, 270.0),
    "harbor": (108.0, 84.0),
    "bridge": (146.0, 137.0),
    "vehicle": (45.0, 45.0),
}
MATCH_COSINE = 0.8
"""A query takes a class's size when its object-tier embedding is at least this close to the class name's."""


def class_size(bundle: "ModelBundle", text: str) -> tuple[str, tuple[float, float]] | None:
    """The object class a query names and its (width, height) in metres, or None.

    Args:
        bundle: The model (its text tower embeds the query and the class names, once each).
        text: The query.
    """
    from .relevance import object_query

    names = list(CLASS_SIZES_M)
    classes = bundle.text_memo(("locate-classes",), lambda: np.stack([object_query(bundle, n) for n in names]))
    sims = classes @ object_query(bundle, text)
    best = int(np.argmax(sims))
    if sims[best] < MATCH_COSINE:
        return None
    return names[best], CLASS_SIZES_M[names[best]]
