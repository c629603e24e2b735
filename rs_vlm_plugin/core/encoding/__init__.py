"""Encoding: from a raster's extent to the tokens of its tiles.

    extent -> coarse read + DRIS plan (``planning``) -> the tiles to encode, masked (``tiles.py``)
      -> reads ahead on a thread -> the image tower per batch (``encode.py``) -> an ``Encoding``

Holds the ``Encoding`` and ``EncodedTile`` types, reading, masking and encoding. It may import
the floor (``errors``, ``progress``, ``geometry``, ``records``, ``prefetch``), ``raster``,
``planning``, ``validation`` and the model (``bundle``); never ``locate``, ``jobs`` or a caller.
It reads a job's settings through the ``EncodeSettings`` protocol, so it never knows which job asked.
"""
