"""The package as users install it: a wheel that carries its configs and trains from any directory, a user's
own config directory on top of ours, and no import cycles."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, cwd, env=None, timeout=600) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The wheel built from a copy of the repository's sources and installed alone (--no-deps) into a
    directory that goes first on PYTHONPATH, over this environment's dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("dalle_mini_pt", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("dalle_mini_pt-*.whl")
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp / "site", wheel],
        cwd=tmp)
    return tmp / "site"


@pytest.mark.slow
def test_the_wheel_trains_and_encodes_from_an_empty_directory(wheel_site, tmp_path):
    assert (wheel_site / "dalle_mini_pt" / "conf" / "experiment" / "debug.yaml").is_file()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(wheel_site), "HF_HUB_OFFLINE": "1"}
    where = run([sys.executable, "-c",
                 "import dalle_mini_pt.config_dir as c; print(c.__file__, c.CONFIG_DIR)"],
                work, env)
    assert where.split() == [str(wheel_site / "dalle_mini_pt" / "config_dir.py"),
                             str(wheel_site / "dalle_mini_pt" / "conf")]

    # the README's first training command, then a user's experiment from their own config directory
    run([sys.executable, "-m", "dalle_mini_pt.data.tiny_dataset", "--out", "data/tiny"], work, env)
    out = run([sys.executable, "-m", "dalle_mini_pt.train", "+experiment=debug", "trainer.max_steps=4",
               "trainer.val_check_interval=4"], work, env)
    assert "global_step=4" in out and list(work.glob("logs/debug/runs/*/checkpoints/last.ckpt"))
    mine = tmp_path / "my_conf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - debug\ntask_name: mine\n"
                                    "trainer:\n  max_steps: 2\n  val_check_interval: 2\n")
    out = run([sys.executable, "-m", "dalle_mini_pt.train", "--config-dir", tmp_path / "my_conf",
               "+experiment=mine"],
              work, env)
    assert "global_step=2" in out and list(work.glob("logs/mine/runs/*/checkpoints/last.ckpt"))

    images = work / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(images / f"{i:03d}.png")
        (images / f"{i:03d}.txt").write_text(f"picture {i}\n")
    out = run([sys.executable, "-m", "dalle_mini_pt.data.encode", "input.path=images", "output_dir=encoded",
               "vqgan=tiny", "vqgan_weights=null", "num_workers=0", "progress=false"], work, env)
    assert "encoded 3 of 3 images" in out and (work / "encoded" / "00000.parquet").is_file()


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its source (lazy imports in functions count;
    imports under `if TYPE_CHECKING:` serve annotations only and do not)."""
    import ast

    def walk(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        yield node
        for child in ast.iter_child_nodes(node):
            yield from walk(child)

    names = {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in package.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, (base, node.module)))
                targets |= {f"{module}.{a.name}" if f"{module}.{a.name}" in names else module
                            for a in node.names}
        graph[name] = {t for t in targets if t in names and t != name}
    return graph


def test_no_import_cycles_by_our_own_count():
    """No module of the package reaches itself through its imports (counted here, inside the repository, so
    a clean checkout runs the same check as the maintainers' shared tool)."""
    graph = import_graph(ROOT / "dalle_mini_pt")
    assert "dalle_mini_pt.hub.mixin" in graph["dalle_mini_pt.model"]  # the walk sees relative imports

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            if (m := todo.pop()) not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    assert not [m for m in graph if m in reaches(m)]
