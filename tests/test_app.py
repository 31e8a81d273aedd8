"""The demo server, started as users start it (`python -m dalle_mini_pt.app`) on a free loopback port with a
tiny saved pipeline, driven through its HTTP API and through `gradio_client`: batching of concurrent
requests (counted on /health), each request's own images for its seed, the page's streamed gallery, PNG
metadata, and 4xx answers that leave the server up."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs the [demo] extra: pip install -e .[demo]")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow  # a real server in a subprocess; tests/test_jobs.py checks the batcher fast

from dalle_mini_pt.generation_config import GenerationConfig  # noqa: E402
from dalle_mini_pt.model import DalleBart  # noqa: E402
from dalle_mini_pt.pipeline import DalleMiniPipeline  # noqa: E402
from dalle_mini_pt.png_metadata import read_png_text  # noqa: E402
from dalle_mini_pt.tokenizer import TextTokenizer  # noqa: E402
from dalle_mini_pt.train import CONFIG_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def save_tiny_pipeline(tokenizer_dir: Path, out: Path) -> Path:
    """Tiny random components (32x32 images, a 16x16 code grid), saved as one pipeline directory."""
    torch.manual_seed(0)
    model = DalleBart(tiny_config(image_length=256, image_vocab_size=32))
    parts = [instantiate(OmegaConf.load(f"{CONFIG_DIR}/{group}/tiny.yaml")) for group in ("vqgan", "clip")]
    pipe = DalleMiniPipeline(model, TextTokenizer.from_pretrained(str(tokenizer_dir), 16), *parts,
                             generation_config=GenerationConfig(num_images=2, top_k=8, condition_scale=3.0))
    pipe.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m dalle_mini_pt.app` in a subprocess, stopped (by its own pid) when the tests are done."""

    def __init__(self, pipeline: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dalle_mini_pt.app", "--pipeline", str(pipeline),
                                      "--port", str(self.port), *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the demo server did not come up:\n{self.proc.stdout.read()[-3000:]}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def generate(self, body: dict, timeout=300) -> httpx.Response:
        return httpx.post(self.url + "/api/generate", json=body, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def pipeline_dir(tiny_data, tmp_path_factory):
    return save_tiny_pipeline(tiny_data / "tokenizer", tmp_path_factory.mktemp("demo") / "pipeline")


@pytest.fixture(scope="module")
def server(pipeline_dir):
    # a long merge window so that requests sent together surely land in one batch
    s = Server(pipeline_dir, "--batch-wait", "1.0", "--batch-images", "16")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local(pipeline_dir):
    return DalleMiniPipeline.from_pretrained(pipeline_dir)


def pixels(png_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))


def same_images(answer: dict, expected) -> bool:
    got = [pixels(i["png"]) for i in answer["images"]]
    return len(got) == len(expected.images) and all(
        np.abs(g.astype(int) - np.asarray(e).astype(int)).max() <= 1 for g, e in zip(got, expected.images))


def test_four_concurrent_clients_share_sampler_calls_and_keep_their_own_images(server, local):
    requests = [{"prompts": [p], "options": {"seed": s, "num_images": 2}}
                for p, s in [("a red square", 1), ("a blue circle", 2), ("a green cross", 3),
                             ("a red square", 4)]]
    before = server.health()["sampler_calls"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(server.generate, requests))
    calls = server.health()["sampler_calls"] - before
    assert all(a.status_code == 200 for a in answers), [a.text[:300] for a in answers]
    assert 1 <= calls < 4, f"{calls} sampler calls for 4 requests sent together"
    for request, answer in zip(requests, answers):
        (result,) = answer.json()["results"]
        assert result["seed"] == request["options"]["seed"] and result["prompt"] == request["prompts"][0]
        scores = [i["score"] for i in result["images"]]
        assert scores == sorted(scores, reverse=True)
        # what this request got in a shared batch is what its seed gives alone
        alone = local(request["prompts"], seed=request["options"]["seed"], num_images=2)[0]
        assert same_images(result, alone) and scores == pytest.approx(alone.scores, abs=1e-4)
        text = read_png_text(base64.b64decode(result["images"][0]["png"]))
        assert text["prompt"] == result["prompt"] and text["seed"] == str(result["seed"])
        assert json.loads(text["settings"])["num_images"] == 2


def test_completion_through_the_api_keeps_the_images_rows(server, local):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    answer = server.generate({"prompt": "a red square", "options": {"seed": 9, "num_images": 2},
                              "init_image": base64.b64encode(buffer.getvalue()).decode(), "keep_rows": 6})
    assert answer.status_code == 200, answer.text[:500]
    (result,) = answer.json()["results"]
    from dalle_mini_pt.data.image_sources import load_image

    fitted = load_image(buffer.getvalue(), 32)  # resized and centre-cropped as the data encoder does
    alone = local("a red square", seed=9, num_images=2, init_image=torch.from_numpy(fitted), keep_rows=6)[0]
    assert result["keep_rows"] == 6 and same_images(result, alone)


def test_bad_requests_get_4xx_with_the_reason_and_the_server_stays_up(server):
    garbage = base64.b64encode(b"not an image").decode()
    cases = [({"prompts": []}, 422, "no prompts"),
             ({"prompts": ["a"], "options": {"top_k": 999}}, 422, "codebook size"),
             ({"prompts": ["a"], "options": {"temperature": -1}}, 422, "temperature"),
             ({"prompts": ["a"], "options": {"colour": "red"}}, 422, "unknown sampling option"),
             ({"prompts": ["a"], "options": {"num_images": 64}}, 413, "at most 16"),
             ({"prompts": ["a"], "keep_rows": 3}, 422, "needs an image"),
             ({"prompts": ["a"], "init_image": garbage, "keep_rows": 3}, 422, "not an image"),
             ({"prompts": ["a"], "init_image": "a" * (12 * 2**20), "keep_rows": 3}, 413, "bytes"),
             ({"prompts": ["a"], "init_image": _big_png(), "keep_rows": 3}, 413, "pixels")]
    for body, status, reason in cases:
        answer = server.generate(body)
        assert answer.status_code == status and reason in answer.text, (body, answer.text[:300])
    assert server.health()["status"] == "ok"
    assert server.generate({"prompt": "still here", "options": {"num_images": 1}}).status_code == 200


def _big_png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")  # small file, too many pixels
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_page_streams_the_gallery_and_ends_ranked(server, local):
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    job = client.submit("a blue circle", 2, 5, 8, 1.0, 1.0, 3.0, None, 0, api_name="/generate")
    for _ in job:  # the updates as they stream
        pass
    gallery, status, files = job.result()
    assert "seed **5**" in status
    captions = [item["caption"] for item in gallery]
    scores = [float(c.split()[1]) for c in captions]
    assert all(c.startswith("CLIP ") for c in captions) and scores == sorted(scores, reverse=True)
    alone = local("a blue circle", seed=5, num_images=2)[0]
    assert scores == pytest.approx(alone.scores, abs=1e-3)
    assert read_png_text(files[0])["seed"] == "5" and read_png_text(files[0])["prompt"] == "a blue circle"
    assert len(job.outputs()) > 2  # partial galleries came before the last one


def test_without_a_pipeline_it_says_how_to_make_one(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dalle_mini_pt.app"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "python -m dalle_mini_pt.shapes_pipeline" in proc.stderr
