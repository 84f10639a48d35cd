"""Prompt -> UMT5 embeddings, with a bounded cache so a prompt switch never re-encodes a known prompt."""

from __future__ import annotations

import html
import logging
import queue
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future

import ftfy  # repairs mojibake the way the reference pipeline does (a declared dependency)
import torch

logger = logging.getLogger(__name__)


def clean_prompt(text: str) -> str:
    """Normalise a prompt as the reference pipeline does (ftfy, double HTML unescape, single spaces)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptEncoder:
    """Encodes prompts with UMT5 and remembers the last `cache_size` of them (LRU, keyed by text).

    With `background=True` every encode runs on one worker thread (its own CUDA stream on a
    GPU): `prefetch()` queues a prompt the moment it is scheduled and returns at once, and
    `get()` of a queued prompt waits for that same encode instead of running another one,
    so the chunk that needs it finds it ready and the chunk loop never runs the encoder.
    At most `max_pending` prompts wait for the worker; further prefetches are refused
    (logged) and encoded when used.
    """

    def __init__(self, tokenizer, text_encoder, *, max_length: int, cache_size: int, device, dtype: torch.dtype,
                 background: bool = False, max_pending: int = 8):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.cache_size = cache_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.background = background
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._stream = None
        self.encode_calls = 0
        """How many times the text encoder actually ran (tests check that the cache works)."""

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._cache

    def queued(self, prompt: str) -> bool:
        """True if `prompt` is cached or waiting for / being encoded by the worker."""
        with self._lock:
            return prompt in self._cache or prompt in self._pending

    def prefetch(self, prompt: str) -> bool:
        """Queue `prompt` for background encoding; True if it is cached or queued. Never blocks."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not self.background:
            return False
        with self._lock:
            if prompt in self._cache or prompt in self._pending:
                return True
            future: Future = Future()
            try:
                self._queue.put_nowait((prompt, future))
            except queue.Full:
                logger.info("prompt prefetch queue full (%d); %r is encoded when used", self._queue.maxsize, prompt[:60])
                return False
            self._pending[prompt] = future
            self._start_worker()
        return True

    def get(self, prompt: str) -> torch.Tensor:
        """(1, max_length, text_dim) embeddings, zero past the prompt's tokens, in the transformer dtype."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                return hit
            future = self._pending.get(prompt)
        if future is not None:
            return future.result()
        if self.background and self.prefetch(prompt):
            return self.get(prompt)
        return self._store(prompt, self._encode(prompt))

    def close(self) -> None:
        """Stop the worker after the queued prompts."""
        if self._thread is not None:
            self._queue.put((None, None))
            self._thread.join()
            self._thread = None

    def _store(self, prompt: str, embeds: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._cache[prompt] = embeds
            self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return embeds

    def _start_worker(self) -> None:
        if self._thread is None:
            if self.device.type == "cuda":
                self._stream = torch.cuda.Stream(device=self.device)
            self._thread = threading.Thread(target=self._work, name="helios-text", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            prompt, future = self._queue.get()
            if prompt is None:
                return
            try:
                if self._stream is not None:
                    with torch.cuda.stream(self._stream):
                        embeds = self._encode(prompt)
                    self._stream.synchronize()  # the chunk loop reads it on another stream
                else:
                    embeds = self._encode(prompt)
            except BaseException as exc:  # noqa: BLE001 - raised to whoever gets this prompt
                with self._lock:
                    self._pending.pop(prompt, None)
                future.set_exception(exc)
                continue
            self._store(prompt, embeds)
            with self._lock:
                self._pending.pop(prompt, None)
            future.set_result(embeds)

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
