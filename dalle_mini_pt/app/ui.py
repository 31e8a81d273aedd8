"""The demo's page (Gradio 6): a prompt, the number of images, a seed, the sampling options, an optional image
to complete, and a gallery that fills in row by row while the batcher samples and ends ranked by CLIP, each
image captioned with its score and downloadable as a PNG that carries its prompt, seed and settings.

Nothing is fetched from outside: system fonts (no web fonts), analytics off (set before gradio is imported,
by `python -m dalle_mini_pt.app`), no share link. Its files (uploads, the gallery's images as they are drawn,
the downloads) stay in the app's temporary folder, pruned after an hour and removed when the app closes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from ..png_metadata import save_png  # noqa: E402
from ..request_checks import read_init_image  # noqa: E402
from .http_errors import failure_of  # noqa: E402
from .jobs import Batcher, Job  # noqa: E402

CACHE_PRUNING = (600, 3600)  # every 10 minutes, the page's files older than an hour go

THEME = gr.themes.Base(font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                       font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
CSS = "#gallery img { image-rendering: pixelated; }"  # small images enlarged stay crisp


class Page:
    """The page's one event handler and what it needs: the batcher, and a folder for the PNGs it serves."""

    def __init__(self, batcher: Batcher, files: Path):
        self.batcher, self.settings, self.files = batcher, batcher.settings, files

    def prune(self) -> None:
        """The downloads of runs older than Gradio's own pruning age go (a folder per run)."""
        self.files.mkdir(parents=True, exist_ok=True)
        old = time.time() - CACHE_PRUNING[1]
        for folder in self.files.iterdir():
            if folder.stat().st_mtime < old:
                shutil.rmtree(folder, ignore_errors=True)

    def options(self, num_images, seed, top_k, top_p, temperature, condition_scale) -> dict:
        """The widgets -> GenerationConfig fields (top-k 0 and top-p 1 are off; seed -1 is a random one)."""
        return {"num_images": int(num_images), "seed": None if seed is None or seed < 0 else int(seed),
                "top_k": int(top_k) or None if top_k is not None else None,
                "top_p": None if top_p is None or top_p >= 1 else float(top_p),
                "temperature": float(temperature), "condition_scale": float(condition_scale)}

    def submit(self, prompt, num_images, seed, top_k, top_p, temperature, condition_scale, image, keep_rows):
        fitted, keep_rows = None, int(keep_rows or 0)
        if image is not None and keep_rows:  # the upload's bytes (Gradio bounds them), checked first
            fitted = read_init_image(Path(image).read_bytes(), self.batcher.pipe.vqgan.config.resolution,
                                     self.settings.image)
        options = self.options(num_images, seed, top_k, top_p, temperature, condition_scale)
        return self.batcher.submit([prompt or ""], options, init_image=fitted,
                                   keep_rows=keep_rows if fitted is not None else 0, stream=True)

    def run(self, *inputs):
        """A generator: the queue position while waiting, the partial gallery while drawing, then the ranked
        images with their scores and the PNG downloads."""
        try:
            job = self.submit(*inputs)
        except Exception as e:  # noqa: BLE001  (each shown on the page as the API would say it)
            raise gr.Error(failure_of(e).message) from None
        length = self.batcher.pipe.model.config.image_length
        while True:
            event = job.next_event(timeout=0.25)
            if event is None:
                self.batcher.withdraw_if_late(job)
                position = self.batcher.position(job)
                status = (f"In the queue: {position - 1} request(s) ahead of yours" if position
                          else "Starting…")
                yield gr.skip(), status, gr.skip()
            elif event[0] == "partial":
                result = event[2][0]
                yield ([(image, "drawing…") for image in result.images],
                       f"Drawing: {event[1]} of {length} codes (seed {job.config.seed})", gr.skip())
            elif event[0] == "error":
                raise gr.Error(failure_of(event[1]).message)
            else:
                yield self.finished(job, event[1][0])
                return

    def finished(self, job: Job, result):
        self.prune()
        folder = Path(tempfile.mkdtemp(dir=self.files))  # one per run: several run at once
        paths = [str(save_png(image, folder / f"seed{job.config.seed}-{i + 1}.png", result.metadata(i)))
                 for i, image in enumerate(result.images)]
        captions = ([f"CLIP {s:.3f}" for s in result.scores] if result.scores is not None
                    else [f"sample {i}" for i in result.order])
        status = (f"Done: seed **{job.config.seed}**, best CLIP score first" if result.scores is not None
                  else f"Done: seed **{job.config.seed}** (no CLIP scorer, unranked)")
        return list(zip(paths, captions)), status, paths


def build_blocks(batcher: Batcher, files: Path) -> tuple[gr.Blocks, Page]:
    page = Page(batcher, files)
    defaults, grid = batcher.pipe.generation_config, batcher.pipe.vqgan.config.grid_size
    with gr.Blocks(title="dalle-mini-pt", analytics_enabled=False, delete_cache=CACHE_PRUNING) as blocks:
        gr.Markdown("## dalle-mini-pt\nType a prompt; the images appear row by row as they are drawn, then "
                    "are ranked by CLIP.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="a small red circle in the top left", scale=5,
                                elem_id="prompt")
            button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row():
            num_images = gr.Slider(1, min(16, batcher.batch_images), value=min(defaults.num_images,
                                                                                batcher.batch_images),
                                   step=1, label="Images")
            # Gradio shows a blank number as 0, so "random" needs a value of its own
            seed = gr.Number(value=-1, precision=0, label="Seed (-1: a random one, shown when done)")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                top_k = gr.Number(value=defaults.top_k or 0, precision=0, minimum=0, label="top-k (0: all)")
                top_p = gr.Slider(0.01, 1.0, value=defaults.top_p or 1.0, label="top-p (1: off)")
                temperature = gr.Slider(0.05, 3.0, value=defaults.temperature, label="temperature")
                scale = gr.Slider(0.0, 20.0, value=defaults.condition_scale, step=0.5,
                                  label="condition scale (1: off)")
        with gr.Accordion("Complete an image", open=False):
            with gr.Row():
                image = gr.Image(type="filepath", label="Image (its top rows are kept)", sources=["upload"])
                keep_rows = gr.Slider(0, grid, value=grid // 2, step=1, label=f"Code rows kept (of {grid})")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(label="Images", columns=4, object_fit="contain", height="auto", format="png",
                             elem_id="gallery")
        files = gr.File(label="Downloads: PNGs with prompt, seed and settings", file_count="multiple")
        inputs = [prompt, num_images, seed, top_k, top_p, temperature, scale, image, keep_rows]
        button.click(page.run, inputs, [gallery, status, files], api_name="generate")
        prompt.submit(page.run, inputs, [gallery, status, files], api_name=False)
    # as many page requests as one batch holds reach the batcher at once, so they can merge; Gradio's own
    # queue (with its position shown) holds the rest, as many as the batcher's
    blocks.queue(default_concurrency_limit=batcher.batch_images, max_size=batcher.settings.max_queue)
    return blocks, page


def mount_ui(app: FastAPI, batcher: Batcher, files: Path) -> FastAPI:
    """The page at /, with its downloads in `files`."""
    blocks, page = build_blocks(batcher, files)
    return gr.mount_gradio_app(app, blocks, path="/", theme=THEME, css=CSS, ssr_mode=False,
                               allowed_paths=[str(page.files)], footer_links=["api"],
                               max_file_size=batcher.settings.image.max_bytes)
