"""The RS-VLM Processing provider (id ``rsvlm``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .constants import ICON_PATH, PROVIDER_ID


class RsVlmProvider(QgsProcessingProvider):
    """Caption raster, Search raster by text, Batch caption layers, Export model to ONNX."""

    def id(self) -> str:  # noqa: D102
        return PROVIDER_ID

    def name(self) -> str:  # noqa: D102
        return "RS-VLM"

    def longName(self) -> str:  # noqa: D102, N802
        from ... import __version__

        return f"RS-VLM {__version__} (aerial image captioning and text search)"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(ICON_PATH))

    def svgIconPath(self) -> str:  # noqa: D102, N802
        return str(ICON_PATH)

    def loadAlgorithms(self) -> None:  # noqa: D102, N802
        from .algorithms import all_algorithms
        from .batch_algorithm import batch_algorithms
        from .index_algorithms import index_algorithms
        from .model_algorithms import model_algorithms

        for algorithm in all_algorithms() + batch_algorithms() + index_algorithms() + model_algorithms():
            self.addAlgorithm(algorithm)
