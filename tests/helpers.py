"""What several test modules build the same way: tiny model configs of each supported option set, and the
real training config composed as the entry point composes it. (Fixtures live in conftest.py.)"""

import pytest

from dalle_mini_pt.config import DalleBartConfig

# option sets the model claims to support, at test size
TINY = dict(encoder_vocab_size=512, image_vocab_size=40, codebook_size=32, image_length=16,
            max_text_length=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48)
VARIANTS = {
    "normformer": dict(),
    "normformer_headscale_lnscale": dict(use_head_scale=True, force_ln_scale=True),
    "preln_ffn_bias": dict(ln_positions="preln", use_glu=False, use_bias=True),
    "postln_2021": dict(ln_positions="postln", use_glu=False, use_bias=True, position_offset=2,
                        text_positions=32, image_positions=17, use_final_ln_encoder=False,
                        use_final_ln_decoder=False),
}


def tiny_config(variant: str = "normformer", **overrides) -> DalleBartConfig:
    return DalleBartConfig(**{**TINY, **VARIANTS[variant], **overrides})


def compose_train(overrides=(), output_dir=None):
    """The real `conf/train.yaml`, composed as the entry point would (without Hydra's run dir)."""
    from hydra import compose, initialize_config_dir

    from dalle_mini_pt.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir else []
        return compose(config_name="train", overrides=list(overrides) + extra)


def check_rates(rates: dict, prompts: int) -> None:
    """What an evaluation's per-attribute rates must satisfy, whatever the model: each is a count over the
    split's prompts (a multiple of 1/prompts), and `all` needs colour and shape, which need each alone."""
    assert set(rates) == {"colour", "shape", "size", "position", "colour_and_shape", "all"}
    for name, rate in rates.items():
        assert abs(rate * prompts - round(rate * prompts)) < 1e-9 and 0 <= round(rate * prompts) <= prompts, \
            (name, rate, prompts)
    assert rates["all"] <= rates["colour_and_shape"] <= min(rates["colour"], rates["shape"]), rates


def check_reconstruction(report: dict, vqgan) -> None:
    """The report's VQGAN figures are those of `vqgan` (the VQGAN the evaluation was given), recomputed."""
    from dalle_mini_pt.shapes.evaluate import reconstruction

    for split in ("validation", "heldout"):
        # approx: the report may come from another process, whose thread count can change float sums
        recomputed = reconstruction(vqgan, split)
        assert report["vqgan_reconstruction"][split] == pytest.approx(recomputed, rel=1e-4), split
    assert report["vqgan_psnr_db"] == report["vqgan_reconstruction"]["validation"]["psnr_db"]
