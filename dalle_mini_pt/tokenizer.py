"""Prompt tokenisation to the model's fixed text length.

Wraps a 🤗 tokenizer loaded by hub name or local path (BART's for the 2021 model, the checkpoint's own BPE
for dalle-mini/mega). Every batch is padded to exactly `max_length`, so shapes never change (XLA).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .hub.dallebart_flax import TEXT_LENGTH_2021
from .hub.files import CONFIG_NAME, load_config_json, open_saved


class TextTokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer has no pad token; DalleBart pads prompts to a fixed length, so "
                             "save the tokenizer with pad_token set (BART's is '<pad>')")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.id_limit: Optional[int] = None  # set by fit_to: ids at or above it have no embedding row
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

    def fit_to(self, rows: int, key: str) -> None:
        """Let only ids below `rows` (the model's embedding rows, `key`) reach the model. A larger tokenizer
        is accepted when its extra ids are special tokens that ordinary text never produces: BART-large-cnn's
        tokenizer has 50265 entries, id 50264 being `<mask>`, while the 2021 model embeds 50264. A text that
        produces one anyway is refused by `__call__`, naming it."""
        special = set(self.tokenizer.all_special_ids)
        special |= {i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special}
        ordinary = [i for i in range(rows, self.vocab_size) if i not in special]
        if ordinary:
            raise ValueError(f"the tokenizer has {self.vocab_size} tokens but the model embeds only {rows} "
                             f"({key}); ids {ordinary[:5]}{' …' if len(ordinary) > 5 else ''} are ordinary "
                             f"tokens text produces. Raise {key} or use the model's own tokenizer "
                             "(data.tokenizer)")
        self.id_limit = rows if rows < self.vocab_size else None

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
            warnings.warn(f"{len(too_long)} prompt(s) exceed the {self.max_length}-token text length and "
                          f"were truncated, e.g. {too_long[0][:60]!r}", stacklevel=2)
        enc = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        if self.id_limit is not None and enc["input_ids"].max() >= self.id_limit:
            row, column = (enc["input_ids"] >= self.id_limit).nonzero()[0].tolist()
            token = self.tokenizer.convert_ids_to_tokens(int(enc["input_ids"][row, column]))
            raise ValueError(f"text {prompts[row]!r} contains {token!r}, a token the model has no embedding "
                             f"row for (it embeds ids below {self.id_limit}); take it out of the text")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def unconditional(self) -> dict[str, torch.Tensor]:
        """The empty prompt, used for super-conditioning (as the reference does)."""
        enc = self([""])
        return {"uncond_input_ids": enc["input_ids"], "uncond_attention_mask": enc["attention_mask"]}

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)


def load_tokenizer(name_or_path, *, max_length: Optional[int] = None, revision: Optional[str] = None,
                   local_files_only: bool = False, cache_dir=None, token=None) -> TextTokenizer:
    """The prompt tokenizer saved next to a model (ours or the reference's), padding to the model's text
    length, read from its config.json unless `max_length` is given."""
    hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token)
    if max_length is None:
        source = open_saved(name_or_path, "a model's config.json and tokenizer files",
                            "dalle-mini/dalle-mini", **hub)
        config_path = source.file(CONFIG_NAME)
        if config_path is None:
            raise FileNotFoundError(f"{source.name}: no {CONFIG_NAME} to read the text length from; pass "
                                    "max_length=")
        values = load_config_json(config_path)
        # the 2021 model's config is BART's, which knows only its 1024-row position table
        max_length = values.get("max_text_length") or min(TEXT_LENGTH_2021, values["max_position_embeddings"])
    return TextTokenizer.from_pretrained(str(name_or_path), max_length, **hub)
