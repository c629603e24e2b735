"""Model definitions and the ONNX exporter (torch side).

Imported only by build, training and export commands, which run in a Python that has
torch; the plugin itself never imports this package (it runs the exporter as a separate
process).
"""
