"""Locating what a query names: text-guided coarse-to-fine search, and outlines of what it finds.

    coarse tiles (native-grid roots) -> encode -> score against the query (region tokens, complexity prior)
      -> split the best cells, level by level, under the budget, down to native resolution  (guided.py)
    finest tiles' object tokens -> relevance map for the query, calibrated against background texts
      (relevance.py) -> thresholded cells -> merged polygons, boxes for compact blobs (vectorise.py)
      -> outline records (outlines.py) -> their own GeoPackage layer beside the tile hits
"""
