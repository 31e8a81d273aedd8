"""Text to images: normalise → tokenise → sample codes → VQGAN decode → CLIP rank.

Data flows one way through separately trained components (DalleBart + tokenizer, VQGAN, CLIP scorer), as a
diffusers pipeline composes them. A pipeline saves as one directory: each component in its own
sub-directory, listed by class in `model_index.json` with the normaliser settings, and the sampling defaults
in `generation_config.json` (`pipeline_index.py`). `from_pretrained` loads such a directory or repo;
`from_components` (or the constructor) builds one from parts.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import __version__
from .clip_scorer import ClipScorer
from .component_specs import instantiate_component
from .generation_config import GenerationConfig, with_options
from .hub.files import TOKENIZER_FILES, Source, load_config_json, open_saved, write_json
from .hub.saving import saving_into
from .huge_pages import move_to_huge_pages
from .image_grid import caption_grid, to_pil
from .model import DalleBart
from .pipeline_index import (
    DEFAULT_DECODE_BATCH_SIZE,
    GENERATION_CONFIG_NAME,
    INDEX_NAME,
    index_values,
    not_a_pipeline,
    read_generation_config,
    read_index,
)
from .request_checks import check_every, check_keep_rows, check_prompts
from .sampling import stream_codes
from .text_normalizer import TextNormalizer
from .tokenizer import TextTokenizer, load_tokenizer
from .vqgan import VQGAN

WORD_FREQUENCY_NAME = "enwiki-words-frequency.txt"
# The reference notebook's sampling: super-conditioning at 10, no top-k/top-p; four images per prompt.
DEFAULT_GENERATION = GenerationConfig(num_images=4, condition_scale=10.0)
# what reaches a hub download; `from_pretrained` takes these beside device and dtype
HUB_ARGUMENTS = ("revision", "cache_dir", "local_files_only", "token", "endpoint")


@dataclass
class PromptImages:
    """The images of one prompt, best CLIP score first when a scorer ranked them, with what made them: the
    seed and settings, the rows kept from an image (completion), each image's place among the samples."""

    prompt: str
    images: list[Image.Image]
    codes: torch.Tensor  # (n, image_length)
    scores: Optional[list[float]] = None
    seed: Optional[int] = None
    settings: Optional[GenerationConfig] = None
    keep_rows: int = 0
    order: Optional[list[int]] = None  # order[i]: which sample (0..n-1 as drawn) images[i] is
    # the prompts of the call that drew these and this one's place among them: a prompt's images depend on
    # the prompts before it (one seed draws every row of the call), so they are part of what reproduces them
    call_prompts: Optional[list[str]] = None
    index: int = 0

    def grid(self, scale: int = 1) -> Image.Image:
        labels = [[f"{s:.2f}" for s in self.scores]] if self.scores is not None else None
        return caption_grid([self.images], [self.prompt], labels, scale=scale)

    def metadata(self, i: int) -> dict[str, str]:
        """What reproduces image i, as PNG text chunks: the prompt, seed, settings, its sample index, and the
        call's prompts with this one's index among them: `pipe(json.loads(text["prompts"]),
        seed=int(text["seed"]), **settings)[int(text["prompt_index"])]` draws it again as sample `sample`."""
        settings = self.settings.to_dict() if self.settings is not None else {}
        text = {"prompt": self.prompt, "seed": str(self.seed),
                "sample": str(self.order[i] if self.order is not None else i),
                "settings": json.dumps({**settings, "keep_rows": self.keep_rows}, sort_keys=True),
                "prompts": json.dumps(self.call_prompts or [self.prompt], ensure_ascii=False),
                "prompt_index": str(self.index), "software": "dalle_mini_pt"}
        if self.scores is not None:
            text["clip_score"] = f"{self.scores[i]:.4f}"
        return text


def load_vqgan(spec: str, revision: Optional[str] = None, **hub) -> VQGAN:
    """A Hydra yaml such as `conf/vqgan/tiny.yaml` (random weights), or whatever `VQGAN.from_pretrained`
    reads: a directory or hub repo (ours, vqgan-jax's Flax one such as `dalle-mini/vqgan_imagenet_f16_16384`,
    or taming's model.yaml + last.ckpt), at `revision` (default: the reference's pinned commit of
    `dalle-mini/vqgan_imagenet_f16_16384` and `flax-community/vqgan_f16_16384`, else main), or a
    `.safetensors` / taming `.ckpt` file (one that records no config is the f16/16384 network)."""
    if Path(spec).suffix in (".yaml", ".yml"):  # an architecture to build, not weights to read
        return instantiate_component(spec, "vqgan")
    return VQGAN.from_pretrained(spec, revision=revision, **hub)


def load_model(name_or_path, device, dtype, **hub) -> DalleBart:
    """`DalleBart.from_pretrained` with the weights moved onto huge pages: CPU decoding streams every layer
    weight each step (huge_pages.py). Every pipeline load path takes its model from here."""
    net = DalleBart.from_pretrained(name_or_path, dtype=dtype, device=device, **hub)
    move_to_huge_pages(net)
    return net


def word_frequency_file(model, hub: dict) -> Optional[str]:
    """The reference splits hashtags in every prompt with the model repo's `enwiki-words-frequency.txt`; a
    model directory or repo that holds one has it used the same way."""
    if Path(model).suffix in DalleBart.file_readers:  # a single weights file has no folder to hold one
        return None
    path = open_saved(model, WORD_FREQUENCY_NAME, "dalle-mini/dalle-mini", **hub).file(WORD_FREQUENCY_NAME)
    return str(path) if path is not None else None


def load_clip(spec: Optional[str], device=None) -> Optional[ClipScorer]:
    """`none`, an open_clip `NAME:TAG` (the tag's weights are downloaded) or a bare `NAME` (random weights),
    a Hydra yaml, or a directory or hub repo saved by `ClipScorer.save_pretrained` (e.g. the embedded
    default's trained CLIP)."""
    if spec is None or str(spec).lower() == "none":
        return None
    spec, device = str(spec), device or "cpu"
    if spec.endswith((".yaml", ".yml")):
        return instantiate_component(spec, "clip").to(device)
    name, colon, tag = spec.partition(":")
    if not Path(spec).exists() and (colon or name in ClipScorer.open_clip_models()):
        return ClipScorer.from_open_clip(name, tag or None, device=device)
    return ClipScorer.from_pretrained(spec, device=device)


class DalleMiniPipeline:
    def __init__(self, model: DalleBart, tokenizer: TextTokenizer, vqgan: VQGAN,
                 clip: Optional[ClipScorer] = None, normalizer: Optional[TextNormalizer] = None,
                 decode_batch_size: int = DEFAULT_DECODE_BATCH_SIZE,
                 generation_config: GenerationConfig = DEFAULT_GENERATION):
        cfg = model.config
        if vqgan.config.n_embed != cfg.codebook_size or vqgan.config.codes_per_image != cfg.image_length:
            raise ValueError(f"the VQGAN ({vqgan.config.n_embed} codes, {vqgan.config.codes_per_image} per "
                             f"image) does not match the model ({cfg.codebook_size} codes, "
                             f"{cfg.image_length} per image); load the VQGAN the model was trained with")
        if tokenizer.max_length > cfg.text_positions:
            raise ValueError(f"tokenizer max_length {tokenizer.max_length} exceeds the model's "
                             f"{cfg.text_positions} text positions")
        tokenizer.fit_to(cfg.encoder_vocab_size, "the model's encoder_vocab_size")
        if type(decode_batch_size) is not int or decode_batch_size < 1:
            raise ValueError(f"decode_batch_size={decode_batch_size!r} must be a whole number >= 1 (images "
                             "the VQGAN decodes at once)")
        if cfg.vqgan_pixel_range not in (None, vqgan.config.pixel_range):
            raise ValueError(f"the model learned codes of a VQGAN fed {cfg.vqgan_pixel_range} pixels, but "
                             f"this VQGAN works in {vqgan.config.pixel_range}: its pictures would come out "
                             "wrong. Load it with VQGAN.from_pretrained(..., "
                             f"pixel_range={cfg.vqgan_pixel_range!r}) (or set pixel_range in its config)")
        self.model, self.tokenizer, self.vqgan = model.eval(), tokenizer, vqgan.eval()
        self.clip, self.normalizer = clip, normalizer
        self.decode_batch_size, self.generation_config = decode_batch_size, generation_config

    # --- loading and saving ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, *, device=None, dtype=torch.float32,
                        **hub_kwargs) -> "DalleMiniPipeline":
        """A pipeline saved by `save_pretrained`: a directory or hub repo holding its model_index.json.
        `hub_kwargs` (`revision`, `cache_dir`, `local_files_only`, `token`, `endpoint`) reach the repo.
        Separately saved components (a model repo, a VQGAN, ...) make a pipeline with `from_components`."""
        unknown = sorted(set(hub_kwargs) - set(HUB_ARGUMENTS))
        if set(unknown) & {"model", "vqgan", "clip", "tokenizer", "vqgan_revision"}:
            raise TypeError(f"DalleMiniPipeline.from_pretrained loads a saved pipeline only and takes no "
                            f"{', '.join(unknown)}: build one from parts with DalleMiniPipeline"
                            ".from_components(model=..., vqgan=..., clip=..., tokenizer=...)")
        if unknown:
            raise TypeError(f"DalleMiniPipeline.from_pretrained got unexpected arguments {unknown}; it takes "
                            f"device, dtype and {', '.join(HUB_ARGUMENTS)}")
        device = torch.device(device or "cpu")
        if Path(name_or_path).expanduser().is_file():
            raise FileNotFoundError(f"{name_or_path} is a file, not a pipeline directory: build a pipeline "
                                    "from it with DalleMiniPipeline.from_components(model=..., vqgan=...)")
        source = open_saved(name_or_path, INDEX_NAME, "me/dalle-mini-pipeline", **hub_kwargs)
        index_path = source.file(INDEX_NAME)
        if index_path is None:
            raise not_a_pipeline(str(name_or_path), source)
        index = read_index(load_config_json(index_path), f"{source.name}/{INDEX_NAME}")
        generation = (index.generation_config if index.generation_config is not None
                      else read_generation_config(source))
        folders = index.folders
        net = load_model(name_or_path, device, dtype, subfolder=folders["model"], **hub_kwargs)
        tokenizer = TextTokenizer.from_pretrained(
            str(source.sub(folders["tokenizer"]).local_dir(TOKENIZER_FILES)), index.text_length)
        vqgan = VQGAN.from_pretrained(name_or_path, subfolder=folders["vqgan"], device=device, **hub_kwargs)
        clip = None
        if "clip" in folders:
            clip = ClipScorer.from_pretrained(name_or_path, subfolder=folders["clip"], device=device,
                                              **hub_kwargs)
        normalizer = None
        if index.text_normalizer:
            settings = index.text_normalizer
            words = settings.get("word_frequency_file")
            normalizer = TextNormalizer(_file(source, words) if words else None, seed=settings.get("seed", 0))
        return cls(net, tokenizer, vqgan, clip, normalizer, index.decode_batch_size, generation)

    @classmethod
    def from_components(cls, model, vqgan, clip: Optional[str] = None, tokenizer: Optional[str] = None, *,
                        device=None, dtype=torch.float32, vqgan_revision: Optional[str] = None,
                        **hub_kwargs) -> "DalleMiniPipeline":
        """A pipeline of separately saved components, by name or path: the model from a hub repo, directory
        (ours or the reference's) or Lightning `.ckpt` (then with `tokenizer`), the VQGAN and CLIP as in
        `load_vqgan` / `load_clip`, with the reference notebook's sampling defaults. `hub_kwargs`
        (`revision`, `cache_dir`, `local_files_only`, `token`, `endpoint`) reach the model repo;
        `vqgan_revision` the VQGAN's."""
        device = torch.device(device or "cpu")
        model = str(model)
        if Path(model).suffix in DalleBart.file_readers and tokenizer is None:
            raise ValueError("a Lightning checkpoint holds no tokenizer: pass tokenizer= "
                             "(e.g. data.tokenizer)")
        net = load_model(model, device, dtype, **hub_kwargs)
        length = net.config.max_text_length
        # transformers takes its endpoint from HF_ENDPOINT, not from an argument
        tokenizer_hub = {k: v for k, v in hub_kwargs.items() if k != "endpoint"}
        tok = (TextTokenizer.from_pretrained(tokenizer, length) if tokenizer
               else load_tokenizer(model, max_length=length, **tokenizer_hub))
        normalizer = None
        if net.config.normalize_text:
            normalizer = TextNormalizer(word_frequency_file(model, hub_kwargs))
        vqgan_hub = {k: v for k, v in hub_kwargs.items() if k != "revision"}
        vqgan_model = load_vqgan(str(vqgan), vqgan_revision, **vqgan_hub).to(device)
        return cls(net, tok, vqgan_model, load_clip(clip, device), normalizer)

    def save_pretrained(self, directory, overwrite: bool = False) -> Path:
        """model/, tokenizer/, vqgan/, clip/ (if any), the word-frequency file (if any), model_index.json
        and generation_config.json. A folder that holds anything is refused unless `overwrite`, which
        replaces it whole; the components appear together or not at all (`hub/saving.py`)."""
        with saving_into(directory, overwrite) as tmp:
            self.model.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.vqgan.save_pretrained(tmp / "vqgan")
            if self.clip is not None:
                self.clip.save_pretrained(tmp / "clip")
            normalizer = None
            if self.normalizer is not None:
                normalizer = {"seed": self.normalizer.seed, "word_frequency_file": None}
                if self.normalizer.word_frequency_path:
                    words = Path(self.normalizer.word_frequency_path)
                    shutil.copyfile(words, tmp / words.name)
                    normalizer["word_frequency_file"] = words.name
            write_json(tmp / INDEX_NAME, index_values(self.clip is not None, self.tokenizer.max_length,
                                                      normalizer, self.decode_batch_size, __version__))
            write_json(tmp / GENERATION_CONFIG_NAME, self.generation_config.to_dict())
        return Path(directory)

    # --- generating ------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_request(self, prompts: Union[str, Sequence[str]], config: GenerationConfig, *,
                      keep_rows: int = 0, has_image: bool = False, every: Optional[int] = None,
                      max_prompt_chars: Optional[int] = None) -> list[str]:
        """Everything about a request that can be wrong, checked before any work: the prompts, the options
        against this model and device, the kept rows, the steps between partials. `stream` runs it on every
        call; the demo server runs it as a request arrives, before the request joins a batch. Returns the
        prompts as a list; raises `ValueError` / `TypeError` naming the problem."""
        prompts = check_prompts(prompts, max_prompt_chars)
        config.check_model(self.model.config)
        config.check_device(self.device)
        check_keep_rows(keep_rows, self.vqgan.config.grid_size, has_image)
        check_every(every, self.vqgan.config.grid_size, self.model.config.image_length)
        return prompts

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.normalizer(p) if self.normalizer and p.strip() else p for p in prompts]
        batch = {**self.tokenizer(texts), **self.tokenizer.unconditional()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (rows, image_length) -> float images in [0, 1], in batches (the VQGAN runs in float32)."""
        chunks = [self.vqgan.decode(c.to(self.vqgan.device)) for c in codes.split(self.decode_batch_size)]
        return torch.cat(chunks)

    def settings(self, generation_config: Optional[GenerationConfig] = None, /,
                 **options) -> GenerationConfig:
        """The config a call with these arguments samples with: `generation_config` (default: the
        pipeline's) changed by `options` given by name. Where a caller's options are merged, once: `stream`
        runs it, and the demo server as a request arrives (positional-only, so that every key of a request's
        options is taken as an option name)."""
        return with_options(generation_config, options, self.generation_config)

    def encode_images(self, images) -> torch.Tensor:
        """Images -> VQGAN codes (n, image_length): a PIL image, an image tensor (C, H, W) or (H, W, C)
        (uint8, or float in [0, 1]), or a list of them; each must already be the VQGAN's resolution (its
        error says how to fit one)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        batch = []
        for image in images:
            if isinstance(image, Image.Image):
                image = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
            if not isinstance(image, (torch.Tensor, np.ndarray)):
                raise TypeError("init_image must be a PIL image or an image tensor; got "
                                f"{type(image).__name__}")
            batch.append(self.vqgan.encode(torch.as_tensor(image)[None]))
        return torch.cat(batch)

    def _prefix(self, init_image, keep_rows: int, prompts: int, num_images: int) -> Optional[torch.Tensor]:
        grid = self.vqgan.config.grid_size
        if keep_rows == 0:
            return None
        codes = self.encode_images(init_image)[:, :keep_rows * grid]
        if codes.shape[0] not in (1, prompts):
            raise ValueError(f"init_image: give one image, or one per prompt ({prompts}); got "
                             f"{codes.shape[0]}")
        return codes.to(self.device).repeat_interleave(num_images * prompts // codes.shape[0], dim=0)

    @torch.inference_mode()
    def __call__(self, prompts: Union[str, Sequence[str]],
                 generation_config: Optional[GenerationConfig] = None,
                 *, clip_top_n: Optional[int] = None, progress: Optional[bool] = None, init_image=None,
                 keep_rows: int = 0, generator=None, **options) -> list[PromptImages]:
        """Images for each prompt, sampled with `generation_config` (default: the pipeline's, the reference
        notebook's unless it was saved with others) changed by `options` given by name. `clip_top_n` keeps
        the best n by CLIP score (all, ranked, when None). `progress` None shows a bar on terminals.

        Image completion: `init_image` (one image, or one per prompt, at the VQGAN's resolution) is encoded
        and the first `keep_rows` rows of its code grid are kept in every image; the rest is sampled.
        `generator`: (torch.Generator, rows) pairs instead of the seed (see `sampling.generate`)."""
        *_, (_, results) = self.stream(prompts, generation_config, every=None, clip_top_n=clip_top_n,
                                       progress=progress, init_image=init_image, keep_rows=keep_rows,
                                       generator=generator, **options)
        return results

    def stream(self, prompts: Union[str, Sequence[str]],
               generation_config: Optional[GenerationConfig] = None, *, every: Optional[int] = -1,
               clip_top_n: Optional[int] = None, progress: Optional[bool] = False, init_image=None,
               keep_rows: int = 0, generator=None, **options) -> Iterator[tuple[int, list[PromptImages]]]:
        """`__call__` as it draws: yields (codes written, results) every `every` sampling steps (-1: one row
        of the code grid; None: only at the end). Partial results hold the whole grid decoded with the
        rows not yet sampled left grey, unranked; the last yield is what `__call__` returns, ranked."""
        config = self.settings(generation_config, **options)
        if generator is None:  # a seed drawn here when none is given, so that results can name it
            config = config.with_seed()
        prompts = self.check_request(prompts, config, keep_rows=keep_rows, has_image=init_image is not None,
                                     every=every)
        if clip_top_n is not None and not 1 <= clip_top_n <= config.num_images:
            raise ValueError(f"clip_top_n={clip_top_n} must be between 1 and num_images={config.num_images}")
        n, length = config.num_images, self.model.config.image_length
        prefix = self._prefix(init_image, keep_rows, len(prompts), n)
        every = check_every(every, self.vqgan.config.grid_size, length)
        steps = stream_codes(self.model, config=config, every=every, prefix=prefix, generator=generator,
                             progress=progress, **self.tokenize(prompts))
        for written, codes in steps:  # the sampler sets inference mode itself on each resume
            with torch.inference_mode():
                final = written == length
                pictures = self.decode(codes) if final else self.decode_partial(codes)
                yield written, [self._rank(prompts, i, pictures[i * n:(i + 1) * n], codes[i * n:(i + 1) * n],
                                           clip_top_n if final else n, final, config, keep_rows)
                                for i in range(len(prompts))]

    def decode_partial(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes with -1 where none is sampled yet -> images with those cells grey. The whole grid is
        decoded: the VQGAN's decoder attends globally (its middle block), so a strip decoded alone differs
        from the same strip in the full image (benchmarks/demo_bench.py measures both)."""
        written = codes >= 0
        pictures = self.decode(codes.clamp(min=0))
        g = self.vqgan.config.grid_size
        mask = written.view(-1, 1, g, g).float()
        mask = torch.nn.functional.interpolate(mask.to(pictures.device), size=pictures.shape[-2:])
        return pictures * mask + 0.5 * (1 - mask)

    def _rank(self, prompts, index, pictures, codes, top_n, rank, config, keep_rows) -> PromptImages:
        prompt = prompts[index]
        made = dict(seed=config.seed, settings=config, keep_rows=keep_rows, call_prompts=prompts, index=index)
        if self.clip is None or not rank:
            return PromptImages(prompt, to_pil(pictures), codes.cpu(), order=list(range(len(codes))), **made)
        order, scores = self.clip.rank(pictures.to(self.clip.device), prompt, top_n=top_n)
        return PromptImages(prompt, to_pil(pictures[order.to(pictures.device)]),
                            codes[order.to(codes.device)].cpu(), scores.cpu().tolist(), order=order.tolist(),
                            **made)


def _file(source: Source, name: str) -> str:
    path = source.file(name)
    if path is None:
        raise FileNotFoundError(f"{source.name}: the {INDEX_NAME} names {name}, which is missing")
    return str(path)
