"""The remote-sensing knowledge base: concepts at object, region and scene level."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Caption levels use the knowledge base level of the same scale.
LEVEL_OF_CAPTION = {"global": "scene", "region": "region", "object": "object"}


@dataclass(frozen=True)
class Concept:
    """One concept of the knowledge base."""

    id: str
    name: str
    level: str
    phrase: str
    description: str
    synonyms: tuple[str, ...] = ()
    parent: str | None = None


class KnowledgeBase:
    """Concepts plus their embeddings in a model's joint space."""

    def __init__(self, concepts: list[Concept], embeddings: np.ndarray, bias: np.ndarray | None = None) -> None:
        if len(concepts) != len(embeddings) or (bias is not None and len(bias) != len(concepts)):
            raise ValueError(f"{len(concepts)} concepts but {len(embeddings)} embeddings"
                             + ("" if bias is None else f" and {len(bias)} biases"))
        self.concepts = concepts
        self.embeddings = embeddings.astype(np.float32)
        # Each concept's mean similarity to training images; subtracting it keeps "hub"
        # concepts that are close to everything from winning every tile.
        self.bias = np.zeros(len(concepts), np.float32) if bias is None else bias.astype(np.float32)
        self._by_level = {level: np.asarray([i for i, c in enumerate(concepts) if c.level == level], int)
                          for level in ("object", "region", "scene")}

    @staticmethod
    def read_concepts(path: Path) -> list[Concept]:
        """Concepts from a knowledge-base JSON file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [Concept(c["id"], c["name"], c["level"], c.get("phrase") or c["name"], c.get("description", ""),
                        tuple(c.get("synonyms", ())), c.get("parent")) for c in data["concepts"]]

    @classmethod
    def load(cls, path: Path, embeddings_path: Path, bias_path: Path | None = None) -> "KnowledgeBase":
        """Read the concepts, their embedding matrix (``.npy``) and optional biases (``.npy``)."""
        bias = np.load(bias_path, allow_pickle=False) if bias_path is not None else None
        return cls(cls.read_concepts(path), np.load(embeddings_path, allow_pickle=False), bias)

    def level_indices(self, level: str) -> np.ndarray:
        """Indices of the concepts of one level ("object", "region", "scene")."""
        return self._by_level[level]

    def rank(self, embeddings: np.ndarray, level: str, top_k: int, logit_scale: float) -> list[list[tuple[Concept, float]]]:
        """Best concepts of a level for each embedding, with softmax probabilities over that level.

        Args:
            embeddings: (N, D) normalised tile embeddings.
            level: Knowledge-base level.
            top_k: How many concepts to return per row.
            logit_scale: Temperature of the trained model (cosine * scale = logit).
        """
        idx = self.level_indices(level)
        if len(idx) == 0 or len(embeddings) == 0:
            return [[] for _ in range(len(embeddings))]
        logits = logit_scale * (embeddings @ self.embeddings[idx].T - self.bias[idx])
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :top_k]
        return [[(self.concepts[idx[j]], float(probs[r, j])) for j in row] for r, row in enumerate(order)]
