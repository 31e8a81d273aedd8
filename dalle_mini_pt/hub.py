"""DalleBart on disk and on the Hugging Face hub: save, load (strictly) and push.

Native format: `config.json` (our `DalleBartConfig`) + `model.safetensors` + the tokenizer files + a model
card. `load_pretrained` also reads the reference's Flax checkpoints (`flax_model.msgpack`, e.g.
`dalle-mini/dalle-mini`, `dalle-mini/dalle-mega`, `flax-community/dalle-mini`): it converts them on load and
caches the safetensors, keyed by repo and commit. Nothing here unpickles: `.bin`/`.ckpt` files are refused.
The fetching, caching, strict-building and upload helpers are shared with `vqgan_hub.py` (the VQGAN).

Hand-written rather than `PyTorchModelHubMixin`: the mixin loads with strict=False, knows neither the Flax
format nor the tokenizer, and rewrites `__init__`; the three functions below are all we need of it.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, Union

import torch
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)
from safetensors.torch import load_file, save_file

from .config import DalleBartConfig
from .convert_flax import TEXT_LENGTH_2021, convert_flax_checkpoint, load_config_json
from .model import DalleBart
from .weights import load_strict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
PICKLED_NAMES = ("pytorch_model.bin", "model.ckpt", "last.ckpt")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    return DTYPES[dtype]


# --- saving ------------------------------------------------------------------------------------------------

def save_pretrained(model: DalleBart, directory, *, tokenizer=None, dtype=None, repo_id: Optional[str] = None):
    """Write config.json, model.safetensors (in `dtype`, default: as the model is), the tokenizer files if
    a tokenizer (object, path or hub name) is given, and a model card unless one is already there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = as_dtype(dtype)
    state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    stored = str(next(iter(state.values())).dtype).removeprefix("torch.")
    config = {**model.config.to_dict(), "architectures": ["DalleBart"], "library_name": "dalle_mini_pt",
              "torch_dtype": stored}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    if tokenizer is not None:
        _save_tokenizer(tokenizer, directory)
    card = directory / "README.md"
    if not card.exists():
        from .model_card import model_card

        card.write_text(model_card(model, repo_id or directory.name, stored))
    return directory


def _save_tokenizer(tokenizer, directory: Path) -> None:
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    tokenizer.save_pretrained(str(directory))


def push_to_hub(model: DalleBart, repo_id: str, *, tokenizer=None, dtype=None, private: Optional[bool] = None,
                token=None, branch: Optional[str] = None, commit_message: str = "Upload DalleBart",
                create_pr: bool = False, endpoint: Optional[str] = None):
    """save_pretrained into a temporary directory and upload it as one commit; returns the CommitInfo."""
    return upload_saved(lambda tmp: save_pretrained(model, tmp, tokenizer=tokenizer, dtype=dtype, repo_id=repo_id),
                        repo_id, private=private, token=token, branch=branch, commit_message=commit_message,
                        create_pr=create_pr, endpoint=endpoint)


def upload_saved(write: Callable[[Path], object], repo_id: str, *, private: Optional[bool] = None, token=None,
                 branch: Optional[str] = None, commit_message: str = "Upload", create_pr: bool = False,
                 endpoint: Optional[str] = None):
    """Create the repo if needed, let `write` fill a temporary directory, upload it as one commit."""
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 revision=branch, create_pr=create_pr)


# --- loading -----------------------------------------------------------------------------------------------

def load_pretrained(name_or_path, *, revision: Optional[str] = None, local_files_only: bool = False,
                    dtype=None, device=None, cache_dir=None, token=None, endpoint: Optional[str] = None
                    ) -> DalleBart:
    """A DalleBart in eval mode from a local directory or a hub repo, in `dtype` (default float32)."""
    dtype = as_dtype(dtype) or torch.float32
    config, state, source = read_checkpoint(
        name_or_path, f"{CONFIG_NAME} and {WEIGHTS_NAME} (or {FLAX_WEIGHTS_NAME})", "dalle-mini/dalle-mini",
        _load_local, _load_hub, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir,
        token=token, endpoint=endpoint)
    return build_model(config, state, source, dtype=dtype, device=device)


def read_checkpoint(name_or_path, holding: str, example: str, load_local, load_hub, **hub):
    """(config, state, source) from a local directory (`load_local(path)`) or a hub repo
    (`load_hub(repo_id, hub_kwargs)`), whichever `name_or_path` names."""
    where = locate(name_or_path, holding, example)
    return load_local(where) if isinstance(where, Path) else load_hub(where, hub)


def locate(name_or_path, holding: str, example: str) -> Union[Path, str]:
    """A local directory (as a Path) or a hub repo id (as a str); anything else is a path that is missing."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"{name_or_path}: not a directory holding {holding}, nor a hub repo id like "
                                f"{example!r}")
    return str(name_or_path)


def build_model(config, state: dict, source: str, dtype=torch.float32, device=None, model_class=DalleBart):
    """Strictly load `state` into a `model_class` (DalleBart unless given) built on the meta device, so big
    models skip their random init."""
    with torch.device("meta"):
        model = model_class(config)
    # names and shapes, checked against meta stand-ins (no data copied), then the real tensors are assigned
    load_strict(model, {k: torch.empty_like(v, device="meta") for k, v in state.items()}, source)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=as_dtype(dtype)).eval()


def _load_local(directory: Path):
    files = {p.name: p for p in directory.iterdir()}
    refuse_pickles(files, str(directory))
    if CONFIG_NAME not in files:
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}; save models with DalleBart.save_pretrained")
    if WEIGHTS_NAME in files:
        return _read_native(files[CONFIG_NAME], files[WEIGHTS_NAME])
    if FLAX_WEIGHTS_NAME in files:
        config, state = convert_flax_checkpoint(files[FLAX_WEIGHTS_NAME], load_config_json(files[CONFIG_NAME]))
        return config, state, str(files[FLAX_WEIGHTS_NAME])
    raise FileNotFoundError(f"{directory}: neither {WEIGHTS_NAME} nor {FLAX_WEIGHTS_NAME}")


_EXPORT_HINT = "Export them to safetensors with `python -m dalle_mini_pt.export`."


def refuse_pickles(names, where: str, fix: str = _EXPORT_HINT) -> None:
    pickled = [n for n in names if n in PICKLED_NAMES]
    if pickled and WEIGHTS_NAME not in names and FLAX_WEIGHTS_NAME not in names:
        raise ValueError(f"{where}: only pickled weights ({pickled}); dalle_mini_pt never unpickles downloaded "
                         f"files. {fix}")


def _read_native(config_path: Path, weights_path: Path):
    values = load_config_json(config_path)
    try:
        config = DalleBartConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: {err}") from err
    return config, read_safetensors(weights_path), str(weights_path)


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """Load tensors, first checking the file holds every byte its header promises (a cut-off download
    otherwise fails with an error that names neither the file nor the tensor)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, MemoryError) as err:
        raise ValueError(f"{path}: not a safetensors file, or its header is cut off ({size} bytes)") from err
    cut = [k for k, v in header.items() if k != "__metadata__" and 8 + header_len + v["data_offsets"][1] > size]
    if cut:
        raise ValueError(f"{path}: truncated ({size} bytes); tensors {sorted(cut)[:8]} lie past its end. "
                         "Download or save it again.")
    return load_file(path)


def hub_file(repo_id: str, filename: str, hub: dict, required: bool = False) -> Optional[Path]:
    """The cached path of one repo file, or None if the repo does not have it (an error if `required`)."""
    try:
        return Path(hf_hub_download(repo_id, filename, **hub))
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
        raise FileNotFoundError(f"{repo_id} (revision {hub['revision'] or 'main'}): no such local directory "
                                f"or hub repository/revision ({type(err).__name__})") from err
    except LocalEntryNotFoundError as err:
        if required:
            raise FileNotFoundError(f"{repo_id}/{filename}: not in the local cache and the hub was not asked "
                                    f"(offline or local_files_only); {err}") from err
        return None
    except (EntryNotFoundError, HfHubHTTPError) as err:
        if getattr(getattr(err, "response", None), "status_code", 404) != 404:
            raise
        if required:
            raise FileNotFoundError(f"{repo_id}: the repository has no {filename}") from err
        return None


def converted_cache_dir(repo_id: str, commit: str, cache_dir=None) -> Path:
    """Where converted Flax checkpoints live: beside the hub cache, one folder per repo and commit."""
    root = Path(cache_dir or constants.HF_HUB_CACHE)
    return root / "dalle_mini_pt-converted" / repo_id.replace("/", "--") / commit


def snapshot_commit(path: Path, filename: str) -> str:
    """The commit a file fetched by `hub_file` belongs to: its snapshot folder is named after it."""
    return path.parents[len(PurePosixPath(filename).parts) - 1].name


def _load_hub(repo_id: str, hub: dict):
    config_path = hub_file(repo_id, CONFIG_NAME, hub, required=True)
    weights = hub_file(repo_id, WEIGHTS_NAME, hub)
    if weights is not None:
        return _read_native(config_path, weights)
    # keyed by commit, so a moving branch never serves a stale conversion
    cache = converted_cache_dir(repo_id, snapshot_commit(config_path, CONFIG_NAME), hub["cache_dir"])
    if (cache / WEIGHTS_NAME).exists():
        return _read_native(cache / CONFIG_NAME, cache / WEIGHTS_NAME)
    flax_path = hub_file(repo_id, FLAX_WEIGHTS_NAME, hub)
    if flax_path is None:
        pickled = [n for n in PICKLED_NAMES if hub_file(repo_id, n, hub) is not None]
        refuse_pickles(pickled, repo_id)
        raise FileNotFoundError(f"{repo_id}: the repository has neither {WEIGHTS_NAME} nor {FLAX_WEIGHTS_NAME} "
                                "(or, offline / local_files_only, neither is in the local cache)")
    config, state = convert_flax_checkpoint(flax_path, load_config_json(config_path))
    write_converted(cache, config, state)
    return config, state, str(flax_path)


def write_converted(cache: Path, config, state: dict) -> None:
    """Store a conversion as our native format (config.json + model.safetensors) for the next load."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / (WEIGHTS_NAME + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    (cache / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(cache / WEIGHTS_NAME)  # last, so a crash never leaves a half-written cache entry


def load_tokenizer(name_or_path, *, max_length: Optional[int] = None, revision: Optional[str] = None,
                   local_files_only: bool = False, cache_dir=None, token=None):
    """The prompt tokenizer saved next to a model (ours or the reference's), padding to the model's text
    length, read from its config.json unless `max_length` is given."""
    from .tokenizer import TextTokenizer

    hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token)
    if max_length is None:
        path = Path(name_or_path)
        config_path = path / CONFIG_NAME if path.is_dir() else hub_file(str(name_or_path), CONFIG_NAME,
                                                                       {**hub, "endpoint": None}, required=True)
        values = load_config_json(config_path)
        # the 2021 model's config is BART's, which knows only its 1024-row position table
        max_length = values.get("max_text_length") or min(TEXT_LENGTH_2021, values["max_position_embeddings"])
    return TextTokenizer.from_pretrained(str(name_or_path), max_length, **hub)
