"""Where `save_pretrained` writes: a folder that holds nothing yet, or, asked to, a whole replacement of one.

Saving into a folder that already holds a model used to overwrite the files both write and keep the others (a
tokenizer of another vocabulary beside new weights), and loading that folder then mixed two models. So a
non-empty target is refused unless `overwrite`, and either way everything is written into a temporary folder
beside the target and renamed into place: a failure or a kill part-way leaves the target as it was (the
temporary is swept on the next save), and readers never see half a model.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_target(directory, overwrite: bool, option: str = "overwrite=True") -> Path:
    """`directory`, refused when it is a file, or a folder with anything in it and no `overwrite`."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; save into a folder")
    held = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:6]) + (f", … ({len(held)} in all)" if len(held) > 6 else "")
        raise FileExistsError(f"{directory} is not empty (it holds {shown}): saving into it would mix this "
                              f"model with what is there. Save into a new or empty folder, or pass {option} "
                              "to replace the whole folder")
    return directory


def _sweep(directory: Path) -> None:
    """Leftovers of killed saves: temporaries, and a replaced folder whose swap did not finish (put back
    when the target went missing between the two renames)."""
    for old in directory.parent.glob(f".{directory.name}.old-*"):
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, directory)
    for tmp in directory.parent.glob(f".{directory.name}.saving-*"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def saving_into(directory, overwrite: bool = False, option: str = "overwrite=True") -> Iterator[Path]:
    """A temporary folder beside `directory` to write into; on success it becomes `directory` (replacing
    the old one whole with `overwrite`), on failure it is removed and `directory` is untouched."""
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    _sweep(directory)
    check_target(directory, overwrite, option)
    tmp = directory.parent / f".{directory.name}.saving-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.is_dir() and any(directory.iterdir()):
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:  # absent, or an empty folder (rename replaces an empty directory)
        os.rename(tmp, directory)
