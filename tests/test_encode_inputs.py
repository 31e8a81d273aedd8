"""Encoder inputs as users hold them: img2dataset's three output formats, webdataset tars served over HTTP
(brace patterns, .tar.gz), Hugging Face datasets, and the refusals of what cannot be read, before any image
is; an img2dataset parquet goes from `encode` to `train` with nothing in between."""

import csv
import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from file_server import FileServer
from test_encode import ROOT, codes_by_caption, encode_cfg, module_fixtures

from dalle_mini_pt.data.code_writer import EncodingIncomplete
from dalle_mini_pt.data.encode import encode_dataset, run
from dalle_mini_pt.data.image_sources import FolderSource
from dalle_mini_pt.data.input_formats import open_source

KW = dict(shard_size=8, batch_size=4, num_workers=0, progress=False)
vqgan, images = module_fixtures()


def item_files(images: Path) -> list[tuple[Path, Path, Path]]:
    """(image, caption, sidecar) of every item of the img2dataset folder, in key order."""
    found = sorted(p for p in images.rglob("*") if p.suffix in (".jpg", ".png"))
    return [(p, p.with_suffix(".txt"), p.with_suffix(".json")) for p in found]


def write_tar(path: Path, items, gz: bool = False) -> Path:
    """A webdataset shard as img2dataset writes one (flat keys: 000000012.jpg, .txt, .json)."""
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for files in items:
            for f in files:
                tf.add(f, arcname=f.name)
    return path


def img2dataset_webdataset(images: Path, out: Path, gz_last: bool = False) -> list[Path]:
    """img2dataset's `webdataset` output: NNNNN.tar (10 items each) with its NNNNN.parquet of metadata and
    NNNNN_stats.json beside it."""
    out.mkdir()
    items, tars = item_files(images), []
    for t, start in enumerate(range(0, len(items), 10)):
        gz = gz_last and start + 10 >= len(items)
        tars.append(write_tar(out / f"{t:05d}.tar{'.gz' if gz else ''}", items[start:start + 10], gz))
        keys = pa.table({"key": [i[0].stem for i in items[start:start + 10]]})
        pq.write_table(keys, out / f"{t:05d}.parquet")
        (out / f"{t:05d}_stats.json").write_text("{}")
    return tars


def img2dataset_parquet(images: Path, out: Path) -> Path:
    """img2dataset's `parquet` output: the image bytes in `jpg`, the caption in `txt` (and `caption`), one
    failed download (jpg null, status failed_to_download), row groups of 100 rows as its writer makes."""
    out.mkdir()
    rows = [{"key": img.stem, "jpg": img.read_bytes(), "txt": txt.read_text(), "caption": txt.read_text(),
             "url": f"http://example.com/{img.name}", "status": "success"}
            for img, txt, _ in item_files(images)]
    rows.append({"key": "000000099", "jpg": None, "txt": None, "caption": None, "url": "http://gone/x.jpg",
                 "status": "failed_to_download"})
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string()),
                        ("caption", pa.string()), ("url", pa.string()), ("status", pa.string())])
    for s, start in enumerate((0, 12)):
        pq.write_table(pa.Table.from_pylist(rows[start:start + 12], schema), out / f"{s:05d}.parquet",
                       row_group_size=100)
    return out


def folder_reference(images: Path, vqgan, out: Path) -> tuple[dict, dict]:
    """The folder source's report and codes: what every other layout of the same items must give."""
    return encode_dataset(FolderSource(images), vqgan, out, **KW), codes_by_caption(out)


@pytest.fixture(scope="module")
def folder_run(images, vqgan, tmp_path_factory) -> tuple[dict, dict]:
    return folder_reference(images, vqgan, tmp_path_factory.mktemp("folder_out"))


def test_img2dataset_files_webdataset_and_parquet_outputs_give_the_same_codes(images, vqgan, folder_run,
                                                                              tmp_path):
    folder, codes = folder_run
    tars = img2dataset_webdataset(images, tmp_path / "wds")
    wds = encode_dataset(open_source("tar", str(tmp_path / "wds" / "*.tar")), vqgan, tmp_path / "wds_out",
                         **KW)
    img2dataset_parquet(images, tmp_path / "pq")
    table = encode_dataset(open_source("table", str(tmp_path / "pq" / "*.parquet")), vqgan,
                           tmp_path / "pq_out", **KW)
    assert len(codes) == 15
    assert codes_by_caption(tmp_path / "wds_out") == codes == codes_by_caption(tmp_path / "pq_out")
    # a tar is one piece: its shard takes the tar's name; the metadata parquet beside it is no input
    assert wds["shards"] == [t.name.replace(".tar", ".parquet") for t in tars]
    assert (folder["skipped"], wds["skipped"]) == (4, 4)
    # the failed download is an item without an image, named by its file and row
    assert table["skipped"] == 5 and table["items"] == 20
    assert {"item": f"{tmp_path / 'pq' / '00001.parquet'}:7", "error": "ValueError: no image (null in column "
            "'jpg')"} in table["bad"]
    keys = pq.read_table(tmp_path / "pq_out" / "00000.parquet").column("key").to_pylist()
    assert keys == ["000000000", "000000001", "000000003", "000000004", "000000006"]  # items 0..7


def test_tars_over_http_with_brace_patterns_and_gzip_read_through_fsspec(images, vqgan, folder_run, tmp_path):
    img2dataset_webdataset(images, tmp_path / "wds", gz_last=True)
    with FileServer(tmp_path / "wds") as server:
        source = open_source("tar", [f"{server.url}/{{00000..00000}}.tar", f"{server.url}/00001.tar.gz"])
        report = encode_dataset(source, vqgan, tmp_path / "out", **{**KW, "num_workers": 2})
    assert ("GET", "00000.tar") in server.requests and ("GET", "00001.tar.gz") in server.requests
    assert report["shards"] == ["00000.parquet", "00001.parquet"] and report["encoded"] == 15
    assert codes_by_caption(tmp_path / "out") == folder_run[1]
    assert all(b["item"].startswith(server.url) for b in report["bad"])


def test_a_tar_cut_off_in_transfer_is_not_half_written_and_the_rerun_reads_it_again(images, vqgan, tmp_path):
    tars = img2dataset_webdataset(images, tmp_path / "wds")
    whole = tars[1].read_bytes()
    tars[1].write_bytes(whole[:len(whole) // 2])  # as a download stopped half-way
    source = open_source("tar", str(tmp_path / "wds" / "*.tar"))
    with pytest.raises(EncodingIncomplete, match=r"1 of 2 shards .*00001\.tar"):
        encode_dataset(source, vqgan, tmp_path / "out", **KW)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shards"] == ["00000.parquet"] and report["missing"] == ["00001.parquet"]
    assert report["failed"][0]["source"] == str(tars[1])
    tars[1].write_bytes(whole)
    first = pq.read_table(tmp_path / "out" / "00000.parquet")
    done = encode_dataset(source, vqgan, tmp_path / "out", **KW)
    assert done["missing"] == [] == done["failed"] and not list((tmp_path / "out").glob("*.failed.json"))
    assert pq.read_table(tmp_path / "out" / "00000.parquet").equals(first)
    clean = encode_dataset(source, vqgan, tmp_path / "clean", **KW)
    assert done == clean


def hf_image_dataset(images: Path):
    import datasets

    items = item_files(images)
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": img.read_bytes(), "path": None} for img, _, _ in items],
         "text": [txt.read_text() for _, txt, _ in items], "label": list(range(len(items)))},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                    "label": datasets.Value("int64")}))


def test_hugging_face_datasets_saved_to_disk_as_parquet_and_streamed(images, vqgan, folder_run, tmp_path):
    ds = hf_image_dataset(images)
    ds.save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "hub").mkdir()
    for k in range(2):  # a hub repo's layout: data files of one split
        ds.shard(2, k, contiguous=True).to_parquet(str(tmp_path / "hub" / f"train-0000{k}-of-00002.parquet"))
    expected = folder_run[1]
    for name, kwargs in {"disk": dict(path=str(tmp_path / "disk")),
                         "parquet": dict(path=str(tmp_path / "hub"), cache_dir=str(tmp_path / "cache")),
                         "streamed": dict(path=str(tmp_path / "hub"), streaming=True)}.items():
        report = encode_dataset(open_source("hf", **kwargs), vqgan, tmp_path / name,
                                **{**KW, "num_workers": 2})
        assert codes_by_caption(tmp_path / name) == expected, name
        assert report["encoded"] == 15 and report["skipped"] == 4, name
    assert report["shards"] == ["00000.parquet", "00001.parquet"]  # streamed: a shard per data file


def refused(tmp_path, match, **inp):
    cfg = encode_cfg(f"output_dir={tmp_path / 'out'}", "vqgan_weights=null", "input.path=x",
                     *[f"input.{k}={v}" for k, v in inp.items()])
    with pytest.warns(UserWarning, match="random"), pytest.raises(ValueError, match=match):
        run(cfg)
    assert not (tmp_path / "out").exists()  # refused before the output, let alone an image, was touched


def test_columns_of_the_wrong_type_are_refused_before_the_first_image(tmp_path):
    table = pa.table({"image_path": ["a.jpg"], "caption": ["x"], "n": [3], "caption_n": [7],
                      "blob": [b"\x89PNG"], "box": [{"x": 1, "y": 2}]})
    pq.write_table(table, tmp_path / "t.parquet")
    path = str(tmp_path / "t.parquet")
    refused(tmp_path, r"column 'n' holds int64, which is neither image paths \(text\), image bytes",
            format="table", path=path, image_column="n")
    refused(tmp_path, r"column 'box' holds struct<x: int64, y: int64>, which is neither",
            format="table", path=path, image_column="box")
    refused(tmp_path, r"column 'blob' holds binary, not text, so it cannot be the captions",
            format="table", path=path, caption_column="blob")
    refused(tmp_path, r"column 'caption_n' holds int64, not text", format="table", path=path,
            caption_column="caption_n")
    refused(tmp_path, r"no column 'file' \(has \['image_path', .*\]\); set input.image_column",
            format="table", path=path, image_column="file")
    pq.write_table(table.drop_columns(["image_path"]), tmp_path / "u.parquet")
    refused(tmp_path, r"none of the columns .* is one of \['image_path', 'jpg'.*input.image_column=COLUMN",
            format="table", path=str(tmp_path / "u.parquet"))


def test_hf_columns_of_the_wrong_type_are_refused(images, tmp_path):
    hf_image_dataset(images).save_to_disk(str(tmp_path / "disk"))
    refused(tmp_path, r"column 'label' holds int64, which is neither", format="hf",
            path=str(tmp_path / "disk"), image_column="label")
    refused(tmp_path, r"column 'label' holds int64, not text", format="hf", path=str(tmp_path / "disk"),
            caption_column="label")


def test_inputs_that_name_no_file_or_one_name_twice_are_refused(images, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_tar(tmp_path / d / "00000.tar", item_files(images)[:2])
    with pytest.raises(ValueError, match=r"two input files are named '00000' .*own output_dir"):
        open_source("tar", str(tmp_path / "*" / "*.tar"))
    with pytest.raises(FileNotFoundError, match=r"1 of 2 tar files do not exist, e.g. \[.*00001.tar'\]"):
        open_source("tar", str(tmp_path / "a" / "{00000..00001}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no tar files"):
        open_source("tar", str(tmp_path / "c" / "*.tar"))


@pytest.mark.slow
def test_an_img2dataset_parquet_goes_from_encode_to_train_with_no_step_between(images, tiny_data, tmp_path):
    """The commands a user runs: img2dataset's parquet output -> the encoder -> the trainer."""
    from helpers import compose_train

    from dalle_mini_pt.train import train

    img2dataset_parquet(images, tmp_path / "laion")
    proc = subprocess.run(
        [sys.executable, "-m", "dalle_mini_pt.data.encode", "input.format=table",
         # quoted for Hydra, which reads a bare `{` as the start of a dict (the shell: "input.path='...'")
         f"input.path='{tmp_path / 'laion'}/{{00000..00001}}.parquet'", f"output_dir={tmp_path / 'encoded'}",
         "vqgan=tiny", "vqgan_weights=null", "num_workers=0", "shard_size=8", "progress=false",
         f"hydra.run.dir={tmp_path / 'logs'}"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "encoded 15 of 20 images into 3 shards" in proc.stdout
    cfg = compose_train(["+experiment=debug", f"data.train_files={tmp_path / 'encoded'}/*.parquet",
                         f"data.val_files={tmp_path / 'encoded'}/00000.parquet",
                         f"data.tokenizer={tiny_data / 'tokenizer'}", "data.batch_size=4",
                         "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.val_check_interval=3",
                         "callbacks=none", "logger=csv"],
                        output_dir=tmp_path / "run")
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    assert [r["step"] for r in rows if r.get("train/loss")] == ["0", "1", "2"]
    assert any(r.get("val/loss") for r in rows)


def test_gzip_tar_and_plain_tar_hold_the_same_samples(images, tmp_path):
    """.tar.gz is read by tarfile's stream mode, which recognises the compression itself."""
    items = item_files(images)[:5]
    plain = write_tar(tmp_path / "00000.tar", items)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "00000.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))

    def samples(pattern):
        source = open_source("tar", pattern)
        return [(n.rsplit(":", 1)[1], s.key, s.caption, s.image) for n, s in source.stream(0)]

    assert samples(str(plain)) == samples(str(tmp_path / "gz" / "*.tar.gz"))
    assert len(samples(str(plain))) == 5


def test_the_vqgan_runs_in_float32_whatever_the_trainer_group(tmp_path):
    assert encode_cfg("input.path=x", "vqgan_weights=null", "trainer=gpu").trainer.precision == "32-true"
    assert encode_cfg("input.path=x", "vqgan_weights=null", "trainer=tpu").trainer.precision == "32-true"
    cfg = encode_cfg(f"input.path={tmp_path / 'not_read'}", "vqgan_weights=null",
                     "trainer.precision=bf16-mixed")
    with pytest.raises(ValueError, match=r"trainer.precision=bf16-mixed: the VQGAN only runs in float32"):
        run(cfg)
