"""Caption normalisation, step for step as DALL·E mini's `TextNormalizer` (dalle_mini/model/text.py).

The model was trained on captions passed through these steps, so prompts must go through the same ones.
Each step is a small function `str -> str`; `TextNormalizer.steps` lists them in the order they run.

Two deliberate differences from the reference:
- CC12M `<person>` tokens are replaced by a choice drawn from a `random.Random` seeded with (seed, text),
  not from the global RNG: the same caption always gives the same output, in any process or worker.
- Hashtags are split into words only when a word-frequency list is given (`word_frequency_path`, or
  `TextNormalizer.from_hub()` for the reference's `enwiki-words-frequency.txt`, which downloads it).
  Without one, `#sunsetbeach` becomes the single word `sunsetbeach`.
"""

from __future__ import annotations

import html
import math
import random
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import emoji
import ftfy
from unidecode import unidecode

# weights are English Wikipedia counts, as in the reference
PERSON_WORDS = (("a person", 282265), ("someone", 121194), ("somebody", 12219))
TEMP = "xtokx"  # marks protected characters; letters only so that no later step touches it


class WordSplitter:
    """Split a run-together string into words (wordninja's dynamic programme, the reference's costs).

    A word's cost is log(1 + its rank) in the frequency list (one word per line, most frequent first, other
    columns ignored). Characters that are no word cost infinity, so they come out one letter at a time.
    """

    def __init__(self, words: list[str]):
        self.cost = {w: math.log(i + 1) for i, w in enumerate(words)}
        self.max_len = max(map(len, self.cost), default=1)

    @classmethod
    def from_file(cls, path: str | Path) -> "WordSplitter":
        lines = Path(path).read_text(encoding="utf8").splitlines()
        return cls([line.split()[0] for line in lines if line.strip()])

    def __call__(self, text: str) -> str:
        pieces = re.split(r"[^a-zA-Z0-9']+", text)
        return " ".join(word for piece in pieces for word in self.split(piece))

    def split(self, s: str) -> list[str]:
        # best[i] = (cost of the cheapest split of s[:i], length of its last word)
        best = [(0.0, 0)]
        for i in range(1, len(s) + 1):
            start = max(0, i - self.max_len)
            best.append(
                min((best[j][0] + self.cost.get(s[j:i].lower(), math.inf), i - j)
                    for j in reversed(range(start, i)))
            )
        words: list[str] = []  # collected back to front
        i = len(s)
        while i > 0:
            k = best[i][1]
            word = s[i - k : i]
            # reference heuristics: glue a split-off 's or digits back on; a lone apostrophe stays apart
            if word != "'" and words and (words[-1] == "'s"
                                          or (word[-1].isdigit() and words[-1][0].isdigit())):
                words[-1] = word + words[-1]
            else:
                words.append(word)
            i -= k
        return words[::-1]


def fix_text(t: str) -> str:
    return ftfy.fix_text(t)


def fix_html(t: str) -> str:
    return html.unescape(html.unescape(t))  # twice, as OpenAI CLIP does: captions are often escaped twice


def demojize(t: str) -> str:
    return emoji.demojize(t)  # before unidecode, which would drop emoji


def to_ascii(t: str) -> str:
    return unidecode(t)


def lowercase(t: str) -> str:
    return t.lower()


def replace_person_token(t: str, seed: int = 0) -> str:
    """CC12M anonymises names as `<person>`: a run of them becomes "people", each other one a person word."""
    t = re.sub(r"<person>([,\s]*(and)*[,\s]*<person>)+", " people ", t)
    if "<person>" not in t:
        return t
    rng = random.Random(f"{seed}\0{t}")
    words, weights = zip(*PERSON_WORDS)
    while "<person>" in t:
        t = t.replace("<person>", f" {rng.choices(words, weights)[0]} ", 1)
    return t


def remove_wiki_ref(t: str) -> str:
    t = re.sub(r"\A\s*\[\d+\]", "", t)  # WIT captions carry [1]-style references at either end
    return re.sub(r"\[\d+\]\s*\Z", "", t)


def remove_html_tags(t: str) -> str:
    return re.sub(r"<[^<]+?>", " ", t)


def remove_urls(t: str) -> str:
    return re.sub(r"http\S+", "", t)


def remove_comma_numbers(t: str) -> str:
    for _ in range(2):  # "1,000,000": matches overlap, so one pass leaves every other comma
        t = re.sub(r"(\d),(\d{3})", r"\1\2", t)
    return t


def protect_dots(t: str) -> str:
    return re.sub(r"(\w)\.(\w)", rf"\1{TEMP}dot{TEMP}\2", t)


def protect_quotes(t: str) -> str:
    return re.sub(r"'(?=([stdm]|(ll)|(re)|(ve))\b)", f"{TEMP}quote{TEMP}", t)


def protect_dates(t: str) -> str:
    return re.sub(r"(\d)/(\d)", rf"\1{TEMP}slash{TEMP}\2", t)


def handle_special_chars(t: str) -> str:
    t = re.sub(r"(\w)-(\w)", r"\1 \2", t)
    return re.sub(r"([%&/$*])", r" \1 ", t)


def expand_hashtags(t: str, splitter: Callable[[str], str] | None = None) -> str:
    return re.sub(r"#(\w+)", lambda m: splitter(m.group(1)) if splitter else m.group(1), t)


def ignore_chars(t: str) -> str:
    return re.sub(r"[_#\\]", " ", t)


def simplify_quotes(t: str) -> str:
    return re.sub(r"""['"`]""", ' " ', t)


def punctuation_to_commas(t: str) -> str:
    return re.sub(r"[()[\].,|:;?!=+~\-/{}]", ",", t)


def restore_protected(t: str) -> str:
    for name, char in (("dot", "."), ("quote", "'"), ("slash", "/")):
        t = t.replace(f"{TEMP}{name}{TEMP}", char)
    return t


def remove_repeating_chars(t: str) -> str:
    return re.sub(r"(\D)(\1{3,})", r"\1", t)  # 4+, not 3: roman numerals like "viii"


def merge_quotes(t: str) -> str:
    return re.sub(r'(\s*"+\s*)+', ' " ', t)


def merge_commas(t: str) -> str:
    return re.sub(r"(\s*,+\s*)+", ", ", t)


def remove_extra_spaces(t: str) -> str:
    return re.sub(r"\s+", " ", t)


def remove_first_last_commas(t: str) -> str:
    t = t.strip()
    t = t[:-1] if t.endswith(",") else t
    t = t[1:] if t.startswith(",") else t
    return t.strip()


def prefix_space(t: str) -> str:
    return f" {t}"  # BART's byte-level BPE tokenises a word differently after a space; training did this


class TextNormalizer:
    """Normalise a prompt or caption the way DALL·E mini's training data was normalised."""

    def __init__(self, word_frequency_path: str | Path | None = None, seed: int = 0):
        self.word_frequency_path, self.seed = word_frequency_path, seed  # what a saved pipeline records
        splitter = WordSplitter.from_file(word_frequency_path) if word_frequency_path else None
        self.steps: list[Callable[[str], str]] = [
            fix_text,
            fix_html,
            demojize,
            to_ascii,
            lowercase,
            partial(replace_person_token, seed=seed),
            remove_wiki_ref,
            remove_html_tags,
            remove_urls,
            remove_comma_numbers,
            protect_dots,
            protect_quotes,
            protect_dates,
            handle_special_chars,
            partial(expand_hashtags, splitter=splitter),
            ignore_chars,
            simplify_quotes,
            punctuation_to_commas,
            restore_protected,
            remove_repeating_chars,
            merge_quotes,
            merge_commas,
            remove_extra_spaces,
            remove_first_last_commas,
            prefix_space,
        ]

    @classmethod
    def from_hub(
        cls, repo_id: str = "dalle-mini/dalle-mini", filename: str = "enwiki-words-frequency.txt",
        seed: int = 0
    ) -> "TextNormalizer":
        """Download the reference's word-frequency list (cached by huggingface_hub) to split hashtags."""
        from huggingface_hub import hf_hub_download

        return cls(hf_hub_download(repo_id, filename=filename), seed=seed)

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text
