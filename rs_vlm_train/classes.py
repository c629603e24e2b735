"""Classes of the training folders as concepts: leave-classes-out splits and caption truthfulness.

Every class label of every source (UCM folder names, RESISC folders, VHR-10 object classes,
RSICD / RSITMD file-name classes) maps to one *concept group*.  A class shared by two sources
(UCM ``forest`` and RESISC ``forest``, UCM ``airplane`` and VHR-10 ``airplane``) is one group,
so holding a class out holds it out of every source at once.

The leave-classes-out protocol (generalised zero-shot): a seeded draw of ``n_ucm`` classes among
the UCM classes that no RESISC class shares and ``n_resisc`` among the RESISC classes that no UCM
class shares; every image, caption, prompt, mosaic, box and box sentence of those groups leaves
training.  The text-only caption corpora stay (they pair no image with anything; the frozen text
tower knows every word anyway, as a CLIP text tower does).

Caption truthfulness: a decoded caption is *truthful* for an image when it names the image's
class or one of its knowledge-base synonyms (words compared after a light plural stemming;
generic words such as "area" or "land" may be missing: "an industrial zone" names
"industrial area").
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

KNOWLEDGE_BASE = Path(__file__).resolve().parents[1] / "rs_vlm_plugin" / "resources" / "knowledge_base.json"

# Source label -> concept group, where it is not the label itself.
GROUPS = {
    "ucm:agricultural": "farmland", "resisc:farmland": "farmland", "rsicd:farmland": "farmland",
    "ucm:denseresidential": "residential", "ucm:mediumresidential": "residential",
    "ucm:sparseresidential": "residential", "resisc:residential": "residential",
    "rsicd:denseresidential": "residential", "rsicd:mediumresidential": "residential",
    "rsicd:sparseresidential": "residential",
    "ucm:airplane": "airplane", "extra:airplane": "airplane", "vhr:airplane": "airplane", "rsicd:plane": "airplane",
    "extra:airport": "airport", "rsicd:airport": "airport",
    "ucm:storagetanks": "storagetanks", "vhr:storage tank": "storagetanks", "rsicd:storagetanks": "storagetanks",
    "ucm:tenniscourt": "tenniscourt", "vhr:tennis court": "tenniscourt",
    "ucm:baseballdiamond": "baseballdiamond", "vhr:baseball diamond": "baseballdiamond",
    "rsicd:baseballfield": "baseballdiamond",
    "ucm:harbor": "harbor", "vhr:harbor": "harbor", "vhr:ship": "harbor", "rsicd:port": "harbor", "rsicd:boat": "harbor",
    "resisc:commercial_area": "commercial_area", "rsicd:commercial": "commercial_area",
    "resisc:industrial_area": "industrial_area", "rsicd:industrial": "industrial_area",
    "ucm:parkinglot": "parkinglot", "rsicd:parking": "parkinglot",
    "vhr:ground track field": "ground_track_field", "rsicd:playground": "ground_track_field",
    "vhr:bridge": "bridge", "rsicd:bridge": "bridge",
    "rsicd:pond": "lake",
}
UCM_NAMES = {"agricultural": "farmland", "baseballdiamond": "baseball diamond", "denseresidential": "dense residential area",
             "golfcourse": "golf course", "mediumresidential": "medium residential area",
             "mobilehomepark": "mobile home park", "parkinglot": "parking lot",
             "sparseresidential": "sparse residential area", "storagetanks": "storage tanks",
             "tenniscourt": "tennis court", "buildings": "buildings", "chaparral": "chaparral",
             "freeway": "freeway", "harbor": "harbor", "intersection": "intersection", "overpass": "overpass",
             "river": "river", "runway": "runway", "airplane": "airplanes", "beach": "beach", "forest": "forest"}
# AID's labels (its file-name prefixes, as in RSICD's file names) that read better as other words.
AID_NAMES = {"bareland": "bare land", "baseballfield": "baseball field", "railwaystation": "railway station",
             "commercial": "commercial area", "industrial": "industrial area", "parking": "parking lot",
             "storagetanks": "storage tanks", "denseresidential": "dense residential area",
             "mediumresidential": "medium residential area", "sparseresidential": "sparse residential area"}
SHARED_UCM_RESISC = {"farmland", "residential", "beach", "forest", "river"}
GENERIC_WORDS = {"area", "areas", "land", "zone", "district", "scene", "region", "field", "fields", "a", "an", "the", "of"}


def readable(name: str) -> str:
    """A class folder name as words ("commercial_area" -> "commercial area")."""
    return UCM_NAMES.get(name) or AID_NAMES.get(name) or name.replace("_", " ")


def article(phrase: str) -> str:
    """``phrase`` with "a"/"an" in front."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def group(source: str, label: str) -> str:
    """The concept group of a label of a source ("ucm", "resisc", "extra", "vhr", "rsicd", "aid").

    AID's labels are RSICD's (its images are RSICD's), so both map alike.
    """
    return GROUPS.get(f"{'rsicd' if source == 'aid' else source}:{label}", label)


def leave_out_choice(ucm_classes: list[str], resisc_classes: list[str], n_ucm: int = 6, n_resisc: int = 3,
                     seed: int = 0, aid_classes: list[str] | None = None, other_classes: dict | None = None,
                     n_aid: int = 8) -> dict:
    """The seeded leave-classes-out choice: UCM, RESISC and AID classes whose groups leave training.

    Returns ``{"seed", "ucm", "resisc", "groups"}`` (and ``"aid"`` when AID classes are given);
    only classes no other of the two datasets shares are drawn, so an unseen class is unseen in
    both. AID's ``n_aid`` are drawn (after the other two, so their draws do not move) among the
    AID classes whose group no UCM, RESISC or ``other_classes`` (source -> labels, e.g. the
    RESISC45 extra classes) class shares; AID classes of groups already drawn leave too.
    """
    ucm_only = sorted(c for c in set(ucm_classes) if group("ucm", c) not in SHARED_UCM_RESISC)
    resisc_only = sorted(c for c in set(resisc_classes) if group("resisc", c) not in SHARED_UCM_RESISC)
    rng = np.random.default_rng(seed)
    ucm = sorted(rng.choice(ucm_only, min(n_ucm, len(ucm_only)), replace=False).tolist())
    resisc = sorted(rng.choice(resisc_only, min(n_resisc, len(resisc_only)), replace=False).tolist())
    groups = {group("ucm", c) for c in ucm} | {group("resisc", c) for c in resisc}
    choice = {"seed": seed, "ucm": ucm, "resisc": resisc}
    if aid_classes:
        taken = {group("ucm", c) for c in ucm_classes} | {group("resisc", c) for c in resisc_classes}
        taken |= {group(source, c) for source, labels in (other_classes or {}).items() for c in labels}
        aid_only = sorted(c for c in set(aid_classes) if group("aid", c) not in taken)
        aid = sorted(rng.choice(aid_only, min(n_aid, len(aid_only)), replace=False).tolist())
        groups |= {group("aid", c) for c in aid}
        choice["aid"] = aid
        choice["aid_unseen"] = sorted(c for c in set(aid_classes) if group("aid", c) in groups)
    choice["groups"] = sorted(groups)
    return choice


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-case, stemmed words of a text."""
    return [_stem(w) for w in re.findall(r"[a-z]+", text.lower())]


@lru_cache(maxsize=4)
def knowledge_terms(kb_path: Path = KNOWLEDGE_BASE) -> dict[str, list[str]]:
    """Concept id -> its name, phrase and synonyms, from the knowledge base."""
    data = json.loads(Path(kb_path).read_text(encoding="utf-8"))
    return {c["id"]: [c["name"], c.get("phrase") or c["name"], *c.get("synonyms", [])] for c in data["concepts"]}


def class_terms(source: str, label: str, terms: dict[str, list[str]]) -> list[list[str]]:
    """Word lists (stemmed, generic words dropped unless nothing is left) that name a class."""
    names = [label.replace("_", " "), readable(label), *terms.get(label, []), *terms.get(group(source, label), [])]
    out = []
    for name in names:
        ws = words(name)
        specific = [w for w in ws if w not in GENERIC_WORDS] or ws
        if specific and specific not in out:
            out.append(specific)
    return out


def names_class(caption: str, term_lists: list[list[str]]) -> bool:
    """Whether a caption contains every word of one of the term lists, in order and adjacent."""
    cw = words(caption)
    for term in term_lists:
        n = len(term)
        if any(cw[i:i + n] == term for i in range(len(cw) - n + 1)):
            return True
    return False


def truthful_hits(captions: list[str], labels: list[str], source: str, kb_path: Path = KNOWLEDGE_BASE) -> np.ndarray:
    """Whether each caption names its image's class (bool array)."""
    terms = knowledge_terms(kb_path)
    lists = {c: class_terms(source, c, terms) for c in set(labels)}
    return np.asarray([names_class(cap, lists[lab]) for cap, lab in zip(captions, labels)], bool)


def truthfulness(captions: list[str], labels: list[str], source: str, kb_path: Path = KNOWLEDGE_BASE) -> dict:
    """Share (percent) of captions that name their image's class, overall and per class."""
    hits = truthful_hits(captions, labels, source, kb_path)
    labels_a = np.asarray(labels)
    per_class = {c: float(100 * hits[labels_a == c].mean()) for c in sorted(set(labels))}
    return {"images": len(captions), "truthful": float(100 * hits.mean()) if len(hits) else 0.0, "per_class": per_class}


def generalised_zero_shot(pred: np.ndarray, truth: np.ndarray, classes: list[str], unseen: set[str]) -> dict:
    """Seen / unseen / harmonic-mean accuracy (percent, mean of per-class accuracies) over all classes."""
    per_class = {c: float(100 * np.mean(pred[truth == k] == k)) for k, c in enumerate(classes) if np.any(truth == k)}
    seen_acc = [a for c, a in per_class.items() if c not in unseen]
    unseen_acc = [a for c, a in per_class.items() if c in unseen]
    s = float(np.mean(seen_acc)) if seen_acc else 0.0
    u = float(np.mean(unseen_acc)) if unseen_acc else 0.0
    h = 2 * s * u / (s + u) if s + u > 0 else 0.0
    return {"seen": s, "unseen": u, "H": h, "per_class": per_class, "unseen_classes": sorted(unseen)}


def weak_captions(labels: list[str], source: str, by_class: dict[str, list[str]], kb_path: Path = KNOWLEDGE_BASE,
                  min_sentences: int = 20) -> dict[str, list[str]]:
    """Captions for scene images that have only a class label, from caption corpora.

    For each label: the corpus sentences of the same class group (``by_class``: corpus class ->
    sentences) that name the class; when fewer than ``min_sentences`` do, also every other corpus
    sentence that names it ("a beach next to an island"). Only a class that no corpus sentence
    names at all gets template sentences ("there is an island in the image"): repeated fixed
    phrases over hundreds of images teach the decoder one sentence for every similar-looking
    scene (the version-3 candidate called a dark forest "an aerial image of a wetland").
    """
    terms = knowledge_terms(kb_path)
    grouped: dict[str, list[str]] = {}
    for corpus_class, sentences in by_class.items():
        grouped.setdefault(group("rsicd", corpus_class), []).extend(sentences)
    everything = sorted({s for sentences in by_class.values() for s in sentences})
    out = {}
    for label in sorted(set(labels)):
        lists = class_terms(source, label, terms)
        naming = [s for s in sorted(set(grouped.get(group(source, label), []))) if names_class(s, lists)]
        if len(naming) < min_sentences:
            chosen = set(naming)
            naming += [s for s in everything if s not in chosen and names_class(s, lists)]
        if not naming:
            name = readable(label)
            naming = [f"this is {article(name)}", f"there is {article(name)} in the image",
                      f"an aerial image of {article(name)}"]
        out[label] = naming
    return out
