"""What the demo server's tests share: a tiny saved pipeline, and `python -m dalle_mini_pt.app` started as
users start it, on a free loopback port, stopped by its own pid."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx
import torch
from helpers import tiny_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.pipeline import DalleMiniPipeline
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import CONFIG_DIR

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


def app_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dalle_mini_pt.app", *args]


def app_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": str(ROOT), **extra}


class Server:
    """`python -m dalle_mini_pt.app --pipeline PIPELINE --port FREE ARGS...`; `key` is sent with every
    request the helpers make, `env` adds to the environment (TMPDIR, to see what it leaves behind)."""

    def __init__(self, pipeline: Path, *args: str, key: Optional[str] = None, env: Optional[dict] = None):
        self.port, self.key = free_port(), key
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        command = app_command("--pipeline", str(pipeline), "--port", str(self.port), *args)
        self.proc = subprocess.Popen(command, cwd=ROOT, env=app_env(**(env or {})), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
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
        return httpx.post(self.url + "/api/generate", json=body, timeout=timeout, headers=self.headers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
