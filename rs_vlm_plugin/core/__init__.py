"""RS-VLM core: planning, reading, encoding and captioning without QGIS or torch.

Everything here depends only on numpy, onnxruntime, tokenizers, rasterio, shapely and
GDAL/OGR, so it runs in QGIS, in the command line and in tests alike.
"""
