"""Jobs: what a user asks of an extent, one module per mode, each over ``encoding``.

    JobConfig (``config.py``) + kind -> ``run.py`` -> describe.py | search.py | classify.py | ask.py
      | index.py (build and search an embedding index) -> results (``results.py``: records per layer)

``query.py`` holds what the query jobs share (the query's encoding, text-guided through
``locate``, tile scores, outlines); ``captioning.py`` and ``caption_stream.py`` caption tiles.
A job may import the floor, ``raster``, ``planning``, the model and text modules (``bundle``,
``qa``, ``expansion``, ``knowledge``, ``captions``, ``seen_bias``), ``validation``, ``gpkg``,
``encoding`` and ``locate``; never ``distributed``, the command line or the shell.
"""
