"""The QGIS side of RS-VLM: plugin, panel, background task, provider-backed raster source,
result layers and the Processing provider.

Thin by design: it gathers inputs on the main thread, calls :mod:`rs_vlm_plugin.core` with a
progress/cancel object and turns result records into styled layers.
"""
