"""ONNX model bundles: loading, sessions, batched encoding of tiles and texts.

A bundle is a folder with ``manifest.json`` (see ``modeling/export.py`` for the layout).  The
runtime needs only numpy, onnxruntime and tokenizers.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import RsVlmError
from .progress import NullProgress, ProgressBackend, check_canceled

BUNDLE_FORMAT = "rs-vlm-bundle"
TIER_OUTPUTS = ("embedding", "regions", "objects", "routing")
"""What :meth:`ModelBundle.encode_tiers` can give, in order."""
SUPPORTED_VERSIONS = (2,)
DEFAULT_MODEL_NAME = "rs-vlm-lite0"


def models_dir() -> Path:
    """Folder holding the bundles that ship with (or were built into) the plugin."""
    return Path(__file__).resolve().parents[1] / "models"


def default_bundle_dir() -> Path:
    """Folder of the default model's bundle: the plugin's own (a checkout, the offline zip), else the
    one ``python -m rs_vlm_plugin models install`` put in the user's models folder."""
    from .models.registry import user_models_dir

    own = models_dir() / DEFAULT_MODEL_NAME
    installed = user_models_dir() / DEFAULT_MODEL_NAME
    return installed if not (own / "manifest.json").is_file() and (installed / "manifest.json").is_file() else own


def available_providers() -> list[str]:
    """Execution providers to use, CUDA first when onnxruntime offers it, CPU always last."""
    import onnxruntime as ort

    offered = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in offered]


def load_tokenizer(path: Path, max_tokens: int):
    """A HF ``tokenizers`` tokenizer that truncates to ``max_tokens`` and pads to the longest text.

    (The tokenizer.json of all-MiniLM-L6-v2 pads every text to 128 tokens.)
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


MIN_CACHED_SESSIONS = 3
"""ONNX sessions always kept for reuse across jobs: one bundle's image, text and decoder graphs."""
CACHED_SESSION_BYTES = 2 << 30
"""Beyond :data:`MIN_CACHED_SESSIONS`, the least recently used sessions go once their model files
add up to more than this (an imported ViT-L bundle alone is about 1.7 GB)."""
_SESSIONS: dict = {}  # (file path, size, mtime, RuntimeOptions) -> onnxruntime session, least recent first
_SESSIONS_LOCK = threading.Lock()
SESSION_STATS = {"created": 0}
"""Sessions created in this process (the cache's misses), for tests and benchmarks."""


@atexit.register
def _release_sessions() -> None:
    """Drop the cached sessions before the interpreter tears down (onnxruntime's own globals may be
    gone by the time module dictionaries are cleared, and freeing a session then can crash); the
    same for sessions that only reference cycles still hold (the frames of an interrupted job)."""
    import gc

    with _SESSIONS_LOCK:
        _SESSIONS.clear()
    gc.collect()


@dataclass(frozen=True)
class RuntimeOptions:
    """How ONNX sessions are created.

    Attributes:
        device: "auto" (CUDA when available), "cpu" or "cuda".
        threads: Intra-op threads; 0 lets onnxruntime decide.
    """

    device: str = "auto"
    threads: int = 0


class ModelBundle:
    """An exported RS-VLM model: image tower, text tower, tokenizer and knowledge base."""

    def __init__(self, folder: Path, manifest: dict, options: RuntimeOptions) -> None:
        self.folder = folder
        self.manifest = manifest
        self.options = options
        self.name: str = manifest.get("name", folder.name)
        self.embed_dim: int = int(manifest["embed_dim"])
        self.logit_scale: float = float(manifest.get("logit_scale", 50.0))
        image = manifest["image_encoder"]
        self.image_size: int = int(image["image_size"])
        self._mean = np.asarray(image["mean"], np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(image["std"], np.float32).reshape(1, 3, 1, 1)
        self._image_session = None
        self._text_session = None
        self._tokenizer = None
        self._kb = None
        self._decoder_session = None
        self._vocab = None
        self._text_memo: dict = {}  # results derived from texts alone (expanded class lists), by key

    @classmethod
    def load(cls, folder: str | os.PathLike, options: RuntimeOptions | None = None) -> "ModelBundle":
        """Open a bundle folder and check its manifest (sessions are created on first use)."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise RsVlmError(
                f"No model bundle at {folder} (manifest.json is missing). Install the model: in QGIS with "
                "Models > Download in the RS-VLM panel, else `python -m rs_vlm_plugin models install "
                f"{DEFAULT_MODEL_NAME}` (in a checkout, `python3 build.py setup` exports it); or choose another model."
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:  # not JSON, or not UTF-8 text (UnicodeDecodeError)
            raise RsVlmError(f"The model manifest {manifest_path} is not valid JSON ({exc}); export the model again.") from exc
        if not isinstance(manifest, dict):
            raise RsVlmError(f"The model manifest {manifest_path} is not valid JSON (it holds a "
                             f"{type(manifest).__name__}, not an object); export the model again.")
        if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") not in SUPPORTED_VERSIONS:
            raise RsVlmError(
                f"{manifest_path} is a {manifest.get('format')!r} bundle of version "
                f"{manifest.get('format_version')!r}; this plugin reads {BUNDLE_FORMAT!r} versions "
                f"{SUPPORTED_VERSIONS}. Export the model again with this version of RS-VLM."
            )
        for key in ("image_encoder", "text_encoder"):
            try:
                file = folder / manifest[key]["file"]
            except (KeyError, TypeError) as exc:
                raise RsVlmError(f"The model manifest {manifest_path} does not name its {key} file; export the "
                                 "model again.") from exc
            if not file.exists():
                raise RsVlmError(f"The model file {file} is missing; export the model again.")
        return cls(folder, manifest, options or RuntimeOptions())

    def text_memo(self, key: tuple, make):
        """``make()``, computed once per key for this bundle (text-side results that need no pixels,
        such as a class list expanded with the knowledge base and embedded; kept for the 16 last keys)."""
        if key not in self._text_memo:
            if len(self._text_memo) >= 16:
                self._text_memo.pop(next(iter(self._text_memo)))
            self._text_memo[key] = make()
        return self._text_memo[key]

    # Sessions ---------------------------------------------------------------------------

    def _session(self, file: str, stop_spinning: bool = False):
        """The session of one ONNX file of the bundle, shared by every bundle of the process that
        opens the same file (same path, size and modification time) with the same options.

        ``stop_spinning``: the session's threads stop spinning when a run ends. For the image
        tower, whose runs are long: the work between two batches (relevance maps, a round of the
        guided planner, captions) otherwise shares the cores with threads spinning for the next
        run; a guided search of a VHR-10 mosaic spent 0.26 s instead of 0.09 s in its planning."""
        path = self.folder / file
        try:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, self.options)
        except OSError:
            key = None  # onnxruntime says what is wrong with the file
        with _SESSIONS_LOCK:
            session = _SESSIONS.pop(key, None) if key else None
            if session is None:
                session = self._new_session(path, stop_spinning)
                SESSION_STATS["created"] += 1
            if key:
                _SESSIONS[key] = session  # the most recently used last
                while len(_SESSIONS) > MIN_CACHED_SESSIONS and sum(k[1] for k in _SESSIONS) > CACHED_SESSION_BYTES:
                    _SESSIONS.pop(next(iter(_SESSIONS)))
            return session

    def _new_session(self, path: Path, stop_spinning: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RsVlmError("onnxruntime is not installed; install it (pip install onnxruntime) and try again.") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.threads:
            options.intra_op_num_threads = self.options.threads
        if stop_spinning:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        providers = available_providers()
        if self.options.device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif self.options.device == "cuda" and "CUDAExecutionProvider" not in providers:
            raise RsVlmError("The GPU was requested but onnxruntime offers no CUDA provider; install "
                             "onnxruntime-gpu or choose the CPU.")
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            if not _is_model_damage(exc):
                raise
            raise RsVlmError(
                f"The model file {path} is damaged or incomplete ({str(exc).splitlines()[0][:200]}); export the "
                "model again (python3 build.py export) or reinstall the plugin or the imported model.") from exc

    @property
    def image_session(self):
        """The image tower's onnxruntime session."""
        if self._image_session is None:
            self._image_session = self._session(self.manifest["image_encoder"]["file"], stop_spinning=True)
        return self._image_session

    @property
    def box_head(self) -> dict | None:
        """The manifest's entry of the object box head (``boxes.onnx``; issue 22), None without one."""
        return self.manifest.get("boxes")

    def detect(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Run the box head on uint8 (N, W, W, 3) windows: heat (N, h, w), log sizes and offsets
        (N, 2, h, w) and L2-normalised embeddings (N, D, h, w) at the head's stride."""
        spec = self.box_head
        if spec is None:
            raise RsVlmError(f"The model {self.name} has no object box head; export it again with one.")
        session = self._session(spec["file"], stop_spinning=True)
        heat, size, offset, embed = session.run(list(spec["outputs"]), {spec["input"]: self.preprocess(windows)})
        return heat[:, 0], size, offset, embed

    @property
    def text_session(self):
        """The text tower's onnxruntime session."""
        if self._text_session is None:
            self._text_session = self._session(self.manifest["text_encoder"]["file"])
        return self._text_session

    @property
    def decoder_session(self):
        """The caption decoder's onnxruntime session."""
        if self._decoder_session is None:
            self._decoder_session = self._session(self.manifest["decoder"]["file"])
        return self._decoder_session

    @property
    def has_decoder(self) -> bool:
        """Whether the bundle has a caption decoder (imported CLIP models may not)."""
        return "decoder" in self.manifest and (self.folder / self.manifest["decoder"]["file"]).exists()

    @property
    def vocab(self) -> list[str]:
        """The decoder's words, indexed by token id."""
        if self._vocab is None:
            self._vocab = json.loads((self.folder / self.manifest["decoder"]["vocab"]).read_text(encoding="utf-8"))
        return self._vocab

    @property
    def presence_threshold(self) -> float:
        """Cosine similarity above which "is there X?" answers yes (calibrated on val at training)."""
        return float(self.manifest.get("qa", {}).get("threshold", 0.3))

    @property
    def providers(self) -> list[str]:
        """Providers the image session actually runs on."""
        return self.image_session.get_providers()

    @property
    def tokenizer(self):
        """The text tower's tokenizer (HF tokenizers), padding to the longest text."""
        if self._tokenizer is None:
            spec = self.manifest["text_encoder"]
            self._tokenizer = load_tokenizer(self.folder / spec["tokenizer"], int(spec.get("max_tokens", 64)))
        return self._tokenizer

    # Encoding ---------------------------------------------------------------------------

    def preprocess(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) RGB -> normalised float32 (N, 3, S, S), C-contiguous (what
        onnxruntime takes without a copy; in place, so one float array per batch)."""
        x = np.ascontiguousarray(np.asarray(tiles).transpose(0, 3, 1, 2), dtype=np.float32)
        x -= self._mean
        x /= self._std
        return x

    @property
    def object_gate(self) -> str | None:
        """Name of the image graph's input that turns the object tier off (None: always computed)."""
        return self.manifest["image_encoder"].get("gates", {}).get("objects")

    def encode_images(self, tiles: list[np.ndarray] | np.ndarray, batch_size: int = 16,
                      progress: ProgressBackend | None = None) -> np.ndarray:
        """Embed tiles (each uint8 (S, S, 3) at the model's input size) in batches.

        Cancellation is checked between batches.

        Returns:
            float32 (N, D), L2-normalised.
        """
        progress = progress or NullProgress()
        n = len(tiles)
        out = np.zeros((n, self.embed_dim), np.float32)
        spec = self.manifest["image_encoder"]
        for start in range(0, n, batch_size):
            check_canceled(progress)
            batch = np.stack([np.asarray(t) for t in tiles[start:start + batch_size]])
            if batch.shape[1:] != (self.image_size, self.image_size, 3):
                raise ValueError(f"tiles must be ({self.image_size}, {self.image_size}, 3), got {batch.shape[1:]}")
            out[start:start + len(batch)] = self.image_session.run([spec["output"]], {spec["input"]: self.preprocess(batch)})[0]
            progress.set_fraction(min(1.0, (start + len(batch)) / max(1, n)))
        return out

    def encode_tiers(self, tiles: list[np.ndarray] | np.ndarray, batch_size: int = 16,
                     progress: ProgressBackend | None = None,
                     tiers: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Tiers of augmented tokens of tiles (each uint8 (S, S, 3)), in batches.

        Args:
            tiers: The outputs wanted (:data:`TIER_OUTPUTS`); None for all. Without "objects"
                and "routing" the image graph skips its object tier where it can (its gate,
                see ``modeling/onnx_passes.py``): about half of its work.

        Returns:
            "embedding" (N, D) global tokens, "regions" (N, 13, D) (2x2 then 3x3 windows, row
            by row), "objects" (N, G*G, D) (the fine grid, row by row) and "routing" (N, 3) the
            mean weight of each expert over the tile's tokens; all tokens L2-normalised. Only
            the ``tiers`` asked for.
        """
        progress = progress or NullProgress()
        wanted = list(TIER_OUTPUTS if tiers is None else [t for t in TIER_OUTPUTS if t in tiers])
        with_objects = bool({"objects", "routing"} & set(wanted))
        n = len(tiles)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        spec = self.manifest["image_encoder"]
        gate = {self.object_gate: np.array(with_objects)} if self.object_gate else {}
        for start in range(0, n, batch_size):
            check_canceled(progress)
            batch = np.stack([np.asarray(t) for t in tiles[start:start + batch_size]])
            if batch.shape[1:] != (self.image_size, self.image_size, 3):
                raise ValueError(f"tiles must be ({self.image_size}, {self.image_size}, 3), got {batch.shape[1:]}")
            got = self.image_session.run(wanted, {spec["input"]: self.preprocess(batch), **gate})
            for name, value in zip(wanted, got):
                if name == "routing":
                    value = np.stack([value[:, 0], value[:, 1:14].mean(1), value[:, 14:].mean(1)], 1)
                parts[name].append(value)
            progress.set_fraction(min(1.0, (start + len(batch)) / max(1, n)))
        if n == 0:
            g = int(spec.get("grid", self.image_size // 16))
            empty = {"embedding": np.zeros((0, self.embed_dim), np.float32),
                     "regions": np.zeros((0, 13, self.embed_dim), np.float32),
                     "objects": np.zeros((0, g * g, self.embed_dim), np.float32),
                     "routing": np.zeros((0, 3, 3), np.float32)}
            return {k: empty[k] for k in wanted}
        return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in parts.items()}

    def caption(self, tiers: dict[str, np.ndarray], beam: int | None = None, max_len: int = 24,
                progress: ProgressBackend | None = None, banned: np.ndarray | None = None) -> list[str]:
        """Captions decoded (beam search) from the tiers of :meth:`encode_tiers`, one per tile.

        Cancellation is checked between chunks of 32 tiles.

        Args:
            banned: (tiles, vocab) bool, words a tile's caption may not use
                (:func:`jobs.grounding.banned_tokens`); None: any word.
        """
        from .decoding import as_sentence, beam_search, detokenize

        if not self.has_decoder:
            raise RsVlmError(f"The model {self.name} has no caption decoder.")
        n = len(tiers["embedding"])
        beam = int(beam or self.manifest["decoder"].get("beam", 3))
        feeds = {"global": tiers["embedding"], "regions": tiers["regions"], "objects": tiers["objects"]}

        def step(rows: np.ndarray, prefix: np.ndarray) -> np.ndarray:
            inputs = {k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()}
            inputs["tokens"] = prefix.astype(np.int64)
            return self.decoder_session.run(["logits"], inputs)[0]

        out = []
        for start in range(0, n, 32):  # bounded memory: 32 tiles x beam hypotheses per call
            check_canceled(progress or NullProgress())
            rows = np.arange(start, min(n, start + 32))

            def sub_step(r, prefix, rows=rows):
                return step(rows[r], prefix)

            out += [as_sentence(detokenize(seq, self.vocab)) for seq in
                    beam_search(sub_step, len(rows), beam, max_len, banned=None if banned is None else banned[rows])]
        return out

    def encode_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts; float32 (N, D), L2-normalised.

        Texts are batched by length, so that short class names do not pay for the padding of
        long descriptions (query-time knowledge mixes both).
        """
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        spec = self.manifest["text_encoder"]
        enc = self.tokenizer.encode_batch(list(texts))  # right-padded to the longest text
        lengths = np.asarray([sum(e.attention_mask) for e in enc])
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            ids = np.asarray([enc[r].ids[:width] for r in rows], np.int64)
            mask = np.asarray([enc[r].attention_mask[:width] for r in rows], np.int64)
            out[rows] = self.text_session.run([spec["output"]], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    @property
    def knowledge_base(self):
        """The bundle's knowledge base with its concept embeddings."""
        if self._kb is None:
            from .knowledge import KnowledgeBase

            spec = self.manifest["knowledge_base"]
            bias = self.folder / spec["bias"] if spec.get("bias") else None
            try:
                self._kb = KnowledgeBase.load(self.folder / spec["file"], self.folder / spec["embeddings"], bias)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # np.load refuses pickles with ValueError
                raise RsVlmError(
                    f"The knowledge base of the model {self.folder} is damaged or not what this plugin reads "
                    f"({str(exc).splitlines()[0][:200]}); export the model again or reinstall it.") from exc
        return self._kb


def _is_model_damage(exc: Exception) -> bool:
    """Whether onnxruntime refused a model file as unreadable (truncated, not ONNX, bad protobuf)."""
    name = type(exc).__name__
    text = str(exc)
    return name in ("InvalidProtobuf", "InvalidGraph", "NoSuchFile") or (
        name in ("Fail", "RuntimeException") and any(
            hint in text for hint in ("Protobuf parsing failed", "Load model", "ModelProto", "external data",
                                      "Failed to load model", "Invalid model")))
