"""The core's ProgressBackend over Processing feedback, for every RS-VLM algorithm."""

from __future__ import annotations

from qgis.core import QgsProcessingFeedback

from ...core.pace import Pace


class FeedbackProgress:
    """ProgressBackend over QgsProcessingFeedback: progress bar, log and the Cancel button.

    The log gets one line per 10 % or 30 s with elapsed time, rate and time left (core/pace.py),
    as the command line writes when its stderr is not a terminal.
    """

    def __init__(self, feedback: QgsProcessingFeedback | None) -> None:
        self.feedback = feedback if feedback is not None else QgsProcessingFeedback()
        self._pace = Pace()
        self._stage = ""

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._stage = stage
        self.feedback.setProgressText(stage)
        self._log(self._pace.tick())

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self.feedback.setProgress(100.0 * max(0.0, min(1.0, fraction)))
        self._log(self._pace.update(fraction))

    def _log(self, reading) -> None:
        if reading is not None:
            self.feedback.pushInfo(reading.line(self._stage))

    def is_canceled(self) -> bool:  # noqa: D102
        return self.feedback.isCanceled()

    def info(self, message: str) -> None:  # noqa: D102
        self.feedback.pushInfo(message)

    def warn(self, message: str) -> None:  # noqa: D102
        self.feedback.pushWarning(message)
