import pytest
import torch
from helpers import VARIANTS, tiny_config
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import BartConfig, BartModel

from dalle_mini_pt.config import DalleBartConfig
from dalle_mini_pt.model import DalleBart, build_dallebart
from dalle_mini_pt.train import CONFIG_DIR


def model_config(name: str) -> DalleBartConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    return instantiate(cfg.model.net.config)


@pytest.mark.parametrize("name, billions, d, layers, rows", [
    ("dalle_mini", 0.44, 1024, 12, 16385),
    ("dalle_mega", 2.6, 2048, 24, 16416),
    ("dalle_mini_2021", 0.44, 1024, 12, 16385),
])
def test_released_sizes_on_meta_device(name, billions, d, layers, rows):
    config = model_config(name)
    with torch.device("meta"):
        model = DalleBart(config)
    assert model.num_parameters() / 1e9 == pytest.approx(billions, rel=0.02)
    assert model.decoder.lm_head.weight.shape == (rows, d)
    assert len(model.encoder.layers) == len(model.decoder.layers) == layers
    assert model.config.codebook_size == 16384 and model.config.decoder_start_token_id == 16384
    assert all(p.device.type == "meta" for p in model.parameters())


def test_normformer_layout_matches_reference_tree():
    """LNs that feed a Linear have no scale; post-sublayer LNs do; no biases anywhere."""
    sd = DalleBart(tiny_config()).state_dict()
    assert "decoder.layers.0.self_attn_norms.pre.bias" in sd
    assert "decoder.layers.0.self_attn_norms.pre.weight" not in sd
    assert "decoder.layers.0.self_attn_norms.post.weight" in sd
    assert "decoder.layers.0.ffn.ln_mid.weight" not in sd and "decoder.layers.0.ffn.ln_mid.bias" in sd
    assert "encoder.final_ln.bias" in sd and "encoder.final_ln.weight" not in sd
    assert not [k for k in sd if k.endswith("proj.bias") or k.startswith("decoder.lm_head.bias")]


def test_unscanned_postln_drops_last_scale():
    scanned = DalleBart(tiny_config("postln_2021")).state_dict()
    unscanned = DalleBart(tiny_config("postln_2021", use_scan=False)).state_dict()
    key = "decoder.layers.1.ffn_norms.post.weight"
    assert key in scanned and key not in unscanned
    assert "decoder.layers.0.ffn_norms.post.weight" in unscanned


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_model_overfits_one_batch(variant):
    torch.manual_seed(0)
    model = DalleBart(tiny_config(variant))
    ids = torch.randint(3, 512, (4, 16))
    mask = torch.ones_like(ids)
    mask[2:, 10:] = 0
    labels = torch.randint(0, 32, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(ids, mask, labels).item()
    for _ in range(150):
        opt.zero_grad()
        loss = model.loss(ids, mask, labels)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cpu_autocast_bf16_trains_and_stays_close_to_float32(variant):
    """bf16-mixed on a CPU (Lightning's `precision=bf16-mixed`): LayerNorms without a scale used to break the
    backward pass there; their statistics now run in float32."""
    torch.manual_seed(0)
    model = DalleBart(tiny_config(variant))
    ids, labels = torch.randint(3, 512, (2, 16)), torch.randint(0, 32, (2, 16))
    mask = torch.ones_like(ids)
    reference = model.loss(ids, mask, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(ids, mask, labels)
    loss.backward()
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)


def test_bad_configs_name_the_key():
    with pytest.raises(ValueError, match="max_text_length.*text_positions"):
        DalleBartConfig(max_text_length=128, text_positions=64)
    with pytest.raises(ValueError, match="ln_positions"):
        DalleBartConfig(ln_positions="sandwich")
    with pytest.raises(ValueError, match="heads"):
        DalleBartConfig(d_model=100, encoder_attention_heads=16)
    with pytest.raises(ValueError, match="use_cosine_attention"):
        DalleBartConfig.from_dict({"use_cosine_attention": True})


def tiny_bart(tmp_path):
    bart = BartModel(BartConfig(vocab_size=512, d_model=32, encoder_layers=2, decoder_layers=1,
                                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                decoder_ffn_dim=48, max_position_embeddings=32))
    torch.nn.init.normal_(bart.encoder.layernorm_embedding.weight, 1.0, 0.1)  # make LN scales count
    bart.save_pretrained(tmp_path / "bart")
    return bart


def test_2021_encoder_starts_from_pretrained_bart(tmp_path):
    """The encoder loads a BART saved on disk through the same call a hub name takes, and computes
    exactly what transformers' BartEncoder computes."""
    bart = tiny_bart(tmp_path).eval()
    model = build_dallebart(tiny_config("postln_2021"), pretrained_bart=str(tmp_path / "bart")).eval()
    ids = torch.randint(3, 512, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = bart.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.encoder(ids, mask)
    assert (ref - ours)[mask.bool()].abs().max() < 1e-5


def test_2021_pretrained_bart_of_other_size_is_refused(tmp_path):
    tiny_bart(tmp_path)
    with pytest.raises(ValueError, match="d_model=32"):
        build_dallebart(tiny_config("postln_2021", d_model=64), pretrained_bart=str(tmp_path / "bart"))
