"""Where a saved component lives and how its files are read, whatever its layout.

A `Source` is a local directory or a hub repo (at a revision), read one file at a time: `file(name)` is the
local path of that file, or None when the source does not have it; `open_saved` finds one. Files converted
from another layout are cached in ours beside the hub cache (the converted copies), keyed by repo and commit,
so a moving branch never serves a stale conversion. Nothing here unpickles: pickled weights are named and
refused. A weights file with no folder around it (`VQGAN.save_safetensors`) keeps its config in the
safetensors metadata under `FILE_CONFIG_KEY`.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, Union

import torch
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
PICKLED_NAMES = ("pytorch_model.bin", "model.ckpt", "last.ckpt")
# what a transformers tokenizer may have saved (BPE, WordPiece or SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
FILE_CONFIG_KEY = "config"  # the metadata entry of a single .safetensors file that holds its config (JSON)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    return DTYPES[dtype]


class Source:
    """Files of one saved component, by name relative to its root (`configs/model.yaml`)."""

    name: str
    remote = False

    def file(self, filename: str) -> Optional[Path]:
        raise NotImplementedError

    def listing(self) -> list[str]:
        """Names to look for pickled weights among (a hub repo is asked for the usual ones only)."""
        return [n for n in PICKLED_NAMES if self.file(n) is not None]

    def sub(self, folder: str) -> "Source":
        raise NotImplementedError

    def local_dir(self, names) -> Path:
        """A local directory holding those of `names` the source has (a hub repo fetches them)."""
        found = [path for path in map(self.file, names) if path is not None]
        if not found:
            raise FileNotFoundError(f"{self.name}: none of {list(names)}")
        return found[0].parent


class LocalDir(Source):
    def __init__(self, path: Path):
        self.path, self.name = Path(path), str(path)

    def file(self, filename: str) -> Optional[Path]:
        path = self.path / filename
        return path if path.is_file() else None

    def listing(self) -> list[str]:
        return [p.name for p in self.path.iterdir()]

    def sub(self, folder: str) -> "LocalDir":
        return LocalDir(self.path / folder)

    def local_dir(self, names) -> Path:
        return self.path


class HubRepo(Source):
    """A repo at a revision; `hub` holds hf_hub_download's revision, local_files_only, cache_dir, token and
    endpoint."""

    remote = True

    def __init__(self, repo_id: str, hub: dict, folder: str = ""):
        self.repo_id, self.hub, self.folder = repo_id, hub, folder
        self.name = f"{repo_id}/{folder}" if folder else repo_id

    def file(self, filename: str) -> Optional[Path]:
        return self._fetch(filename, required=False)

    def require(self, filename: str) -> Path:
        return self._fetch(filename, required=True)

    def sub(self, folder: str) -> "HubRepo":
        return HubRepo(self.repo_id, self.hub, f"{self.folder}/{folder}".strip("/"))

    def _fetch(self, filename: str, required: bool) -> Optional[Path]:
        name = f"{self.folder}/{filename}" if self.folder else filename
        try:
            return Path(hf_hub_download(self.repo_id, name, **self.hub))
        except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as err:
            raise FileNotFoundError(f"{self.repo_id} (revision {self.hub.get('revision') or 'main'}): "
                                    "no such local directory or hub repository/revision "
                                    f"({type(err).__name__})") from err
        except LocalEntryNotFoundError as err:
            if required:
                raise FileNotFoundError(f"{self.repo_id}/{name}: not in the local cache and the hub was not "
                                        f"asked (offline or local_files_only); {err}") from err
            return None
        except (EntryNotFoundError, HfHubHTTPError) as err:
            if getattr(getattr(err, "response", None), "status_code", 404) != 404:
                raise
            if required:
                raise FileNotFoundError(f"{self.repo_id}: the repository has no {name}") from err
            return None

    def commit(self, fetched: Path, filename: str) -> str:
        """The commit a fetched file belongs to: its snapshot folder is named after it."""
        name = f"{self.folder}/{filename}" if self.folder else filename
        return fetched.parents[len(PurePosixPath(name).parts) - 1].name

    def converted_cache(self, fetched: Path, filename: str) -> LocalDir:
        folder = converted_cache_dir(self.repo_id, self.commit(fetched, filename), self.hub.get("cache_dir"))
        return LocalDir(folder / self.folder if self.folder else folder)


def open_saved(name_or_path, holding: str, example: str, *, subfolder: str = "",
                revision: Optional[str] = None, local_files_only: bool = False, cache_dir=None, token=None,
                endpoint: Optional[str] = None) -> Source:
    """A local directory, or else a hub repo id (its `subfolder`, if given); anything else is a path that is
    missing."""
    path = Path(name_or_path).expanduser() / subfolder
    if path.is_dir():
        return LocalDir(path)
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise FileNotFoundError(f"{path}: not a directory holding {holding}, nor a hub repo id like "
                                f"{example!r}")
    return HubRepo(str(name_or_path), dict(revision=revision, local_files_only=local_files_only,
                                           cache_dir=cache_dir, token=token, endpoint=endpoint), subfolder)


def converted_cache_dir(repo_id: str, commit: str, cache_dir=None) -> Path:
    """Where the converted copies live: beside the hub cache, one folder per repo and commit."""
    root = Path(cache_dir or constants.HF_HUB_CACHE)
    return root / "dalle_mini_pt-converted" / repo_id.replace("/", "--") / commit


def write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def write_native(directory: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """config.json + model.safetensors; the weights last and renamed into place, so a crash never leaves a
    directory that looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / CONFIG_NAME, config)
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_NAME)


def load_config_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON config ({err})") from err


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
    cut = [k for k, v in header.items()
           if k != "__metadata__" and 8 + header_len + v["data_offsets"][1] > size]
    if cut:
        raise ValueError(f"{path}: truncated ({size} bytes); tensors {sorted(cut)[:8]} lie past its end. "
                         "Download or save it again.")
    return load_file(path)


def write_single_safetensors(path, config: dict, state: dict[str, torch.Tensor]) -> None:
    """One .safetensors file holding the tensors and, in its metadata, the config."""
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
              metadata={FILE_CONFIG_KEY: json.dumps(config)})


def read_single_safetensors(path) -> tuple[Optional[dict], dict[str, torch.Tensor]]:
    """(the config its metadata holds, or None when it holds none, as in a file converted by hand; the
    tensors)."""
    state = read_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get(FILE_CONFIG_KEY)
    try:
        return (json.loads(stored) if stored is not None else None), state
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its {FILE_CONFIG_KEY!r} metadata is not JSON ({err})") from err


def refuse_pickles(names, where: str, fix: str) -> None:
    pickled = [n for n in names if n in PICKLED_NAMES]
    if pickled:
        raise ValueError(f"{where}: only pickled weights ({pickled}); dalle_mini_pt never unpickles "
                         f"downloaded files. {fix}")


def upload_folder(write: Callable[[Path], object], repo_id: str, *, private: Optional[bool] = None,
                  token=None, branch: Optional[str] = None, commit_message: str = "Upload",
                  create_pr: bool = False, endpoint: Optional[str] = None):
    """Create the repo if needed, let `write` fill a temporary directory, upload it as one commit."""
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                 revision=branch, create_pr=create_pr)
