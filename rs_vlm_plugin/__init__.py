"""RS-VLM: caption aerial imagery and search it by text with a small ONNX vision-language model.

This package imports without QGIS so that the command line (``python -m rs_vlm_plugin``) and
the tests of ``core`` run anywhere; QGIS only enters through :func:`classFactory`.
"""

__version__ = "0.4.1"


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    """Create the plugin (called by QGIS, with ``iface`` None in ``qgis_process``).

    Args:
        iface: The QgisInterface of the running QGIS, or None when only Processing is wanted.

    Returns:
        The :class:`~rs_vlm_plugin.qgis_shell.plugin.RsVlmPlugin` instance, or, when a required
        Python package is missing or broken, a
        :class:`~rs_vlm_plugin.qgis_shell.missing_deps.MissingDependenciesPlugin` that explains
        it and offers to install it (packages installed earlier are found in the private folder).
    """
    from .qgis_shell.deps_install import prepare_dependencies
    from .qgis_shell.missing_deps import MissingDependenciesPlugin

    report = prepare_dependencies()
    if not report.ok:
        return MissingDependenciesPlugin(iface, report)
    from .qgis_shell.plugin import RsVlmPlugin

    return RsVlmPlugin(iface)
