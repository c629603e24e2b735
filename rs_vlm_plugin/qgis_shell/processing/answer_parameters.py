"""ANSWERS, MIN_SCORE and MAX_BOXES: how the search and ask algorithms draw what a query finds (one
box per object from the model's box head, or relevance outlines; :mod:`...core.locate.boxes`)."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingParameterEnum, QgsProcessingParameterNumber

from ...core.locate.boxes import ANSWERS, BoxConfig

ANSWERS_HELP = (
    "ANSWERS (auto by default): how what is found is drawn. A query that names an object (airplanes, "
    "ships, storage tanks, vehicles, ...) is answered with one box per object (score = heat × p(query), "
    "found_by = boxes); one that names a region (\"flooded fields\", \"a forest\") with relevance "
    "outlines (score = calibrated relevance, found_by = relevance). boxes or outlines: that kind whatever "
    "the query (a model without a box head always outlines). "
    f"MIN_SCORE ({BoxConfig().min_score:.2f}): boxes scoring below it are dropped. "
    f"MAX_BOXES ({BoxConfig().max_boxes}): at most this many boxes, best first."
)
"""The help paragraph of the three parameters (in the algorithms' shortHelpString)."""


def add_answer_parameters(algorithm) -> None:
    """Add ANSWERS ("auto", "boxes" or "outlines"), MIN_SCORE (0 to 1) and MAX_BOXES (at least 1) to ``algorithm``."""
    defaults = BoxConfig()
    algorithm.addParameter(QgsProcessingParameterEnum(
        "ANSWERS", algorithm.tr("Answers (auto: boxes when the query names an object, else outlines)"),
        list(ANSWERS), defaultValue="auto", usesStaticStrings=True))  # ANSWERS=boxes, as on the command line
    algorithm.addParameter(QgsProcessingParameterNumber(
        "MIN_SCORE", algorithm.tr("Minimum box score (heat × p(query))"), QgsProcessingParameterNumber.Type.Double,
        defaults.min_score, False, 0.0, 1.0))
    algorithm.addParameter(QgsProcessingParameterNumber(
        "MAX_BOXES", algorithm.tr("Most boxes kept (best first)"), QgsProcessingParameterNumber.Type.Integer,
        defaults.max_boxes, False, 1))


def answer_options(algorithm, parameters, context) -> dict:
    """The JobConfig fields (``answers``, ``boxes``) of ANSWERS, MIN_SCORE and MAX_BOXES.

    Raises:
        QgsProcessingException: A value BoxConfig refuses, as its sentence.
    """
    try:
        boxes = BoxConfig(min_score=algorithm.parameterAsDouble(parameters, "MIN_SCORE", context),
                          max_boxes=algorithm.parameterAsInt(parameters, "MAX_BOXES", context))
    except ValueError as exc:
        raise QgsProcessingException(str(exc)) from exc
    return {"answers": algorithm.parameterAsEnumString(parameters, "ANSWERS", context), "boxes": boxes}
