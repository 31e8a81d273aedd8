"""One loader per component: every VQGAN format reaches the pipeline (`load_vqgan`, `--vqgan`) and the
encoder (`build_vqgan`, `vqgan_weights=`) through `VQGAN.from_pretrained`, and `DalleMiniPipeline` loads a
saved pipeline (its model_index.json, of this version or an earlier one, and generation_config.json) with
`from_pretrained`, and builds one from parts with `from_components` only."""

import json
import shutil

import pytest
import torch
from demo_server import save_tiny_pipeline
from huggingface_hub import constants
from hydra import compose, initialize_config_dir
from local_hub import LocalHub
from safetensors.torch import save_file
from test_hub_mixin import component
from test_vqgan_hub import same_outputs, tiny_vqgan, write_flax_checkpoint, write_taming_checkpoint

from dalle_mini_pt.config_dir import CONFIG_DIR
from dalle_mini_pt.data.encode import build_vqgan
from dalle_mini_pt.generation_config import GenerationConfig
from dalle_mini_pt.pipeline import DalleMiniPipeline, load_vqgan
from dalle_mini_pt.vqgan import VQGAN, VQGANConfig


def vqgan_group(name: str):
    """The encoder's `vqgan=` group as Hydra composes it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="encode", overrides=[f"vqgan={name}", "input.path=x",
                                                        "vqgan_weights=null"]).vqgan


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on localhost
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


# --- every VQGAN format, through the one dispatch, from the pipeline and the encoder ------------------------

def write_format(fmt: str, model: VQGAN, tmp_path) -> str:
    """`model` written in format `fmt`; returns what a user passes to --vqgan / vqgan_weights=."""
    if fmt == "native":
        return str(model.save_pretrained(tmp_path / "native"))
    if fmt == "safetensors":
        model.save_safetensors(tmp_path / "vqgan.safetensors")
        return str(tmp_path / "vqgan.safetensors")
    if fmt == "vqgan-jax":
        return str(write_flax_checkpoint(model, tmp_path / "flax"))
    if fmt == "taming-dir":
        write_taming_checkpoint(model, tmp_path / "taming")
        return str(tmp_path / "taming")
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", ["native", "safetensors", "vqgan-jax", "taming-dir"])
def test_a_vqgan_that_records_its_config_loads_alike_in_the_pipeline_and_the_encoder(fmt, tmp_path):
    model = tiny_vqgan()
    spec = write_format(fmt, model, tmp_path)
    for loaded in (load_vqgan(spec), build_vqgan(vqgan_group("imagenet_f16_16384"), spec)):
        # the encoder's vqgan= (here the f16/16384 network) is not consulted: the weights carry their own
        assert loaded.config.n_embed == model.config.n_embed and not loaded.training
        expected = model
        if fmt == "vqgan-jax":  # dalle-mini's port is read in [0, 1] (hub/vqgan_flax.py)
            expected = VQGAN(VQGANConfig(**{**model.config.to_dict(), "pixel_range": "zero_to_one"})).eval()
            expected.load_state_dict(model.state_dict())
        same_outputs(expected, loaded)


def test_a_hub_repo_loads_alike_in_the_pipeline_and_the_encoder(local_hub, tmp_path, monkeypatch):
    model = tiny_vqgan()
    model.push_to_hub("me/tiny-vqgan", endpoint=local_hub.url, token="hf_test")
    cache = tmp_path / "cache"
    same_outputs(model, load_vqgan("me/tiny-vqgan", endpoint=local_hub.url, cache_dir=cache))
    # the encoder's command line names no endpoint or cache: it reads the hub cache, here offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    same_outputs(model, build_vqgan(vqgan_group("tiny"), "me/tiny-vqgan"))


@pytest.mark.parametrize("fmt", ["taming-ckpt", "bare-safetensors"])
def test_a_file_that_records_no_config_takes_the_callers_architecture(fmt, tmp_path):
    """A taming .ckpt alone and a .safetensors converted by hand (taming.py's command) hold tensors only:
    the encoder reads them with its vqgan= group; the pipeline, which has none, with VQGANConfig() (the
    f16/16384 network), and strict loading says so when the tensors disagree."""
    model = tiny_vqgan()
    path = tmp_path / ("last.ckpt" if fmt == "taming-ckpt" else "vqgan.safetensors")
    if fmt == "taming-ckpt":
        torch.save({"state_dict": {**model.state_dict(), "loss.logvar": torch.zeros(())}}, path)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    same_outputs(model, build_vqgan(vqgan_group("tiny"), str(path)))
    same_outputs(model, VQGAN.from_pretrained(path, default_config=model.config))
    with pytest.raises(ValueError, match=r"(?s)records no config, so read as VQGANConfig\(\); pass "
                                         r"default_config=.*does not match VQGAN.*wrong shape"):
        load_vqgan(str(path))
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such VQGAN weights file"):
        load_vqgan(str(tmp_path / "missing.ckpt"))


# --- from_pretrained loads pipelines only ------------------------------------------------------------------

def test_from_pretrained_refuses_a_model_and_names_from_components(tiny_data, tmp_path, local_hub):
    model = component("dallebart")
    model.save_pretrained(tmp_path / "model", tokenizer=str(tiny_data / "tokenizer"))
    with pytest.raises(FileNotFoundError, match=r"model is a DalleBart model, not a pipeline \(it has no "
                                                r"model_index.json\): build one from it with "
                                                r"DalleMiniPipeline\.from_components\(model='.*model', "
                                                r"vqgan=\.\.\.\)"):
        DalleMiniPipeline.from_pretrained(tmp_path / "model")
    model.push_to_hub("me/dalle", endpoint=local_hub.url, token="hf_test")
    with pytest.raises(FileNotFoundError, match=r"me/dalle is a DalleBart model, not a pipeline.*"
                                                r"from_components\(model='me/dalle'"):
        DalleMiniPipeline.from_pretrained("me/dalle", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    # the reference's config.json names no class of ours, but its fields say what it is
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "config.json").write_text(json.dumps({"model_type": "dallebart",
                                                                     "image_vocab_size": 16384}))
    with pytest.raises(FileNotFoundError, match="is a DalleBart model, not a pipeline"):
        DalleMiniPipeline.from_pretrained(tmp_path / "reference")
    with pytest.raises(TypeError, match=r"takes no clip, vqgan: build one from parts with "
                                        r"DalleMiniPipeline\.from_components"):
        DalleMiniPipeline.from_pretrained(tmp_path / "model", vqgan="v", clip="none")
    component("vqgan").save_safetensors(tmp_path / "vqgan.safetensors")
    with pytest.raises(FileNotFoundError, match="is a file, not a pipeline directory.*from_components"):
        DalleMiniPipeline.from_pretrained(tmp_path / "vqgan.safetensors")
    built = DalleMiniPipeline.from_components(model=tmp_path / "model", vqgan=tmp_path / "vqgan.safetensors")
    assert isinstance(built.vqgan, VQGAN) and built.generation_config.condition_scale == 10.0


# --- model_index.json, of this version and of earlier ones, and generation_config.json ---------------------

@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory):
    return save_tiny_pipeline(tiny_data / "tokenizer", tmp_path_factory.mktemp("loading") / "pipeline")


def codes(pipe: DalleMiniPipeline) -> torch.Tensor:
    return pipe(["a red square"], num_images=1, seed=4)[0].codes


def test_the_index_names_each_components_class_and_the_sampling_defaults_round_trip(saved, tmp_path):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "DalleMiniPipeline" and "generation_config" not in index
    assert [index[k] for k in ("model", "tokenizer", "vqgan", "clip")] == [
        ["dalle_mini_pt", "DalleBart"], ["dalle_mini_pt", "TextTokenizer"], ["dalle_mini_pt", "VQGAN"],
        ["dalle_mini_pt", "ClipScorer"]]
    written = json.loads((saved / "generation_config.json").read_text())
    assert written == GenerationConfig(num_images=2, top_k=8, condition_scale=3.0).to_dict()
    pipe = DalleMiniPipeline.from_pretrained(saved)
    assert pipe.generation_config == GenerationConfig(num_images=2, top_k=8, condition_scale=3.0)

    pipe.generation_config = GenerationConfig(num_images=3, top_p=0.9, temperature=0.7, seed=11)
    pipe.clip = None
    pipe.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["clip"] == [None, None]
    back = DalleMiniPipeline.from_pretrained(tmp_path / "again")
    assert back.generation_config == pipe.generation_config and back.clip is None
    assert torch.equal(codes(back), codes(pipe))


def test_a_pipeline_saved_by_an_earlier_version_loads_the_same(saved, tmp_path):
    """The index 0.1.0 wrote: each component's folder name, the sampling defaults inline."""
    old = shutil.copytree(saved, tmp_path / "old")
    generation = json.loads((old / "generation_config.json").read_text())
    (old / "generation_config.json").unlink()
    index = json.loads((old / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({
        "_class_name": "DalleMiniPipeline", "library_name": "dalle_mini_pt", "model": "model",
        "tokenizer": "tokenizer", "text_length": index["text_length"], "vqgan": "vqgan", "clip": "clip",
        "text_normalizer": index["text_normalizer"], "decode_batch_size": index["decode_batch_size"],
        "generation_config": generation}))
    pipe, ours = DalleMiniPipeline.from_pretrained(old), DalleMiniPipeline.from_pretrained(saved)
    assert pipe.generation_config == ours.generation_config and pipe.clip is not None
    assert torch.equal(codes(pipe), codes(ours))
    # its folders are whatever it named, and a null clip is no clip
    (old / "model").rename(old / "dallebart")
    (old / "model_index.json").write_text(json.dumps({
        **json.loads((old / "model_index.json").read_text()), "model": "dallebart", "clip": None}))
    renamed = DalleMiniPipeline.from_pretrained(old)
    assert renamed.clip is None
    theirs = renamed.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.model.state_dict().items())


def test_a_bad_or_missing_generation_config_json_is_named(saved, tmp_path):
    copy = shutil.copytree(saved, tmp_path / "p")
    (copy / "generation_config.json").write_text(json.dumps({"top_k": -1}))
    with pytest.raises(ValueError, match=r"p/generation_config.json: .*top_k=-1 must be a whole number >= 1"):
        DalleMiniPipeline.from_pretrained(copy)
    (copy / "generation_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no generation_config.json beside its model_index.json.*"
                                                "save the pipeline again"):
        DalleMiniPipeline.from_pretrained(copy)
