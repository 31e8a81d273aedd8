"""One `from_pretrained` / `save_pretrained` / `push_to_hub` for every trained component.

A component class (DalleBart, VQGAN, ClipScorer) mixes in `HubMixin` and declares its config class, the
layouts it reads (`Layout`: a config file and a weights file, and how to turn them into a config dict and
tensors), the single weights files it reads (`file_readers`, by suffix: the one place a file's suffix picks
its reader) and its model card. The mixin does the rest the same way for all of them: find the directory or
repo, try each layout, serve a conversion of another layout from the per-commit cache, build strictly, and
write our layout (`config.json` + `model.safetensors` + `README.md`). Every format arrives as a
`StoredComponent` (config values + tensors) before anything is built.

Hand-written rather than `huggingface_hub.PyTorchModelHubMixin`: that mixin loads with strict=False, knows
none of the other layouts and rewrites `__init__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, ClassVar, Mapping, Optional

import torch

from .files import (
    CONFIG_NAME,
    PICKLED_NAMES,
    WEIGHTS_NAME,
    Source,
    as_dtype,
    load_config_json,
    open_saved,
    read_safetensors,
    refuse_pickles,
    upload_folder,
    write_native,
)
from .saving import saving_into
from .strict import build_strict

# written into config.json for the hub and for humans; not fields of any config class
SAVED_KEYS = ("architectures", "library_name", "torch_dtype")


@dataclass
class StoredComponent:
    """A component as its files hold it, in any layout: what a layout or file reader returns."""

    config: dict  # values for the component's config class
    state: dict[str, torch.Tensor]
    origin: str  # the weights file, named in errors
    config_path: str  # the config file, named in config errors


@dataclass(frozen=True)
class Layout:
    """One on-disk format: `read(config_path, weights_path)` -> (config values, tensors)."""

    description: str  # in "expected ..." messages
    config_name: str
    weights_name: str
    read: Callable[[Path, Path], tuple[dict, dict]]
    converted: bool = True  # not our format: a hub load caches the conversion in ours, per commit
    # other files `read` needs beside the weights file (sharded Flax weights: the shards its index names)
    companions: Optional[Callable[[Path], list[str]]] = None


def read_native(config_path: Path, weights_path: Path) -> tuple[dict, dict]:
    values = {k: v for k, v in load_config_json(config_path).items() if k not in SAVED_KEYS}
    return values, read_safetensors(weights_path)


NATIVE = Layout(f"{CONFIG_NAME} + {WEIGHTS_NAME}", CONFIG_NAME, WEIGHTS_NAME, read_native, converted=False)


def read_layout(source: Source, layout: Layout,
                normalise: Callable[[StoredComponent], dict]) -> Optional[StoredComponent]:
    """The component as `layout` stores it, or None when the source does not hold its weights."""
    config = source.file(layout.config_name)
    cache = None
    if source.remote and layout.converted and config is not None:
        cache = source.converted_cache(config, layout.config_name)
        cached = cache.file(WEIGHTS_NAME)
        if cached is not None:
            values, state = read_native(cache.path / CONFIG_NAME, cached)
            return StoredComponent(values, state, str(cached), str(cache.path / CONFIG_NAME))
    weights = source.file(layout.weights_name)
    if weights is None:
        return None
    if config is None:
        if PurePosixPath(layout.weights_name).name in PICKLED_NAMES:
            return None  # a pickle with no config beside it is no layout of ours: refused as a pickle below
        raise FileNotFoundError(f"{source.name}/{layout.config_name}: missing; {layout.weights_name} needs "
                                f"the {layout.config_name} saved next to it ({layout.description})")
    for name in layout.companions(weights) if layout.companions else ():
        if source.file(name) is None:  # a hub repo fetches it beside the weights file
            raise FileNotFoundError(f"{source.name}: {layout.weights_name} names {name}, which is missing")
    values, state = layout.read(config, weights)
    stored = StoredComponent(values, state, str(weights), str(config))
    if cache is not None:
        stored.config = normalise(stored)
        write_native(cache.path, stored.config, state)
    return stored


def read_stored(source: Source, layouts, what: str, pickle_fix: str,
                normalise: Callable[[StoredComponent], dict]) -> StoredComponent:
    """The component in the first of `layouts` the source holds."""
    for layout in layouts:
        stored = read_layout(source, layout, normalise)
        if stored is not None:
            return stored
    refuse_pickles(source.listing(), source.name, pickle_fix)
    expected = ", ".join(layout.description for layout in layouts)
    raise FileNotFoundError(f"{source.name}: no {what} weights; expected {expected}"
                            + ("; offline or with local_files_only, none of them is in the local cache"
                               if source.remote else ""))


class HubMixin:
    """Adds the hub methods to a component class, which sets the class attributes below and has a `config`
    attribute with `to_dict()` (and its class a `from_dict`)."""

    config_class: ClassVar[type]
    hub_layouts: ClassVar[tuple[Layout, ...]] = (NATIVE,)
    # suffix -> reader of a single weights file: (its config values, or None when it records none; tensors)
    file_readers: ClassVar[dict[str, Callable[[Path], tuple[Optional[dict], dict]]]] = {}
    hub_example: ClassVar[str]
    pickle_fix: ClassVar[str] = "Save it with save_pretrained first."
    load_dtype: ClassVar[torch.dtype] = torch.float32  # the default of from_pretrained(dtype=None)
    save_dtype: ClassVar[Optional[torch.dtype]] = None  # the default of save_pretrained(dtype=None): as is
    build_on_meta: ClassVar[bool] = True
    # repo -> the commit `from_pretrained` reads when no revision is given (what the reference pins)
    pinned_revisions: ClassVar[dict[str, str]] = {}

    # --- loading ---------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, *, subfolder: str = "", revision: Optional[str] = None,
                        local_files_only: bool = False, cache_dir=None, token=None,
                        endpoint: Optional[str] = None, dtype=None, device=None, default_config=None,
                        **config_overrides):
        """A model in eval mode from a directory, a hub repo (at `revision`, else the class's pinned commit
        for that repo, else main; a `subfolder` of either) or a single weights file (a suffix of
        `file_readers`), in any layout the class reads. A single file that records no config (a taming
        `.ckpt`, a `.safetensors` converted by hand) is read with `default_config` (a config object or
        dict; default: the config class's defaults); whatever records its config is read with its own.
        `config_overrides` replace config values before the model is built."""
        path = Path(name_or_path).expanduser()
        if path.suffix in cls.file_readers and not path.is_dir() and not subfolder:
            stored = cls.read_file(path, default_config)
        else:
            holding = " or ".join(layout.description for layout in cls.hub_layouts)
            revision = revision or cls.pinned_revisions.get(str(name_or_path))
            source = open_saved(name_or_path, holding, cls.hub_example, subfolder=subfolder,
                                revision=revision, local_files_only=local_files_only, cache_dir=cache_dir,
                                token=token, endpoint=endpoint)
            stored = read_stored(source, cls.hub_layouts, cls.__name__, cls.pickle_fix,
                                 lambda c: cls.config_from(c).to_dict())
        return cls.from_stored(stored, dtype=dtype, device=device, **config_overrides)

    @classmethod
    def read_file(cls, path: Path, default_config=None) -> StoredComponent:
        """A single weights file, by its suffix's reader (`file_readers`)."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such {cls.__name__} weights file")
        values, state = cls.file_readers[path.suffix](path)
        origin = str(path)
        if values is None:
            given, read_as = default_config, "the given default_config"
            if given is None:
                given, read_as = cls.config_class(), f"{cls.config_class.__name__}()"
            values = dict(given) if isinstance(given, Mapping) else given.to_dict()
            # strict loading names the origin when the tensors disagree: say where the config came from
            origin += f" (records no config, so read as {read_as}; pass default_config= of its architecture)"
        return StoredComponent(values, state, origin, str(path))

    @classmethod
    def config_from(cls, stored: StoredComponent, **overrides):
        try:
            return cls.config_class.from_dict({**stored.config, **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{stored.config_path}: {err}") from err

    @classmethod
    def from_stored(cls, stored: StoredComponent, dtype=None, device=None, **config_overrides):
        config = cls.config_from(stored, **config_overrides)
        model = build_strict(lambda: cls.from_config_object(config), stored.state, stored.origin,
                             meta=cls.build_on_meta)
        return model.to(device=device, dtype=as_dtype(dtype) or cls.load_dtype).eval()

    @classmethod
    def from_config_object(cls, config):
        return cls(config)

    # --- saving ----------------------------------------------------------------------------------------

    def save_pretrained(self, directory, *, dtype=None, repo_id: Optional[str] = None,
                        overwrite: bool = False, **extras) -> Path:
        """config.json + model.safetensors (in `dtype`; default as the class says) + a model card; `extras`
        are the component's own files (DalleBart: `tokenizer=`). A folder that holds anything is refused
        unless `overwrite`, which replaces it whole; the files appear together or not at all
        (`hub/saving.py`)."""
        dtype = as_dtype(dtype) or self.save_dtype
        state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v)
                 for k, v in self.state_dict().items()}
        stored = str(next(iter(state.values())).dtype).removeprefix("torch.")
        config = {**self.config.to_dict(), "architectures": [type(self).__name__],
                  "library_name": "dalle_mini_pt", "torch_dtype": stored}
        with saving_into(directory, overwrite) as tmp:
            write_native(tmp, config, state)
            self.save_extras(tmp, **extras)
            if not (tmp / "README.md").exists():  # an extra may bring its own card
                (tmp / "README.md").write_text(self.model_card(repo_id or Path(directory).name, stored))
        return Path(directory)

    def save_extras(self, directory: Path, **extras) -> None:
        if extras:
            raise TypeError(f"{type(self).__name__}.save_pretrained got unexpected arguments "
                            f"{sorted(extras)}")

    def model_card(self, name: str, dtype: str) -> str:
        raise NotImplementedError

    def push_to_hub(self, repo_id: str, *, dtype=None, private: Optional[bool] = None, token=None,
                    branch: Optional[str] = None, commit_message: Optional[str] = None,
                    create_pr: bool = False, endpoint: Optional[str] = None, **extras):
        """save_pretrained into a temporary directory and upload it as one commit; returns the CommitInfo."""
        return upload_folder(lambda tmp: self.save_pretrained(tmp, dtype=dtype, repo_id=repo_id, **extras),
                             repo_id, private=private, token=token, branch=branch,
                             commit_message=commit_message or f"Upload {type(self).__name__}",
                             create_pr=create_pr, endpoint=endpoint)
