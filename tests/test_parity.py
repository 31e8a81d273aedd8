"""Parity with the reference implementation (dalle-mini 0.1.5, JAX/Flax), as numbers.

The reference outputs are regenerated for every run by `scripts/reference_outputs.py` in the reference
environment (`scripts/reference_env.sh` builds `.venv-ref`), never read from committed files. Each case is a
tiny random reference checkpoint (config.json + flax_model.msgpack) that our converter loads; we then compare
encoder states, teacher-forced logits and the per-step logits of a super-conditioned sampling run, and check
that the same Gumbel noise draws the same tokens.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle_mini_pt import DalleBart

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("DALLE_MINI_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
OPTION_SETS = ["normformer_glu", "normformer_headscale_lnscale", "preln_ffn_bias", "postln_ffn_bias"]
CASES = [f"{name}_{layout}" for name in OPTION_SETS for layout in ("scanned", "unscanned")]
TOLERANCE = 1e-4  # float32; what we measure is ~1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    if not REF_PYTHON.exists():
        pytest.skip(f"reference environment missing ({REF_PYTHON}); build it with scripts/reference_env.sh")
    out = tmp_path_factory.mktemp("reference")
    proc = subprocess.run([str(REF_PYTHON), str(ROOT / "scripts" / "reference_outputs.py"), "--out",
                           str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"] == CASES
    return out, manifest["sampling"]


def relative_error(ours: torch.Tensor, ref: np.ndarray) -> float:
    """Largest deviation, relative to the largest reference magnitude (elementwise ratios explode near 0)."""
    ref = torch.from_numpy(ref).double()
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(reference, case):
    out, sampling = reference
    ref = dict(np.load(out / case / "outputs.npz"))
    model = DalleBart.from_pretrained(out / case)  # converts flax_model.msgpack without jax
    assert model.config.use_scan is case.endswith("_scanned")
    t = {k: torch.from_numpy(ref[k]).long() for k in ("input_ids", "attention_mask", "decoder_input_ids",
                                                       "uncond_input_ids", "uncond_attention_mask")}
    with torch.no_grad():
        states = model.encoder(t["input_ids"], t["attention_mask"])
        logits = model(t["input_ids"], t["attention_mask"], t["decoder_input_ids"])
    codes, step_logits = model.generate(
        t["input_ids"], t["attention_mask"], top_k=sampling["top_k"], top_p=sampling["top_p"],
        temperature=sampling["temperature"], condition_scale=sampling["condition_scale"],
        uncond_input_ids=t["uncond_input_ids"], uncond_attention_mask=t["uncond_attention_mask"],
        noise=torch.from_numpy(ref["noise"]), return_logits=True)
    errors = {"encoder_states": relative_error(states, ref["encoder_states"]),
              "logits": relative_error(logits, ref["logits"]),
              "sample_logits": relative_error(step_logits, ref["sample_logits"])}
    print(case, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) <= TOLERANCE, errors
    assert torch.equal(codes, torch.from_numpy(ref["tokens"]).long())
