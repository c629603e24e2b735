"""An embedding index: encode a raster once, then answer any number of text queries without it.

    raster -> DRIS plan -> tiles -> image tower (global + 13 region tokens per tile)
           -> one GeoPackage: layer ``index_tiles`` (footprints, for QGIS) + sqlite tables
              ``rsvlm_index_meta`` (key, JSON value) and ``rsvlm_index_embeddings`` (np.save BLOBs)
    query  -> text tower -> one matrix product with the (tiles x 14, D) token matrix -> top k

Hits are ranked exactly as :func:`.search.search` ranks them (the best of a tile's global
token and its 13 region tokens, cosine similarity; ties to the earlier tile); their captions
are composed from the knowledge base, since the object tokens the decoder needs are not kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..bundle import ModelBundle
from ..planning.dris import PlanConfig, Tile, TilePlan
from ..errors import RsVlmError
from ..expansion import expand_queries
from ..geometry import Extent
from ..locate.guided import guided_encoding
from ..gpkg import write_geopackage
from ..encoding.encode import encode_extent
from ..encoding.tiles import EncodedTile
from .captioning import composed_captions
from .identity import model_fingerprint, source_identity
from .classify import CLASS_PROMPTS
from .config import JobConfig
from .query import tile_level, check_query, guide_scorer
from .results import SearchResult
from ..progress import NullProgress, ProgressBackend, check_canceled
from ..qa import QueryScorer, as_scorer
from ..raster import RasterSource
from ..records import IndexTile, SearchHit
from ..seen_bias import query_familiarity
from ..validation import text_warnings

INDEX_FORMAT = "rsvlm-index"
INDEX_VERSION = 1
SUPPORTED_VERSIONS = (1,)
TILES_LAYER = "index_tiles"
META_TABLE = "rsvlm_index_meta"
EMBEDDINGS_TABLE = "rsvlm_index_embeddings"
INDEX_SUFFIX = ".rsvlm-index.gpkg"
CHUNK_ROWS = 4096
"""Tiles per BLOB: keeps every BLOB far below SQLite's 1 GB limit however large the index."""
LEVEL_CODES = ("region", "object")


def default_index_path(folder: str | Path, source_name: str, source_id: str, bundle: ModelBundle) -> Path:
    """Where the index of a source and model goes: ``<stem>-<8 hex>.rsvlm-index.gpkg`` in ``folder``.

    The 8 hex digits hash the source identity and the model fingerprint, so each source and
    model gets its own file.
    """
    stem = re.sub(r"[^\w.-]+", "_", Path(source_name).stem).strip("._") or "raster"
    tag = hashlib.sha256(f"{source_id}\n{model_fingerprint(bundle)}".encode()).hexdigest()[:8]
    return Path(folder) / f"{stem}-{tag}{INDEX_SUFFIX}"


def find_index(folder: str | Path, source_id: str, bundle: ModelBundle) -> Path | None:
    """The newest index in ``folder`` of this source built with this model, or None."""
    fingerprint = model_fingerprint(bundle)
    best: tuple[str, Path] | None = None
    for path in Path(folder).glob(f"*{INDEX_SUFFIX}"):
        try:
            meta = read_meta(path)
        except RsVlmError:
            continue
        if meta.get("source_id") == source_id and meta.get("model_fingerprint") == fingerprint \
                and meta.get("format_version") in SUPPORTED_VERSIONS:
            created = str(meta.get("created", ""))
            if best is None or created > best[0]:
                best = (created, path)
    return best[1] if best else None


def build_index(source: RasterSource, bundle: ModelBundle, path: str | Path, extent: Extent | None = None,
                config: JobConfig | None = None, progress: ProgressBackend | None = None,
                source_id: str | None = None, dtype: str = "float16") -> Path:
    """Encode a raster once and write its tiles and embeddings to an index GeoPackage.

    Args:
        source: The raster.
        bundle: The model.
        path: The index to write (``.gpkg``); written atomically, so a cancelled or failed
            build leaves no file (or the previous one).
        extent: Part of the raster, in its CRS; None for all of it.
        config: Plan and mask settings (``config.plan``, ``config.mask_wkb``, ``config.batch_size``);
            with ``config.guide_query`` the plan is text-guided (refined down to native resolution
            where that text scores, see :mod:`locate.guided`), else by complexity.
        progress: Receives stages and progress; asked for cancellation between batches.
        source_id: The source's identity (a QGIS layer's source URI); by default the file's
            resolved path, size and modification time.
        dtype: "float16" (half the size) or "float32" for the stored embeddings.

    Returns:
        The path written.

    Raises:
        RsVlmError: The output is not a GeoPackage, the extent misses the raster, or writing failed.
        CancelledError: The user cancelled.
    """
    target = Path(path)
    if target.suffix.lower() != ".gpkg":
        raise RsVlmError(f"The index {target} is not a GeoPackage; give a file name ending in .gpkg.")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, not {dtype!r}.")
    config = config or JobConfig()
    progress = progress or NullProgress()
    start = time.perf_counter()
    guide = guide_scorer(bundle, config)
    if guide is not None:  # JobConfig.guide_query: refined where that text scores (tiles elsewhere stay coarse)
        encoding = guided_encoding(source, bundle, extent, dataclasses.replace(config, outlines=False), guide, progress,
                                   text=config.guide_query.strip())  # an index keeps no object tokens
    else:
        encoding = encode_extent(source, bundle, extent, config, progress, keep=("embedding", "regions"))
    tiles, arrays = index_tables(encoding.tiles, encoding.tiers, dtype)
    georef = source.georef
    meta = index_meta(bundle, source.name, source_id or source_identity(source), georef.crs_wkt,
                      georef.metres_per_unit, encoding.plan, len(tiles), dtype, list(source.warnings),
                      encoding.timings)
    written = write_index(target, tiles, arrays, meta, progress, start)
    progress.set_fraction(1.0)
    progress.info(f"Indexed {len(tiles)} tiles of {source.name} in {written}.")
    return written


def index_tables(encoded: list[EncodedTile], tiers: dict[str, np.ndarray],
                 dtype: str = "float16") -> tuple[list[IndexTile], dict[str, np.ndarray]]:
    """The index rows of encoded tiles (their regions and leaves, in order) and their arrays.

    Args:
        encoded: The encoded tiles (:attr:`..encoding.tiles.Encoding.tiles`).
        tiers: Their ``embedding`` and ``regions`` tokens, one row per encoded tile.
        dtype: How the embeddings are stored.
    """
    rows = [(i, tile_level(t)) for i, t in enumerate(encoded) if tile_level(t) is not None]
    picked = [i for i, _ in rows]
    tiles = [IndexTile(k, encoded[i].key, level, encoded[i].depth, encoded[i].extent,
                       encoded[i].gsd_m, encoded[i].complexity) for k, (i, level) in enumerate(rows)]
    arrays = {
        "embedding": tiers["embedding"][picked].astype(dtype),
        "regions": tiers["regions"][picked].astype(dtype),
        "extent": np.array([[t.extent.xmin, t.extent.ymin, t.extent.xmax, t.extent.ymax] for t in tiles],
                           np.float64).reshape(-1, 4),
        "depth": np.array([t.depth for t in tiles], np.int16),
        "level": np.array([LEVEL_CODES.index(t.level) for t in tiles], np.int8),
        "gsd_m": np.array([t.gsd_m for t in tiles], np.float64),
        "complexity": np.array([t.complexity for t in tiles], np.float32),
        "key": np.array([t.key for t in tiles], dtype=str),
    }
    return tiles, arrays


def index_meta(bundle: ModelBundle, source_name: str, source_id: str, crs_wkt: str | None, metres_per_unit: float,
               plan: TilePlan, n_tiles: int, dtype: str, warnings: list[str], timings: dict) -> dict:
    """The metadata table of an index of one raster (see :func:`build_index`)."""
    return {
        "format": INDEX_FORMAT, "format_version": INDEX_VERSION,
        "model_name": bundle.name, "model_fingerprint": model_fingerprint(bundle), "embed_dim": bundle.embed_dim,
        "source_name": source_name, "source_id": source_id,
        "crs_wkt": crs_wkt, "metres_per_unit": metres_per_unit,
        "extent": list(dataclasses.astuple(plan.extent)), "native_gsd": plan.native_gsd,
        "plan_config": dataclasses.asdict(plan.config), "plan_summary": plan.summary(),
        "tiles": n_tiles, "dtype": dtype, "warnings": list(warnings),
        "encode_timings": {k: v for k, v in timings.items() if isinstance(v, (int, float))},
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }


def write_index(target: Path, tiles: list[IndexTile], arrays: dict[str, np.ndarray], meta: dict,
                progress: ProgressBackend, start: float) -> Path:
    """Write an index GeoPackage atomically: the ``index_tiles`` layer, then the metadata and
    embedding tables (``meta["build_s"]`` counted from ``start``, a ``time.perf_counter()``)."""
    check_canceled(progress)
    progress.set_stage(f"Writing the index of {len(tiles)} tiles")

    def add_tables(temporary: Path) -> None:
        check_canceled(progress)
        meta["build_s"] = round(time.perf_counter() - start, 3)
        _write_tables(temporary, meta, arrays)
        check_canceled(progress)

    return write_geopackage(target, {TILES_LAYER: tiles}, meta.get("crs_wkt"), kinds={TILES_LAYER: IndexTile},
                            finish=add_tables)


class EmbeddingIndex:
    """An index opened for searching: tile geometry and a normalised (N x 14, D) token matrix.

    Attributes:
        path: The index file.
        meta: Its metadata (see :func:`build_index`).
        tokens: (N * 14, D) float32: each tile's global token then its 13 region tokens, normalised.
        embeddings: (N, D) float32 the tiles' global tokens (for captions).
        extents, depths, levels, gsd_m, complexity, keys: Per-tile columns, in tile_id order.
    """

    def __init__(self, path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.meta = meta
        embedding = arrays["embedding"].astype(np.float32)
        regions = arrays["regions"].astype(np.float32)
        tokens = np.concatenate([embedding[:, None], regions], axis=1)
        self.tokens_per_tile = tokens.shape[1]
        tokens = tokens.reshape(-1, tokens.shape[-1])
        tokens /= np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
        self.tokens = tokens
        self.embeddings = tokens.reshape(len(embedding), self.tokens_per_tile, -1)[:, 0]
        self.extents = arrays["extent"]
        self.depths = arrays["depth"]
        self.levels = arrays["level"]
        self.gsd_m = arrays["gsd_m"]
        self.complexity = arrays["complexity"]
        self.keys = arrays["key"]
        self.sources = arrays.get("source")  # an index of several rasters: each tile's row of meta["sources"]
        self._plan: TilePlan | None = None
        self._checked: ModelBundle | None = None

    @classmethod
    def open(cls, path: str | Path) -> "EmbeddingIndex":
        """Read an index file.

        Raises:
            RsVlmError: The file is missing, is not an RS-VLM index, or is of an unsupported version.
        """
        path = Path(path)
        meta = read_meta(path)
        version = meta.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise RsVlmError(
                f"{path} is an RS-VLM index of version {version!r}, which this plugin cannot read (it reads "
                f"version {', '.join(map(str, SUPPORTED_VERSIONS))}); build the index again with this plugin.")
        with _connect(path) as db:
            arrays = _read_arrays(db, path)
        try:
            if np.ndim(arrays.get("embedding", ())) == 0 or len(arrays.get("embedding", ())) != meta.get("tiles"):
                raise RsVlmError(f"The index {path} is incomplete (its embeddings are missing or cut short); "
                                 "build it again.")
            _check_arrays(path, meta, arrays)
            index = cls(path, meta, arrays)
            _ = index.plan  # built now, so that the first query is as fast as the others
        except RsVlmError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise _damaged(path, f"its metadata does not fit its tiles: {exc}") from exc
        return index

    def __len__(self) -> int:
        return len(self.extents)

    @property
    def crs_wkt(self) -> str | None:
        """The CRS of the tile extents."""
        return self.meta.get("crs_wkt")

    @property
    def source_name(self) -> str:
        """Name of the indexed raster."""
        return str(self.meta.get("source_name", ""))

    @property
    def plan(self) -> TilePlan:
        """The indexed tiles as a plan (regions and leaves; leaves marked), for result summaries."""
        if self._plan is None:
            config = PlanConfig(**self.meta["plan_config"])
            nodes = [Tile(str(self.keys[i]), self.extent(i), int(self.depths[i]),
                          max(self.extent(i).width, self.extent(i).height) / config.tile_size,
                          float(self.complexity[i]), LEVEL_CODES[self.levels[i]] == "object")
                     for i in range(len(self))]
            self._plan = TilePlan(Extent(*self.meta["extent"]), float(self.meta["native_gsd"]), config, nodes)
        return self._plan

    def tile_source(self, i: int) -> str:
        """Name of the raster tile ``i`` comes from (an index may hold several, see :mod:`distributed`)."""
        if self.sources is None:
            return self.source_name
        return str(self.meta["sources"][int(self.sources[i])]["name"])

    def extent(self, i: int) -> Extent:
        """The footprint of tile ``i``."""
        return Extent(*map(float, self.extents[i]))

    def check_model(self, bundle: ModelBundle) -> None:
        """Raise a sentence-error unless the index was built with this model."""
        if bundle is self._checked:
            return
        if self.meta.get("model_fingerprint") != model_fingerprint(bundle):
            built, now = self.meta.get("model_name", "another model"), bundle.name
            same = " (the same name, but exported again)" if built == now else ""
            raise RsVlmError(
                f"The index {self.path.name} was built with the model {built}, not with {now}{same}; "
                "build the index again with this model, or search it with the model it was built with.")
        self._checked = bundle

    def scores(self, query: np.ndarray | QueryScorer) -> np.ndarray:
        """Each tile's score for a normalised query embedding (its best token's cosine similarity)
        or for a query scorer (its best token's score, see :meth:`expansion.ExpandedQueries.scorer`).

        The same as :func:`.query.tile_scores` without a bundle, over the (tiles x 14, D) tokens at once.
        """
        score = as_scorer(query if callable(query) else np.asarray(query, np.float32))
        return score(self.tokens).reshape(len(self), self.tokens_per_tile).max(1)

    def within(self, extent: Extent) -> np.ndarray:
        """Rows of the tiles that overlap ``extent`` (in the index's CRS)."""
        e = self.extents
        return np.flatnonzero((e[:, 0] < extent.xmax) & (e[:, 2] > extent.xmin)
                              & (e[:, 1] < extent.ymax) & (e[:, 3] > extent.ymin))

    def top(self, scores: np.ndarray, max_hits: int, min_score: float | None = None,
            rows: np.ndarray | None = None) -> np.ndarray:
        """Rows of the best ``max_hits`` tiles (among ``rows``, default all), best first, ties to the
        lower row (as ``jobs.search.search``)."""
        rows = np.arange(len(scores)) if rows is None else np.asarray(rows)
        if min_score is not None:
            rows = rows[scores[rows] >= min_score]
        if len(rows) > max_hits > 0:
            kth = np.partition(scores[rows], len(rows) - max_hits)[len(rows) - max_hits]
            rows = rows[scores[rows] >= kth]  # every tile tied with the k-th stays for the tie-break
        order = np.lexsort((rows, -scores[rows]))
        return rows[order][:max(0, max_hits)]

    def search(self, bundle: ModelBundle, query: str, max_hits: int = 10, min_score: float | None = None,
               top_concepts: int = 3, extent: Extent | None = None, knowledge: bool = True) -> SearchResult:
        """Rank the indexed tiles by similarity to a text (no raster access).

        Args:
            extent: Only tiles overlapping this area (the index's CRS) compete; None for all.
            knowledge: Score the text with its knowledge-base parts, as :func:`.search.search`
                does with ``JobConfig.knowledge``.

        Raises:
            RsVlmError: The query is empty, or the index was built with another model.
        """
        text = check_query(query)
        self.check_model(bundle)
        t0 = time.perf_counter()
        scorer = expand_queries(bundle, [text], knowledge=knowledge).scorer(0)
        familiar = query_familiarity(bundle, [text], CLASS_PROMPTS)[0]  # as search.search reports it
        t1 = time.perf_counter()
        scores = self.scores(scorer)
        rows = self.top(scores, max_hits, min_score, None if extent is None else self.within(extent))
        t2 = time.perf_counter()
        levels = [LEVEL_CODES[self.levels[i]] for i in rows]
        captions = composed_captions(bundle, self.embeddings[rows], top_concepts, levels) if len(rows) else []
        t3 = time.perf_counter()
        hits = [SearchHit(query=text, rank=rank, score=float(scores[i]), level=levels[rank - 1],
                          depth=int(self.depths[i]), extent=self.extent(i), gsd_m=float(self.gsd_m[i]),
                          caption=captions[rank - 1], source=self.tile_source(i), familiar=familiar.score)
                for rank, i in enumerate(rows, start=1)]
        timings = {"text_s": t1 - t0, "score_s": t2 - t1, "caption_s": t3 - t2, "tiles": len(self)}
        warnings = text_warnings(bundle, text) + ([familiar.message] if familiar.message else [])
        return SearchResult(text, hits, [], self.plan, self.crs_wkt, warnings, timings)


# Storage -------------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise RsVlmError(f"{path} cannot be opened ({exc}); check the file and its permissions.") from exc


def _not_an_index(path: Path) -> RsVlmError:
    return RsVlmError(
        f"{path} is not an RS-VLM embedding index; choose a file written by \"Build embedding index\" "
        "(or `python -m rs_vlm_plugin index`), or build one.")


def _damaged(path: Path, detail: str) -> RsVlmError:
    return RsVlmError(f"The index {path} is damaged or incomplete ({detail}); build it again.")


def read_meta(path: Path) -> dict:
    """The metadata table of an index (sentence-errors for a missing file or another kind of file)."""
    if not path.is_file():
        raise RsVlmError(f"The index file {path} does not exist; check the path or build the index first.")
    try:
        with _connect(path) as db:
            rows = db.execute(f"SELECT key, value FROM {META_TABLE}").fetchall()
    except sqlite3.DatabaseError as exc:
        if "malformed" in str(exc):  # an index cut short or overwritten in part
            raise _damaged(path, str(exc)) from exc
        raise _not_an_index(path) from exc  # not SQLite, or SQLite without the table
    except sqlite3.Error as exc:
        raise _not_an_index(path) from exc
    try:
        meta = {key: json.loads(value) for key, value in rows}
    except (TypeError, ValueError) as exc:
        raise _not_an_index(path) from exc
    if meta.get("format") != INDEX_FORMAT:
        raise _not_an_index(path)
    return meta


def _read_arrays(db: sqlite3.Connection, path: Path) -> dict[str, np.ndarray]:
    try:
        rows = db.execute(f"SELECT name, chunk, data FROM {EMBEDDINGS_TABLE} ORDER BY name, chunk").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, str(exc)) from exc
    except sqlite3.Error as exc:
        raise _not_an_index(path) from exc
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for name, _, data in rows:
            parts.setdefault(str(name), []).append(np.load(io.BytesIO(data), allow_pickle=False))
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
    except (OSError, EOFError, ValueError, TypeError) as exc:  # what np.load and concatenate raise on bad bytes
        raise _damaged(path, f"an embedding table cannot be read: {exc}") from exc


_TILE_COLUMNS = {"extent": 2, "depth": 1, "level": 1, "gsd_m": 1, "complexity": 1, "key": 1}
"""Per-tile arrays of an index besides the embeddings, with their number of dimensions."""


def _check_arrays(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Raise a sentence-error unless every array of an index has one row per tile and the right shape."""
    n, dim = len(arrays["embedding"]), meta.get("embed_dim")
    problems = []
    if arrays["embedding"].ndim != 2 or (dim is not None and arrays["embedding"].shape[1] != dim):
        problems.append(f"embeddings of shape {arrays['embedding'].shape}")
    regions = arrays.get("regions")
    if (regions is None or regions.ndim != 3 or regions.shape[0] != n
            or regions.shape[2:] != arrays["embedding"].shape[1:]):
        problems.append("region embeddings missing or of another shape")
    for name, ndim in _TILE_COLUMNS.items():
        column = arrays.get(name)
        if column is None or len(column) != n or column.ndim != ndim:
            problems.append(f"the column {name} missing or of another length")
    if not problems and not np.isin(arrays["level"], range(len(LEVEL_CODES))).all():
        problems.append("unknown tile levels")
    sources = arrays.get("source")
    if sources is not None and (sources.ndim != 1 or len(sources) != n or not isinstance(meta.get("sources"), list)
                                or not np.isin(sources, range(len(meta["sources"]))).all()):
        problems.append("the column source missing its rasters or of another length")
    if not problems and arrays["extent"].shape[1:] != (4,):
        problems.append("tile extents of another shape")
    if problems:
        raise _damaged(path, "; ".join(problems))


def _write_tables(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Add the metadata and embedding tables to a closed GeoPackage."""
    db = sqlite3.connect(str(path))
    try:
        with db:
            for table in (META_TABLE, EMBEDDINGS_TABLE):  # an index written over an older one
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute(f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.executemany(f"INSERT INTO {META_TABLE} VALUES (?, ?)",
                           [(key, json.dumps(value)) for key, value in meta.items()])
            db.execute(f"CREATE TABLE {EMBEDDINGS_TABLE} (name TEXT NOT NULL, chunk INTEGER NOT NULL, "
                       "data BLOB NOT NULL, PRIMARY KEY (name, chunk))")
            for name, array in arrays.items():
                for chunk, first in enumerate(range(0, max(1, len(array)), CHUNK_ROWS)):
                    buffer = io.BytesIO()
                    np.save(buffer, np.ascontiguousarray(array[first:first + CHUNK_ROWS]), allow_pickle=False)
                    db.execute(f"INSERT INTO {EMBEDDINGS_TABLE} VALUES (?, ?, ?)", (name, chunk, buffer.getvalue()))
    finally:
        db.close()
