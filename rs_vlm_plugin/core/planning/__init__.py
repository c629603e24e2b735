"""Planning: which tiles to read, at which pixel size (DRIS: a quadtree split where the image is complex).

    coarse overview -> complexity map (``complexity.py``) -> quadtree of tiles under a budget
      (``dris.py``: ``PlanConfig``, ``TilePlan``, ``plan_tiles``) -> the plan as records (``plan_layer.py``)

Pure numpy over arrays and extents: it may import only the floor (``errors``, ``geometry``,
``records``); never the raster readers, the model, ``encoding`` or the jobs.
"""
