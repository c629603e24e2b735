"""Locating what a query names: text-guided coarse-to-fine search, and outlines of what it finds.

    coarse tiles (native-grid roots) -> encode -> score against the query (region tokens, complexity prior)
      -> split the best cells, level by level, under the budget, down to native resolution  (guided.py)
    finest tiles' object tokens -> relevance map for the query, calibrated against background texts
      (relevance.py) -> thresholded cells -> merged polygons, boxes for compact blobs (vectorise.py)
      -> outline records (outlines.py) -> their own GeoPackage layer beside the tile hits

Localisation works over ``encoding`` and never over a job: it may import the floor, ``raster``,
``planning``, ``validation``, the model and text modules (``bundle``, ``qa``, ``expansion``) and
``encoding``; the jobs call it (``jobs/query.py``), it never calls them.
"""
