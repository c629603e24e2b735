"""Batch captioning and index building of whole archives on a Dask cluster (``dask.distributed``).

    inputs (files, folders, lists) -> plan each raster once (a task) -> chunks of whole ONNX batches
      -> encode + caption / keep index tokens (tasks, one model per worker) -> gathered as they finish
      -> one writer: records or token blocks in plan order -> GeoPackage / index (temporary file, rename)

Dask is optional: nothing here imports it until a scheduler address is given
(:mod:`.cluster`); without one the same tasks run in this process (:class:`.runner.SerialExecutor`).
"""
