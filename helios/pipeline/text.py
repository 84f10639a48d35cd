"""Prompt -> UMT5 embeddings, with a bounded cache so a prompt switch never re-encodes a known prompt."""

from __future__ import annotations

import html
import logging
import re
from collections import OrderedDict

import ftfy  # repairs mojibake the way the reference pipeline does (a declared dependency)
import torch

logger = logging.getLogger(__name__)


def clean_prompt(text: str) -> str:
    """Normalise a prompt as the reference pipeline does (ftfy, double HTML unescape, single spaces)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptEncoder:
    """Encodes prompts with UMT5 and remembers the last `cache_size` of them (LRU, keyed by text)."""

    def __init__(self, tokenizer, text_encoder, *, max_length: int, cache_size: int, device, dtype: torch.dtype):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.cache_size = cache_size
        self.device = torch.device(device)
        self.dtype = dtype
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encode_calls = 0
        """How many times the text encoder actually ran (tests check that the cache works)."""

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._cache

    def get(self, prompt: str) -> torch.Tensor:
        """(1, max_length, text_dim) embeddings, zero past the prompt's tokens, in the transformer dtype."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        embeds = self._encode(prompt)
        self._cache[prompt] = embeds
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds

    @torch.no_grad()
    def _encode(self, prompt: str) -> torch.Tensor:
        self.encode_calls += 1
        tokens = self.tokenizer(
            [clean_prompt(prompt)],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        hidden = hidden.to(device=self.device, dtype=self.text_encoder.dtype)
        # Padding positions become exact zeros, so embeddings depend only on the real tokens.
        length = int(mask[0].sum().item())
        out = torch.zeros_like(hidden)
        out[:, :length] = hidden[:, :length]
        return out.to(self.dtype)
