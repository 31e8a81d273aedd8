"""Prompt tokenisation to the model's fixed text length.

Wraps a 🤗 tokenizer loaded by hub name or local path (BART's for the 2021 model, the checkpoint's own BPE
for dalle-mini/mega). Every batch is padded to exactly `max_length`, so shapes never change (XLA).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase


class TextTokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad token; DalleBart pads prompts to a fixed length, so "
                             "save the tokenizer with pad_token set (BART's is '<pad>')")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._warned_truncation = False

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int, **kwargs) -> "TextTokenizer":
        """Load by hub name (e.g. `facebook/bart-large-cnn`) or local directory."""
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            raise OSError(f"could not load a tokenizer from {name_or_path!r}: pass a hub name or a directory "
                          f"holding tokenizer.json / vocab files ({err})") from err
        return cls(tok, max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, (len(prompts), max_length) each. Overlong prompts are cut with
        one warning per tokenizer; the empty string is allowed (it is the unconditional prompt)."""
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts, not a single string (wrap it: [prompt])")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts given: pass at least one string ('' is the unconditional prompt)")
        full = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        too_long = [p for p, ids in zip(prompts, full) if len(ids) > self.max_length]
        if too_long and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"{len(too_long)} prompt(s) exceed the {self.max_length}-token text length and were "
                          f"truncated, e.g. {too_long[0][:60]!r}", stacklevel=2)
        enc = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def unconditional(self) -> dict[str, torch.Tensor]:
        """The empty prompt, used for super-conditioning (as the reference does)."""
        enc = self([""])
        return {"uncond_input_ids": enc["input_ids"], "uncond_attention_mask": enc["attention_mask"]}

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)
