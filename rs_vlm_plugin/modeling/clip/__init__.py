"""open_clip CLIP architectures in plain torch, checkpoint import and export to RS-VLM bundles.

Public remote-sensing CLIP checkpoints (RemoteCLIP, GeoRSCLIP, SkyCLIP) are open_clip state dicts
of RN50, ViT-B-32, ViT-L-14, ViT-L-14-336 or ViT-H-14. This package rebuilds those models with
exactly open_clip's parameter names (``model.py``, configurations in ``configs.py``), loads the
checkpoints safely (``checkpoint.py``), builds the CLIP tokenizer (``tokenizer.py``) and exports
a bundle the plugin runs next to its own model (``export_clip.py``; command line in
``rs_vlm_plugin.modeling.import_clip``). Needs torch; never imported by the plugin at run time.
"""
