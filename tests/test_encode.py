"""The encoder tool: generated images (some broken) -> VQGAN code shards, resumable, from three layouts."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from dalle_mini_pt.data.encode import CONFIG_DIR, encode_dataset, run
from dalle_mini_pt.data.image_sources import FolderSource, load_image
from dalle_mini_pt.data.table_source import TableSource
from dalle_mini_pt.data.tar_source import TarSource

ROOT = Path(__file__).resolve().parent.parent
BAD = {"00000/000000002.jpg": "truncated", "00001/000000005.jpg": "zero", "00001/000000007.png": "text",
       "00002/000000009.jpg": "noise"}
SIZES = [(40, 48), (32, 32), (64, 40), (33, 90), (20, 24)]  # wide, tall, exact and smaller than 32


def encode_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="encode", overrides=["vqgan=tiny", *overrides])


def tiny_vqgan():
    torch.manual_seed(0)
    return instantiate(encode_cfg("input.path=x", "vqgan_weights=null").vqgan).eval()


@pytest.fixture(scope="module")
def vqgan():
    return tiny_vqgan()


def write_item(folder: Path, i: int, image: bytes, ext: str = ".jpg") -> None:
    stem = folder / f"{i // 4:05d}" / f"{i:09d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(ext).write_bytes(image)
    stem.with_suffix(".txt").write_text(f"a picture number {i}")
    stem.with_suffix(".json").write_text(json.dumps({"key": f"{i:09d}", "clip_score": i / 20}))


def jpeg(rng, size) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_images(root: Path) -> Path:
    """19 items in img2dataset layout (4 per shard folder); 4 of them broken in different ways."""
    rng = np.random.default_rng(0)
    for i in range(19):
        write_item(root, i, jpeg(rng, SIZES[i % len(SIZES)]))
    good = jpeg(rng, (48, 48))
    write_item(root, 2, good[: len(good) // 2])  # truncated mid-scan
    write_item(root, 5, b"")
    write_item(root, 7, b"this is a caption, not an image", ext=".png")
    (root / "00001" / "000000007.jpg").unlink()
    write_item(root, 9, rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def module_fixtures():
    """The tiny VQGAN and the 19 items as fixtures of another test module: `vqgan, images =
    module_fixtures()` there (pytest finds fixtures by the module's names)."""
    return pytest.fixture(scope="module", name="vqgan")(tiny_vqgan), \
        pytest.fixture(scope="module", name="images")(lambda tmp_path_factory: make_images(
            tmp_path_factory.mktemp("images")))


def shard_tables(out: Path) -> dict:
    return {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}


def codes_by_caption(out: Path) -> dict:
    rows = [r for t in shard_tables(out).values() for r in t.select(["caption", "encoding"]).to_pylist()]
    return {r["caption"]: r["encoding"] for r in rows}


def test_folder_encodes_every_good_image_and_reports_exactly_the_bad_ones(images, vqgan, tmp_path):
    report = encode_dataset(FolderSource(images, ["clip_score"]), vqgan, tmp_path, shard_size=5, batch_size=3,
                            num_workers=2, row_group_size=2, passthrough=["clip_score"], progress=False)
    assert {b["item"] for b in report["bad"]} == set(BAD)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert (report["items"], report["encoded"], report["skipped"]) == (19, 15, 4)
    tables = shard_tables(tmp_path)
    assert list(tables) == report["shards"] == [f"{s:05d}.parquet" for s in range(4)]
    table = pa.concat_tables(tables.values())
    assert table.column_names == ["key", "caption", "encoding", "clip_score"]
    assert table.schema.field("encoding").type == pa.list_(pa.int16())
    good = [i for i in range(19) if i not in (2, 5, 7, 9)]
    assert table.column("key").to_pylist() == [f"{i:09d}" for i in good]
    assert table.column("clip_score").to_pylist() == [i / 20 for i in good]
    # the tool's codes are the VQGAN's codes for the resized, centre-cropped image
    i = good[3]
    path = images / f"{i // 4:05d}" / f"{i:09d}.jpg"
    expected = vqgan.encode(torch.from_numpy(load_image(path.read_bytes(), 32))[None])[0].tolist()
    assert codes_by_caption(tmp_path)[f"a picture number {i}"] == expected


def test_rerun_skips_finished_shards_and_rewrites_a_missing_one(images, vqgan, tmp_path):
    kwargs = dict(shard_size=5, batch_size=4, num_workers=0, progress=False)
    first = encode_dataset(FolderSource(images), vqgan, tmp_path, **kwargs)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")}
    assert encode_dataset(FolderSource(images), vqgan, tmp_path, **kwargs) == first
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet")} == stamps
    before = pq.read_table(tmp_path / "00002.parquet")
    (tmp_path / "00002.parquet").unlink()
    assert encode_dataset(FolderSource(images), vqgan, tmp_path, **kwargs) == first
    assert pq.read_table(tmp_path / "00002.parquet").equals(before)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.parquet") if p.name != "00002.parquet"} \
        == {k: v for k, v in stamps.items() if k != "00002.parquet"}
    with pytest.raises(ValueError, match="written by another run.*shard_size"):
        encode_dataset(FolderSource(images), vqgan, tmp_path, **{**kwargs, "shard_size": 4})


class InterruptedFolder(FolderSource):
    """A real folder source whose run is stopped (like Ctrl-C) while reading item `stop_at`."""

    def __init__(self, root, stop_at):
        super().__init__(root)
        self.stop_at = stop_at

    def read(self, i):
        if i == self.stop_at:
            raise KeyboardInterrupt
        return super().read(i)


def test_killed_run_restarts_to_the_same_shards_as_an_uninterrupted_one(images, vqgan, tmp_path):
    kwargs = dict(shard_size=5, batch_size=2, num_workers=0, progress=False)
    whole = encode_dataset(FolderSource(images), vqgan, tmp_path / "whole", **kwargs)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):  # item 12 lies mid-way through shard 2
        encode_dataset(InterruptedFolder(images, 12), vqgan, out, **kwargs)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet", "00001.parquet"]
    (out / ".00002.parquet.tmp").write_bytes(b"half a shard")  # as if killed while writing
    assert encode_dataset(FolderSource(images), vqgan, out, **kwargs) == whole
    assert not list(out.glob(".*.tmp"))
    resumed, uninterrupted = shard_tables(out), shard_tables(tmp_path / "whole")
    assert list(resumed) == list(uninterrupted)
    for name, table in uninterrupted.items():
        assert resumed[name].equals(table) and resumed[name].schema.metadata == table.schema.metadata, name


def make_tars(images: Path, out: Path) -> list[Path]:
    """webdataset shards of the same items (flat keys, as img2dataset writes them), 10 items per tar."""
    files = sorted(p for p in images.rglob("*") if p.is_file())
    tars = []
    for t, start in enumerate((0, 10)):
        tars.append(out / f"{t:05d}.tar")
        with tarfile.open(tars[-1], "w") as tf:
            for p in files:
                if start <= int(p.stem) < start + 10:
                    tf.add(p, arcname=p.name)
    return tars


def test_each_input_layout_encodes_the_same_images_to_the_same_codes(images, vqgan, tmp_path):
    kwargs = dict(shard_size=8, batch_size=4, num_workers=0, progress=False)
    encode_dataset(FolderSource(images), vqgan, tmp_path / "folder", **kwargs)
    tars = make_tars(images, tmp_path)
    tar_report = encode_dataset(TarSource(str(tmp_path / "*.tar")), vqgan, tmp_path / "tar", **kwargs)
    paths = sorted(p for p in images.rglob("*") if p.suffix in (".jpg", ".png"))
    captions = [p.with_suffix(".txt").read_text() for p in paths]
    rel = [os.path.relpath(p, tmp_path) for p in paths]  # relative to the table's folder
    pq.write_table(pa.table({"image_path": rel, "caption": captions}), tmp_path / "table.parquet")
    table_report = encode_dataset(TableSource(tmp_path / "table.parquet"), vqgan, tmp_path / "table",
                                  **kwargs)
    (tmp_path / "table.csv").write_text("file,text\n"
                                        + "".join(f'{p},"{c}"\n' for p, c in zip(paths, captions)))
    encode_dataset(TableSource(tmp_path / "table.csv", "file", "text"), vqgan, tmp_path / "csv", **kwargs)
    folder = codes_by_caption(tmp_path / "folder")
    assert len(folder) == 15
    assert codes_by_caption(tmp_path / "tar") == folder == codes_by_caption(tmp_path / "table")
    assert codes_by_caption(tmp_path / "csv") == folder
    assert ({os.path.normpath(tmp_path / b["item"]) for b in table_report["bad"]}
            == {str(images / b) for b in BAD})
    assert {b["item"].split(":")[1] for b in tar_report["bad"]} == {Path(b).name for b in BAD}
    assert all(b["item"].split(":")[0] in map(str, tars) for b in tar_report["bad"])


@pytest.mark.slow  # a subprocess
def test_command_line_tool_with_saved_weights(images, vqgan, tmp_path):
    """`python -m dalle_mini_pt.data.encode` composes conf/encode.yaml and loads the VQGAN weights file."""
    vqgan.save_safetensors(tmp_path / "vqgan.safetensors")
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "dalle_mini_pt.data.encode", f"input.path={images}", f"output_dir={out}",
         "vqgan=tiny", f"vqgan_weights={tmp_path / 'vqgan.safetensors'}", "num_workers=2", "shard_size=8",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoded 15 of 19 images into 3 shards" in proc.stdout
    assert "img/s" in proc.stderr  # the progress bar
    # the same config run in-process with the same weights gives the same codes
    cfg = encode_cfg(f"input.path={images}", f"output_dir={tmp_path / 'api'}", "num_workers=0",
                     f"vqgan_weights={tmp_path / 'vqgan.safetensors'}", "shard_size=8", "progress=false")
    assert run(cfg)["encoded"] == 15
    assert codes_by_caption(out) == codes_by_caption(tmp_path / "api")


def test_benchmark_script_runs_with_tiny_settings(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("encode_speed", ROOT / "benchmarks" / "encode_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--vqgan", "tiny", "--images", "24", "--size", "40", "--batch-size", "8",
                 "--num-workers", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "one image at a time" in out and "encoder tool" in out and "speed-up" in out
