"""Where the Hydra configs are: the repository's top-level `conf/`, which a wheel carries inside the package
(`pyproject.toml` maps `conf/` to `dalle_mini_pt/conf`), so an installed copy trains from any directory."""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf")
