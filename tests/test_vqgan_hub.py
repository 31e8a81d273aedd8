"""VQGAN save/load/push: our layout, vqgan-jax's Flax layout (written here in flax's msgpack format),
taming's model.yaml + last.ckpt, the converted cache, and bad input."""

import dataclasses
import json

import msgpack
import pytest
import torch
import yaml
from huggingface_hub import constants
from local_hub import COMMIT, LocalHub
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from test_vqgan import CONF, random_codes

import dalle_mini_pt  # noqa: F401  (patches torchvision before taming imports it)
from dalle_mini_pt.hub.files import converted_cache_dir
from dalle_mini_pt.pipeline import load_vqgan
from dalle_mini_pt.vqgan import VQGAN, VQGANConfig


def tiny_vqgan(seed=0, **changes) -> VQGAN:
    torch.manual_seed(seed)
    values = {**OmegaConf.to_container(OmegaConf.load(CONF / "vqgan" / "tiny.yaml").config), **changes}
    values.pop("_target_")
    model = VQGAN(VQGANConfig(**values)).eval()
    with torch.no_grad():  # GroupNorms off 1/0 and biases off 0, so that a mix-up between them shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def same_outputs(a: VQGAN, b: VQGAN) -> None:
    codes = random_codes(a, batch=3)
    assert torch.equal(a.decode(codes), b.decode(codes))
    images = torch.rand(2, 3, a.config.resolution, a.config.resolution)
    assert torch.equal(a.encode(images), b.encode(images))


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on localhost
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


# --- our layout ---------------------------------------------------------------------------------------------

def test_native_round_trip_decodes_identically(tmp_path):
    model = tiny_vqgan()
    model.save_pretrained(tmp_path / "v")
    assert {p.name for p in (tmp_path / "v").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = VQGAN.from_pretrained(tmp_path / "v")
    assert loaded.config == model.config and not loaded.training
    same_outputs(model, loaded)
    assert isinstance(load_vqgan(str(tmp_path / "v")), VQGAN)  # the pipeline's --vqgan takes directories too


def test_push_to_hub_then_from_pretrained_through_the_hub_client(local_hub, tmp_path):
    model = tiny_vqgan()
    commit = model.push_to_hub("me/tiny-vqgan", endpoint=local_hub.url, token="hf_test")
    assert COMMIT in str(commit)
    card = (local_hub.root / "me" / "tiny-vqgan" / "README.md").read_text()
    assert 'VQGAN.from_pretrained("me/tiny-vqgan")' in card and "library_name: dalle_mini_pt" in card
    loaded = VQGAN.from_pretrained("me/tiny-vqgan", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    same_outputs(model, loaded)


# --- vqgan-jax's Flax layout, built from the module tree as vqgan-jax names it ------------------------------

def _ndarray(t: torch.Tensor) -> msgpack.ExtType:
    a = t.detach().contiguous().numpy()
    return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True))


def flax_tree(model: VQGAN, norm_shape=(-1,)) -> dict:
    """vqgan-jax's parameter tree: modules named in `setup()` (lists become `down_0`, `block_1`, …), nn.Conv
    kernels HWIO, GroupNorm `scale`/`bias`, the codebook an nn.Embed."""
    def conv(m):
        return {"kernel": _ndarray(m.weight.permute(2, 3, 1, 0)), "bias": _ndarray(m.bias)}

    def norm(m):
        return {"scale": _ndarray(m.weight.reshape(norm_shape)), "bias": _ndarray(m.bias.reshape(norm_shape))}

    def resnet(b):
        tree = {"norm1": norm(b.norm1), "conv1": conv(b.conv1), "norm2": norm(b.norm2),
                "conv2": conv(b.conv2)}
        return {**tree, "nin_shortcut": conv(b.nin_shortcut)} if hasattr(b, "nin_shortcut") else tree

    def attn(a):
        return {"norm": norm(a.norm),
                **{name: conv(getattr(a, name)) for name in ("q", "k", "v", "proj_out")}}

    def level(lvl, resample):
        tree = {**{f"block_{j}": resnet(b) for j, b in enumerate(lvl.block)},
                **{f"attn_{j}": attn(a) for j, a in enumerate(lvl.attn)}}
        return ({**tree, resample: {"conv": conv(getattr(lvl, resample).conv)}} if hasattr(lvl, resample)
                else tree)

    def coder(c, levels, prefix, resample):
        mid = {"block_1": resnet(c.mid.block_1), "attn_1": attn(c.mid.attn_1),
               "block_2": resnet(c.mid.block_2)}
        return {"conv_in": conv(c.conv_in), "mid": mid, "norm_out": norm(c.norm_out),
                "conv_out": conv(c.conv_out),
                **{f"{prefix}_{i}": level(lvl, resample) for i, lvl in enumerate(levels)}}

    return {"encoder": coder(model.encoder, model.encoder.down, "down", "downsample"),
            "decoder": coder(model.decoder, model.decoder.up, "up", "upsample"),
            "quantize": {"embedding": {"embedding": _ndarray(model.quantize.embedding.weight)}},
            "quant_conv": conv(model.quant_conv), "post_quant_conv": conv(model.post_quant_conv)}


def write_flax_checkpoint(model: VQGAN, directory, norm_shape=(-1,), **config_changes):
    """What vqgan-jax's `VQModel.save_pretrained` writes: an HF config.json and flax_model.msgpack."""
    c = model.config
    config = dict(architectures=["VQModel"], transformers_version="4.9.0.dev0", ch=c.ch, out_ch=c.out_ch,
                  in_channels=c.in_channels, num_res_blocks=c.num_res_blocks, resolution=c.resolution,
                  z_channels=c.z_channels, ch_mult=list(c.ch_mult), attn_resolutions=list(c.attn_resolutions),
                  n_embed=c.n_embed, embed_dim=c.embed_dim, dropout=0.0, double_z=False,
                  resamp_with_conv=True, give_pre_end=False, num_resolutions=len(c.ch_mult))
    config.update(config_changes)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "flax_model.msgpack").write_bytes(msgpack.packb(flax_tree(model, norm_shape),
                                                                 use_bin_type=True))
    return directory


def as_zero_to_one(model: VQGAN) -> VQGAN:
    """The same weights read as dalle-mini's port is used: [0, 1] pixels in and out."""
    twin = VQGAN(dataclasses.replace(model.config, pixel_range="zero_to_one")).eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("norm_shape", [(-1,), (1, 1, 1, -1)], ids=["flat", "nhwc"])
def test_flax_layout_converts_and_decodes_identically(norm_shape, tmp_path):
    model = tiny_vqgan()
    write_flax_checkpoint(model, tmp_path / "flax", norm_shape)
    loaded = VQGAN.from_pretrained(tmp_path / "flax")
    assert loaded.config.pixel_range == "zero_to_one"
    same_outputs(as_zero_to_one(model), loaded)
    override = VQGAN.from_pretrained(tmp_path / "flax", pixel_range="minus_one_to_one")
    same_outputs(model, override)


def test_flax_repo_is_converted_once_and_cached_by_commit(local_hub, tmp_path):
    model = tiny_vqgan()
    write_flax_checkpoint(model, local_hub.root / "dalle-mini" / "tiny-vqgan")
    cache = tmp_path / "cache"
    first = VQGAN.from_pretrained("dalle-mini/tiny-vqgan", endpoint=local_hub.url, cache_dir=cache)
    converted = converted_cache_dir("dalle-mini/tiny-vqgan", COMMIT, cache)
    assert (converted / "model.safetensors").exists()
    local_hub.requests.clear()
    second = VQGAN.from_pretrained("dalle-mini/tiny-vqgan", endpoint=local_hub.url, cache_dir=cache)
    assert not [r for r in local_hub.requests if r[1].endswith("flax_model.msgpack")]
    assert second.config == first.config and second.config.pixel_range == "zero_to_one"
    same_outputs(as_zero_to_one(model), second)


# --- taming's model.yaml + last.ckpt ------------------------------------------------------------------------

def write_taming_checkpoint(model: VQGAN, directory, yaml_name="model.yaml", ckpt_name="last.ckpt"):
    c = model.config
    ddconfig = {**c.ddconfig(), "ch_mult": list(c.ch_mult), "attn_resolutions": list(c.attn_resolutions)}
    params = {"embed_dim": c.embed_dim, "n_embed": c.n_embed, "ddconfig": ddconfig,
              "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"}}
    for name in (yaml_name, ckpt_name):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / yaml_name).write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel",
                                                                 "params": params}}))
    state = {**model.state_dict(), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": state, "global_step": 7}, directory / ckpt_name)


def test_taming_layouts_load_from_a_directory_and_a_repo(local_hub, tmp_path):
    model = tiny_vqgan()
    write_taming_checkpoint(model, tmp_path / "heidelberg", "configs/model.yaml", "ckpts/last.ckpt")
    same_outputs(model, VQGAN.from_pretrained(tmp_path / "heidelberg"))
    write_taming_checkpoint(model, local_hub.root / "me" / "taming")
    cache = tmp_path / "cache"
    loaded = VQGAN.from_pretrained("me/taming", endpoint=local_hub.url, cache_dir=cache)
    assert loaded.config.pixel_range == "minus_one_to_one"
    same_outputs(model, loaded)
    assert (converted_cache_dir("me/taming", COMMIT, cache) / "model.safetensors").exists()


# --- bad input ---------------------------------------------------------------------------------------------

def test_missing_paths_repos_and_files_are_named(local_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VQGAN.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="me/missing"):
        VQGAN.from_pretrained("me/missing", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no VQGAN weights"):
        VQGAN.from_pretrained(tmp_path / "empty")
    tiny_vqgan().save_pretrained(tmp_path / "v")
    (tmp_path / "v" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"v/config\.json: missing"):
        VQGAN.from_pretrained(tmp_path / "v")


def test_pickle_only_repo_is_refused(local_hub, tmp_path):
    repo = local_hub.root / "me" / "pickled"
    repo.mkdir(parents=True)
    torch.save({"state_dict": tiny_vqgan().state_dict()}, repo / "last.ckpt")  # no model.yaml beside it
    with pytest.raises(ValueError,
                       match=r"me/pickled: only pickled weights \(\['last\.ckpt'\]\).*never unpickles"):
        VQGAN.from_pretrained("me/pickled", endpoint=local_hub.url, cache_dir=tmp_path / "cache")


def test_wrong_shapes_and_unknown_tensors_are_named_by_key(tmp_path):
    model = tiny_vqgan()
    model.save_pretrained(tmp_path / "v")
    state = load_file(tmp_path / "v" / "model.safetensors")
    state["quantize.embedding.weight"] = torch.zeros(7, model.config.embed_dim)
    state["decoder.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "v" / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected: decoder\.extra\.weight\n.*wrong shape: "
                                         r"quantize\.embedding\.weight: file \(7, 16\) vs model \(32, 16\)"):
        VQGAN.from_pretrained(tmp_path / "v")
    write_flax_checkpoint(model, tmp_path / "flax", n_embed=64)  # the config disagrees with the codebook
    with pytest.raises(ValueError, match=r"flax_model\.msgpack does not match VQGAN:\n.*quantize\.embedding"):
        VQGAN.from_pretrained(tmp_path / "flax")


def test_unsupported_or_foreign_flax_configs_name_the_file(tmp_path):
    write_flax_checkpoint(tiny_vqgan(), tmp_path / "double", double_z=True)
    with pytest.raises(ValueError, match=r"double/config\.json: double_z=True is not supported"):
        VQGAN.from_pretrained(tmp_path / "double")
    directory = write_flax_checkpoint(tiny_vqgan(), tmp_path / "bart")
    (directory / "config.json").write_text(json.dumps({"model_type": "dallebart", "d_model": 32}))
    with pytest.raises(ValueError,
                       match=r"bart/config\.json: not a vqgan-jax VQGAN config; it lacks \['n_embed'"):
        VQGAN.from_pretrained(directory)
