"""The encoder against S3 (moto's server on a loopback port, reached through s3fs over real HTTP): tars and
parquet tables read from the bucket, shards and report written into it as whole objects, a rerun that
writes nothing, and a lost shard rewritten alone."""

import fsspec
import pytest
from test_encode import codes_by_caption, module_fixtures
from test_encode_inputs import KW, folder_reference, img2dataset_parquet, img2dataset_webdataset

from dalle_mini_pt.data.encode import encode_dataset
from dalle_mini_pt.data.input_formats import open_source

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def bucket(monkeypatch_module):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch_module.setenv(key, value)
    # every s3fs instance, here and in forked DataLoader workers, talks to the local server
    monkeypatch_module.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir("data")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


vqgan, images = module_fixtures()


@pytest.fixture(scope="module")
def folder_run(images, vqgan, tmp_path_factory):
    return folder_reference(images, vqgan, tmp_path_factory.mktemp("folder_out"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def objects(fs, prefix: str) -> dict:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[-1]: info["ETag"] for p, info in fs.find(prefix, detail=True).items()}


def local_codes(fs, prefix: str, tmp_path) -> dict:
    fs.get(prefix, str(tmp_path), recursive=True)
    return codes_by_caption(tmp_path)


def test_tars_from_s3_encode_into_s3_whole_and_resume_shard_by_shard(images, vqgan, folder_run, bucket,
                                                                     tmp_path):
    fs, model = bucket, vqgan
    img2dataset_webdataset(images, tmp_path / "wds")
    fs.put(str(tmp_path / "wds") + "/", "data/wds", recursive=True)
    source = open_source("tar", "s3://data/wds/{00000..00001}.tar")
    report = encode_dataset(source, model, "s3://data/encoded", **{**KW, "num_workers": 1})
    written = objects(fs, "data/encoded")
    assert set(written) == {"00000.parquet", "00001.parquet", "report.json"}  # no temporary object
    assert report["encoded"] == 15 and report["bad"][0]["item"].startswith("s3://data/wds/00000.tar:")
    assert local_codes(fs, "data/encoded", tmp_path / "back") == folder_run[1]

    assert encode_dataset(source, model, "s3://data/encoded", **KW) == report
    assert objects(fs, "data/encoded") == written  # nothing uploaded again
    fs.rm("data/encoded/00001.parquet")
    assert encode_dataset(source, model, "s3://data/encoded", **KW) == report
    again = objects(fs, "data/encoded")
    assert again["00000.parquet"] == written["00000.parquet"] and set(again) == set(written)


def test_an_img2dataset_parquet_in_s3_encodes_like_the_local_folder(images, vqgan, folder_run, bucket,
                                                                    tmp_path):
    img2dataset_parquet(images, tmp_path / "pq")
    bucket.put(str(tmp_path / "pq") + "/", "data/pq", recursive=True)
    remote = encode_dataset(open_source("table", "s3://data/pq/*.parquet"), vqgan, tmp_path / "remote",
                            **{**KW, "num_workers": 1})
    assert codes_by_caption(tmp_path / "remote") == folder_run[1]
    assert (remote["encoded"], remote["skipped"]) == (15, 5)  # the failed download is the fifth
