"""Captions composed from the best-matching knowledge-base concepts."""

from __future__ import annotations

from .knowledge import Concept

# A secondary concept is mentioned only when it is at least this fraction as likely as the first.
SECONDARY_RATIO = 0.35


def _mentioned(ranked: list[tuple[Concept, float]], limit: int = 2) -> list[Concept]:
    if not ranked:
        return []
    best = ranked[0][1]
    return [c for c, p in ranked[:limit] if p >= SECONDARY_RATIO * best]


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else ""


def compose_caption(level: str, scene: list[tuple[Concept, float]], region: list[tuple[Concept, float]],
                    objects: list[tuple[Concept, float]]) -> str:
    """One caption for a tile from its ranked concepts at the three knowledge-base levels.

    Args:
        level: Caption level of the tile: "global", "region" or "object".
        scene, region, objects: Ranked (concept, probability) lists of the tile at each level.
    """
    obj = [c.phrase for c in _mentioned(objects)]
    reg = [c.phrase for c in _mentioned(region, 1)]
    if level == "global":
        head = scene[0][0].phrase if scene else "an area"
        extras = reg + obj[:1]
        return _sentence(f"An aerial view of {head}" + (f" with {_join(extras)}" if extras else ""))
    if level == "region":
        head = reg[0] if reg else "an area"
        return _sentence(head + (f" with {_join(obj)}" if obj else ""))
    return _sentence(_join(obj) if obj else (reg[0] if reg else "an indistinct area"))
