"""A HF ``tokenizers`` tokenizer equivalent to open_clip's ``SimpleTokenizer``.

Built from open_clip's BPE file (``bpe_simple_vocab_16e6.txt.gz``, fetched into ``.cache/`` by
``python3 build.py setup``), so the plugin tokenizes with the ``tokenizers`` package it already
uses. Same vocabulary and merges (49408 ids; start of text 49406, end of text 49407), same
cleaning (NFC, runs of whitespace to one space, stripped, lower-cased) and the same word pattern.
Not reproduced: ``ftfy.fix_text`` (repairs mojibake, uncurls quotes) and HTML unescaping, which
open_clip applies first; plain text is unaffected.
"""

from __future__ import annotations

import gzip
from pathlib import Path

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# Where set-up extracts it in a checkout; a packaged plugin may carry it in resources/open_clip/.
BPE_CANDIDATES = (Path(__file__).resolve().parents[3] / ".cache" / "open_clip" / BPE_NAME,
                  Path(__file__).resolve().parents[2] / "resources" / "open_clip" / BPE_NAME)
DEFAULT_BPE = next((p for p in BPE_CANDIDATES if p.exists()), BPE_CANDIDATES[0])
SOT, EOT = "<start_of_text>", "<end_of_text>"
CONTEXT_LENGTH = 77
# open_clip's word pattern (with its special tokens first), applied after lower-casing.
WORD_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_bpe(path: str | Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's vocabulary (token -> id) and merges from the BPE file.

    Raises:
        FileNotFoundError: With a sentence saying how to fetch the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"The CLIP BPE vocabulary {path} is missing; run `python3 build.py setup` (it "
                                "extracts it from the open_clip_torch wheel) or pass --bpe PATH.")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(bpe_path: str | Path = DEFAULT_BPE):
    """The CLIP tokenizer as a ``tokenizers.Tokenizer`` (save it with ``.save(path)``).

    It adds the start and end tokens and, once truncation is enabled at 77 (as
    ``core.bundle.load_tokenizer`` does), keeps the first 75 word pieces, like open_clip.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = read_bpe(bpe_path)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(SOT, normalized=False), AddedToken(EOT, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single=f"{SOT} $A {EOT}",
                                                       special_tokens=[(SOT, vocab[SOT]), (EOT, vocab[EOT])])
    return tok
