"""VQGAN wrapper: shapes, input handling, float32 policy, and faithfulness to taming's own VQModel."""

import importlib
import json
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import dalle_mini_pt  # noqa: F401  (patches torchvision before taming/Lightning import it)
from dalle_mini_pt.vqgan import VQGAN, VQGANConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = dict(n_embed=32, embed_dim=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
            resolution=32, z_channels=16)


def tiny_model(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(VQGANConfig(**TINY)).eval()


def taming_vqmodel(config: VQGANConfig, seed: int = 1):
    """taming's own VQModel, the reference. Its module imports `taming.main`, which needs Lightning 1.x
    and torchvision; a stub with only `instantiate_from_config` is all VQModel uses (deps.md §2.3)."""
    if "taming.main" not in sys.modules:
        def instantiate_from_config(c):
            module, name = c["target"].rsplit(".", 1)
            return getattr(importlib.import_module(module), name)(**c.get("params", {}))

        stub = types.ModuleType("taming.main")
        stub.instantiate_from_config = instantiate_from_config
        sys.modules["taming.main"] = stub
    from taming.models.vqgan import VQModel

    torch.manual_seed(seed)
    no_loss = {"target": "torch.nn.Identity"}  # the real loss downloads VGG/LPIPS weights
    return VQModel(config.ddconfig(), no_loss, config.n_embed, config.embed_dim).eval()


def taming_decode(vqmodel, codes: torch.Tensor, config: VQGANConfig) -> torch.Tensor:
    g = config.grid_size
    z = vqmodel.quantize.get_codebook_entry(codes.reshape(-1), shape=(codes.shape[0], g, g, config.embed_dim))
    with torch.no_grad():
        return ((vqmodel.decode(z) + 1) / 2).clamp(0, 1)


def random_codes(model: VQGAN, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, model.config.n_embed, (batch, model.config.codes_per_image))


def test_round_trip_shapes_and_ranges():
    model = tiny_model()
    codes = model.encode(torch.rand(2, 3, 32, 32))
    assert codes.shape == (2, 256) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 32
    images = model.decode(codes)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    as_uint8 = model.decode(codes, output="uint8")
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (2, 3, 32, 32)
    assert torch.equal(as_uint8, (images * 255).round().to(torch.uint8))


def test_uint8_and_nhwc_inputs_give_the_same_codes_as_float_nchw():
    model = tiny_model()
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)  # what a PIL/numpy batch looks like
    reference = model.encode(pixels.permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(model.encode(pixels), reference)
    assert torch.equal(model.encode(pixels.numpy()), reference)
    assert torch.equal(model.encode(pixels.permute(0, 3, 1, 2)), reference)
    assert torch.equal(model.encode(pixels.double() / 255), reference)


def test_zero_to_one_pixel_range_skips_the_rescale():
    signed = tiny_model()
    unit = VQGAN(VQGANConfig(**TINY, pixel_range="zero_to_one"))
    unit.load_state_dict(signed.state_dict())
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(unit.encode(images), signed.encode((images + 1) / 2))  # both models see `images`
    codes = random_codes(signed)
    torch.testing.assert_close(unit.decode(codes), (signed.decode(codes) * 2 - 1).clamp(0, 1))


def test_state_dict_matches_taming_vqmodel():
    config = VQGANConfig(**TINY)
    ours = VQGAN(config).state_dict()
    theirs = taming_vqmodel(config).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_taming_checkpoint_loads_and_matches_taming_outputs(tmp_path):
    config = VQGANConfig(**TINY)
    vqmodel = taming_vqmodel(config)
    loss_weights = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(3)}
    state = {**vqmodel.state_dict(), **loss_weights}
    torch.save({"state_dict": state, "global_step": 3}, tmp_path / "last.ckpt")
    torch.save(vqmodel.state_dict(), tmp_path / "bare.ckpt")

    model = VQGAN.from_pretrained(tmp_path / "last.ckpt", default_config=config).eval()
    codes = random_codes(model)
    torch.testing.assert_close(model.decode(codes), taming_decode(vqmodel, codes, config), rtol=0, atol=0)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = vqmodel.encode(images * 2 - 1)[2][2].reshape(2, -1)  # taming wants [-1, 1] pixels
    assert torch.equal(model.encode(images), expected)
    bare = VQGAN.from_pretrained(tmp_path / "bare.ckpt", default_config=config)
    assert torch.equal(bare.decode(codes), model.decode(codes))


class LightningCallback:  # stands for the PL 1.x callback classes real taming checkpoints pickle as dict keys
    pass


class Exploit:
    """Unpickling it copies this file to `target`: a harmless, checkable stand-in for hostile code."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return shutil.copyfile, (__file__, str(self.target))


class OsExploit(Exploit):
    """torch's weights-only unpickler refuses the os module outright, even when allowlisted."""

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


class BoundMethodExploit(Exploit):
    """Same effect through a bound method, i.e. calling the result of getattr: a restricted load can
    substitute the globals but must then refuse the call."""

    def __reduce__(self):
        return self.target.mkdir, ()


def test_checkpoint_with_pickled_objects_loads_without_running_them(tmp_path):
    config, marker = VQGANConfig(**TINY), tmp_path / "code_ran"
    vqmodel = taming_vqmodel(config)
    ckpt = {"state_dict": vqmodel.state_dict(), "callbacks": {LightningCallback: {"best": Exploit(marker)}}}
    torch.save(ckpt, tmp_path / "pl1.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "pl1.ckpt", weights_only=True)

    model = VQGAN.from_pretrained(tmp_path / "pl1.ckpt", default_config=config)
    assert not marker.exists()
    codes = random_codes(model)
    torch.testing.assert_close(model.decode(codes), taming_decode(vqmodel, codes, config), rtol=0, atol=0)
    torch.load(tmp_path / "pl1.ckpt", weights_only=False)  # the exploit is real: an unrestricted load runs it
    assert marker.exists()


def test_unreadable_checkpoint_explains_how_to_convert(tmp_path):
    config, marker = VQGANConfig(**TINY), tmp_path / "code_ran"
    torch.save({"state_dict": {}, "x": BoundMethodExploit(marker)}, tmp_path / "hostile.ckpt")
    torch.save({"state_dict": {}, "x": OsExploit(marker)}, tmp_path / "os.ckpt")
    torch.save({"state_dict": {"encoder.conv_in.weight": LightningCallback()}}, tmp_path / "objects.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="(?s)weights-only.*from_pretrained\\('vqgan.safetensors'"):
        VQGAN.from_pretrained(tmp_path / "garbage.ckpt", default_config=config)
    with pytest.raises(ValueError, match="state dict of tensors"):
        VQGAN.from_pretrained(tmp_path / "objects.ckpt", default_config=config)
    with pytest.raises(ValueError, match=r"(?s)hostile\.ckpt.*call reduce.*weights_only=False"):
        VQGAN.from_pretrained(tmp_path / "hostile.ckpt", default_config=config)
    with pytest.raises(ValueError, match="(?s)posix is blocked.*weights_only=False"):
        VQGAN.from_pretrained(tmp_path / "os.ckpt", default_config=config)
    assert not marker.exists()


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = tiny_model().state_dict()
    del state["decoder.conv_out.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["quantize.embedding.weight"] = torch.zeros(16, 16)
    torch.save({"state_dict": state}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError) as err:
        VQGAN.from_pretrained(tmp_path / "other.ckpt", default_config=VQGANConfig(**TINY))
    message = str(err.value)
    assert "missing: decoder.conv_out.bias" in message
    assert "unexpected: extra.weight" in message
    assert "quantize.embedding.weight: file (16, 16) vs model (32, 16)" in message


def test_bad_images_are_refused_with_a_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"16x16 .* 32x32 .*centre-crop"):
        model.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"batch axis"):
        model.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.rand(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\].*uint8"):
        model.encode(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.zeros(2, 3, 32, 32, dtype=torch.int32))


def test_bad_codes_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(B, 256\).*16x16"):
        model.decode(torch.zeros(2, 255, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 256\)"):
        model.decode(torch.zeros(256, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.31.*32\.\.32"):
        model.decode(torch.full((1, 256), 32))
    with pytest.raises(ValueError, match=r"-1\.\.0"):
        model.decode(torch.cat([torch.full((1, 1), -1), torch.zeros(1, 255, dtype=torch.long)], 1))
    with pytest.raises(TypeError, match="integer"):
        model.decode(torch.zeros(1, 256))
    with pytest.raises(ValueError, match="output"):
        model.decode(torch.zeros(1, 256, dtype=torch.long), output="png")


def test_runs_in_float32_only():
    model = tiny_model()
    codes = random_codes(model)
    expected = model.decode(codes)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast must not lower precision
        assert torch.equal(model.decode(codes), expected)
    assert model.encode(torch.rand(1, 3, 32, 32, dtype=torch.float16)).dtype == torch.long
    model.to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"torch\.bfloat16.*float32.*\.float\(\)"):
        model.decode(codes)
    assert model.float().decode(codes).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_under_fp16_autocast_matches_cpu():
    model = tiny_model()
    codes = random_codes(model)
    expected = model.decode(codes)
    model.to("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        images = model.decode(codes)  # CPU codes are moved to the model's device
    assert images.dtype == torch.float32 and images.device.type == "cuda"
    # cuDNN convolutions may use TF32 (float32 range, shorter mantissa): close, not equal
    torch.testing.assert_close(images.cpu(), expected, atol=1e-2, rtol=0)


def test_config_round_trips_and_reads_taming_yaml_params():
    config = VQGANConfig(**TINY)
    assert VQGANConfig.from_dict(config.to_dict()) == config
    assert VQGANConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    taming_params = {"embed_dim": 16, "n_embed": 32, "monitor": "val/rec_loss", "lossconfig": {"target": "x"},
                     "ddconfig": {**config.ddconfig(), "double_z": False}}
    assert VQGANConfig.from_dict(taming_params) == config
    with pytest.raises(ValueError, match="multiples of 32"):
        VQGANConfig(ch=16, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="double_z"):
        VQGANConfig.from_dict({**taming_params, "ddconfig": {**config.ddconfig(), "double_z": True}})
    with pytest.raises(ValueError, match="unknown"):
        VQGANConfig.from_dict({"n_embeds": 3})


def test_safetensors_round_trip(tmp_path):
    model = tiny_model()
    model.save_safetensors(tmp_path / "vqgan.safetensors")
    loaded = VQGAN.from_pretrained(tmp_path / "vqgan.safetensors")
    assert loaded.config == model.config
    codes = random_codes(model)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_hydra_presets_instantiate():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        tiny = compose(overrides=["+vqgan=tiny"])
        real = compose(overrides=["+vqgan=imagenet_f16_16384"])
    model = instantiate(tiny.vqgan)
    assert isinstance(model, VQGAN) and model.config == VQGANConfig(**TINY)
    config = instantiate(real.vqgan.config)
    assert config == VQGANConfig()  # the dataclass defaults are the real model too
    assert (config.resolution, config.grid_size, config.n_embed) == (256, 16, 16384)
    with torch.device("meta"):  # shapes only: the 76M-parameter model is not worth allocating here
        big = VQGAN(config)
    assert sum(p.numel() for p in big.parameters()) == 76_073_859
    assert big.quantize.embedding.weight.shape == (16384, 256)
