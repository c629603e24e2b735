"""The model manager: which models exist (a registry), and installing, listing and removing them.

    registry (resources/models.json) -> download (HTTP Range resume, SHA-256) -> archive checks
      -> unpack into a temporary folder -> atomic move into the models folder

``archive`` needs only the standard library (``build.py package`` writes model packages with it);
the rest is used by the shell, Processing and ``python -m rs_vlm_plugin models``.
"""
