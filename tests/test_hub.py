"""Native save/load, the hub (through a local stand-in of its HTTP API), bad input, the 2021 Flax layout,
and exporting a Lightning checkpoint."""

import json
import re

import msgpack
import pytest
import torch
from helpers import VARIANTS, compose_train, tiny_config
from huggingface_hub import constants
from local_hub import COMMIT, LocalHub
from safetensors.torch import load_file, save_file

from dalle_mini_pt import DalleBart
from dalle_mini_pt.export import main as export_main
from dalle_mini_pt.hub.files import converted_cache_dir
from dalle_mini_pt.tokenizer import load_tokenizer
from dalle_mini_pt.train import train


def tiny_inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.encoder_vocab_size, (2, config.max_text_length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    codes = torch.randint(0, config.codebook_size, (2, config.image_length), generator=g)
    return ids, mask, codes


def outputs(model, seed=0):
    ids, mask, codes = tiny_inputs(model.config, seed)
    with torch.no_grad():
        logits = model(ids, mask, model.shift_right(codes))
    sampled = model.generate(ids, mask, top_k=8, seed=seed)
    return logits, sampled


def random_model(variant="normformer", **overrides):
    torch.manual_seed(0)
    model = DalleBart(tiny_config(variant, **overrides)).eval()
    with torch.no_grad():  # LayerNorms off 1/0 so that a mix-up between them shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or "head_scale" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_float32_is_exact(variant, tmp_path):
    model = random_model(variant)
    model.save_pretrained(tmp_path / "m")
    loaded = DalleBart.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config and not loaded.training
    for ours, theirs in zip(outputs(model), outputs(loaded)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("saved", ["float16", "bfloat16"])
@pytest.mark.parametrize("loaded", ["float32", "float16", "bfloat16"])
def test_half_precision_copies_load_into_any_dtype(saved, loaded, tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path / "m", dtype=saved)
    assert ({t.dtype for t in load_file(tmp_path / "m" / "model.safetensors").values()}
            == {getattr(torch, saved)})
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == saved
    back = DalleBart.from_pretrained(tmp_path / "m", dtype=loaded)
    # the same model, rounded to the saved precision and cast to the loaded one, computes the same outputs
    expected = random_model().to(getattr(torch, saved)).to(getattr(torch, loaded))
    assert {p.dtype for p in back.parameters()} == {getattr(torch, loaded)}
    ids, mask, codes = tiny_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(back(ids, mask, back.shift_right(codes)),
                           expected(ids, mask, expected.shift_right(codes)))


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the stand-in is on localhost
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def test_push_to_hub_then_from_pretrained_through_the_hub_client(local_hub, tiny_data, tmp_path):
    model = random_model()
    commit = model.push_to_hub("me/tiny-dallebart", tokenizer=str(tiny_data / "tokenizer"), dtype="bfloat16",
                               endpoint=local_hub.url, token="hf_test")
    assert COMMIT in str(commit)
    repo = local_hub.root / "me" / "tiny-dallebart"
    uploaded = {p.name for p in repo.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= uploaded
    card = (repo / "README.md").read_text()
    assert 'DalleBart.from_pretrained("me/tiny-dallebart")' in card and "library_name: dalle_mini_pt" in card

    loaded = DalleBart.from_pretrained("me/tiny-dallebart", endpoint=local_hub.url,
                                       cache_dir=tmp_path / "cache")
    expected = random_model().to(torch.bfloat16).float()
    for ours, theirs in zip(outputs(expected), outputs(loaded)):
        assert torch.equal(ours, theirs)
    tok = load_tokenizer(repo)  # the tokenizer travels with the model and pads to its text length
    assert tok(["a cat"])["input_ids"].shape == (1, model.config.max_text_length)


def test_bad_paths_and_repos_are_named(local_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DalleBart.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="me/missing"):
        DalleBart.from_pretrained("me/missing", endpoint=local_hub.url, cache_dir=tmp_path / "cache")
    (local_hub.root / "me" / "pickled").mkdir(parents=True)
    (local_hub.root / "me" / "pickled" / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, local_hub.root / "me" / "pickled" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        DalleBart.from_pretrained("me/pickled", endpoint=local_hub.url, cache_dir=tmp_path / "cache")


def saved(tmp_path, name="m", **overrides):
    directory = tmp_path / name
    random_model(**overrides).save_pretrained(directory)
    return directory, directory / "model.safetensors"


def test_missing_unexpected_and_misshapen_tensors_are_listed(tmp_path):
    directory, weights = saved(tmp_path)
    state = load_file(weights)
    state.pop("decoder.lm_head.weight")
    state["decoder.extra.weight"] = torch.zeros(2)
    state["encoder.final_ln.bias"] = torch.zeros(7)
    save_file(state, weights)
    with pytest.raises(ValueError) as err:
        DalleBart.from_pretrained(directory)
    message = str(err.value)
    assert str(weights) in message
    assert re.search(r"missing: .*decoder\.lm_head\.weight", message)
    assert re.search(r"unexpected: .*decoder\.extra\.weight", message)
    assert re.search(r"wrong shape: .*encoder\.final_ln\.bias: file \(7,\) vs model \(32,\)", message)


def test_config_that_disagrees_with_the_tensors(tmp_path):
    directory, weights = saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["encoder_ffn_dim"] = 64
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors.*\n.*encoder\.layers\.0\.ffn\.fc0\.weight"):
        DalleBart.from_pretrained(directory)


def test_checkpoint_of_another_architecture(tmp_path):
    directory, weights = saved(tmp_path)
    save_file({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 4)}, weights)
    with pytest.raises(ValueError, match=r"unexpected: bert\.embeddings\.word_embeddings\.weight"):
        DalleBart.from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"ln_type": "rmsnorm"}))
    with pytest.raises(ValueError, match=r"config\.json.*ln_type"):
        DalleBart.from_pretrained(directory)


def test_truncated_files_name_the_file_and_tensors(tmp_path):
    directory, weights = saved(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(ValueError,
                       match=r"model\.safetensors: truncated .*tensors \['[\w.]+'\] lie past its end"):
        DalleBart.from_pretrained(directory)
    weights.write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a safetensors file"):
        DalleBart.from_pretrained(directory)


# --- the 2021 Flax layout (flax-community/dalle-mini), written here in flax's msgpack format ------------

_TO_2021 = [(r"^encoder\.embed\.embed_tokens\.weight$", "model/shared/embedding"),
            (r"^decoder\.embed\.embed_tokens\.weight$", "model/decoder_embed/embedding"),
            (r"^(\w+)\.embed\.embed_positions\.weight$", r"model/\1/embed_positions/embedding"),
            (r"^(\w+)\.embed\.layernorm_embedding\.", r"model/\1/layernorm_embedding."),
            (r"^(\w+)\.layers\.(\d+)\.", r"model/\1/layers/\2/"),
            (r"self_attn_norms\.post", "self_attn_layer_norm"),
            (r"cross_attn_norms\.post", "encoder_attn_layer_norm"), (r"cross_attn", "encoder_attn"),
            (r"ffn_norms\.post", "final_layer_norm"), (r"ffn\.(fc\d)", r"\1"),
            (r"decoder\.lm_head", "lm_head"),
            (r"\.", "/")]


def _ndarray(t: torch.Tensor) -> msgpack.ExtType:
    a = t.numpy()
    return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True))


def write_2021_checkpoint(model, directory, logits_bias=0.0):
    tree: dict = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _TO_2021:
            key = re.sub(pattern, repl, key)
        is_dense = value.ndim == 2 and "embedding" not in key
        key = re.sub(r"/weight$", "/kernel" if is_dense else "/scale", key)
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _ndarray(value.T.contiguous() if is_dense else value)
    tree["final_logits_bias"] = _ndarray(torch.full((1, model.config.image_rows), logits_bias))
    directory.mkdir(parents=True)
    (directory / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    c = model.config
    bart = dict(model_type="bart", vocab_size=c.encoder_vocab_size, d_model=c.d_model,
                max_position_embeddings=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, activation_function="gelu",
                scale_embedding=False)
    (directory / "config.json").write_text(json.dumps(bart))


def model_2021():
    # the tiny 2021 variant, sized as a BART config + separate decoder tables describe it
    return random_model("postln_2021", max_text_length=16, image_positions=17, image_length=16,
                        codebook_size=40)


def test_2021_flax_layout_loads_and_computes_the_same(tmp_path):
    model = model_2021()
    write_2021_checkpoint(model, tmp_path / "ckpt")
    loaded = DalleBart.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.position_offset == 2 and loaded.config.image_rows == model.config.image_rows
    ids, mask, codes = tiny_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask, loaded.shift_right(codes)),
                           model(ids, mask, model.shift_right(codes)))


def test_2021_nonzero_logits_bias_and_truncated_msgpack_are_refused(tmp_path):
    write_2021_checkpoint(model_2021(), tmp_path / "bias", logits_bias=0.5)
    with pytest.raises(ValueError, match=r"flax_model\.msgpack: final_logits_bias is not all zeros"):
        DalleBart.from_pretrained(tmp_path / "bias")
    write_2021_checkpoint(model_2021(), tmp_path / "cut")
    path = tmp_path / "cut" / "flax_model.msgpack"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"flax_model\.msgpack: not a complete flax msgpack file"):
        DalleBart.from_pretrained(tmp_path / "cut")


def test_flax_repo_is_converted_once_and_cached_by_commit(local_hub, tmp_path):
    model = model_2021()
    write_2021_checkpoint(model, local_hub.root / "flax-community" / "tiny")
    cache = tmp_path / "cache"
    first = DalleBart.from_pretrained("flax-community/tiny", endpoint=local_hub.url, cache_dir=cache)
    converted = converted_cache_dir("flax-community/tiny", COMMIT, cache) / "model.safetensors"
    assert converted.exists()
    local_hub.requests.clear()
    second = DalleBart.from_pretrained("flax-community/tiny", endpoint=local_hub.url, cache_dir=cache)
    assert not [r for r in local_hub.requests if r[1].endswith("flax_model.msgpack")]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


# --- Lightning checkpoints --------------------------------------------------------------------------------

def test_export_lightning_checkpoint_and_load_it_back(data_dir, tiny_data, tmp_path):
    cfg = compose_train(["+experiment=debug", f"paths.data_dir={data_dir}", "trainer.max_steps=2",
                         "callbacks.model_checkpoint.every_n_train_steps=2", "logger=csv",
                         "trainer.val_check_interval=2"], output_dir=tmp_path / "run")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain data only
    export_main([str(ckpt), str(tmp_path / "export"), "--tokenizer", str(tiny_data / "tokenizer")])
    loaded = DalleBart.from_pretrained(tmp_path / "export")
    assert (tmp_path / "export" / "tokenizer.json").exists()
    trained = DalleBart(loaded.config).eval()
    trained.load_state_dict({k[4:]: v for k, v in raw["state_dict"].items()})
    for ours, theirs in zip(outputs(trained), outputs(loaded)):
        assert torch.equal(ours, theirs)
