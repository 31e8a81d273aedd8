"""The encoder on torch-xla's CPU device (`trainer=tpu`, one device, PJRT_DEVICE=CPU): the same codes as on
the CPU, and the VQGAN compiled once for the whole run (short batches come padded to batch_size).

Needs torch-xla: `bash scripts/xla_env.sh`, then `PJRT_DEVICE=CPU .venv-xla/bin/python -m pytest
tests/test_encode_xla.py`; skipped elsewhere."""

import pytest

pytest.importorskip("torch_xla",
                    reason="torch_xla is not installed (bash scripts/xla_env.sh builds .venv-xla)")

from test_encode import codes_by_caption, encode_cfg, make_images  # noqa: E402
from test_xla import compiles, xla_cpu_device  # noqa: E402,F401  (the fixture)

from dalle_mini_pt.data.encode import run  # noqa: E402


@pytest.mark.usefixtures("xla_cpu_device")
def test_the_encoder_on_xla_gives_the_cpus_codes_from_one_compiled_graph(tmp_path):
    images = make_images(tmp_path / "images")
    reports = {}
    runs = {"cpu": ["trainer.accelerator=cpu"], "xla": ["trainer=tpu", "trainer.devices=1"]}
    for name, trainer in runs.items():
        cfg = encode_cfg(f"input.path={images}", f"output_dir={tmp_path / name}", "vqgan_weights=null",
                         "num_workers=0", "shard_size=8", "batch_size=4", "progress=false", *trainer)
        before = compiles()
        with pytest.warns(UserWarning, match="random"):
            reports[name] = run(cfg)
        graphs = compiles() - before
    # batches of 3, 2, 3, 4 and 3 good images: without padding each size would compile anew
    assert graphs == 1
    assert reports["xla"] == reports["cpu"] and reports["cpu"]["encoded"] == 15
    assert codes_by_caption(tmp_path / "xla") == codes_by_caption(tmp_path / "cpu")
