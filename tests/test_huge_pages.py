"""Weights moved onto huge pages keep their values, stay in place after the first move, save at their own
size, leave views into flat buffers alone, and give `generate` the logits the unmoved model gives; loading
a pipeline moves them, `generate` and building a pipeline from parts never do."""

import copy
import io

import pytest
import torch
from helpers import tiny_config

from dalle_mini_pt.huge_pages import HUGE_PAGE, huge_pages_available, move_to_huge_pages
from dalle_mini_pt.model import DalleBart

pytestmark = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages here")


def _mapping_flags(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping holding `address`."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside:
                fields[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


def _saved_bytes(module: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def test_big_parameters_move_once_and_keep_values_and_saved_size():
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = _saved_bytes(model)

    assert move_to_huge_pages(model) == 1024 * 1024 * 4  # the 4 MiB weight; the rest is under a huge page
    weight = model[0].weight
    assert weight.data_ptr() % HUGE_PAGE == 0 and isinstance(weight, torch.nn.Parameter)
    assert _mapping_flags(weight.data_ptr()).get("THPeligible") == "1"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _saved_bytes(model) == size
    assert move_to_huge_pages(model) == 0


def test_views_into_a_flat_buffer_stay():
    flat = torch.zeros(2 * 1024 * 1024)
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(flat[: 1024 * 1024])
    assert move_to_huge_pages(module) == 0
    assert module.weight.data_ptr() == flat.data_ptr()


def big_head_model(**overrides) -> DalleBart:
    torch.manual_seed(0)
    # a codebook of 2**14 makes the lm_head (32 x 16400 floats) one huge page
    return DalleBart(tiny_config(image_vocab_size=16400, codebook_size=16384, **overrides)).eval()


def test_placed_weights_give_the_unmoved_logits():
    model = big_head_model()
    unmoved = copy.deepcopy(model)
    move_to_huge_pages(model)  # a step of loading, not of sampling
    ids, mask = torch.randint(3, 512, (1, 16)), torch.ones(1, 16, dtype=torch.long)
    codes, logits = model.generate(ids, mask, num_images=2, top_k=64, seed=0, return_logits=True)

    assert model.decoder.lm_head.weight.data_ptr() % HUGE_PAGE == 0
    assert unmoved.decoder.lm_head.weight.data_ptr() % HUGE_PAGE != 0
    with torch.no_grad():
        full = unmoved(ids.expand(2, -1), mask.expand(2, -1), unmoved.shift_right(codes))
    assert (full - logits).abs().max().item() < 1e-5


def test_generate_changes_nothing_of_the_model_it_is_given():
    model = big_head_model()
    where = [p.data_ptr() for p in model.parameters()]
    attributes = dict(vars(model))
    ids, mask = torch.randint(3, 512, (1, 16)), torch.ones(1, 16, dtype=torch.long)
    model.generate(ids, mask, num_images=2, top_k=64, seed=0)
    assert [p.data_ptr() for p in model.parameters()] == where
    assert vars(model) == attributes


def test_loading_a_pipeline_places_its_model_and_building_one_from_parts_does_not(tiny_data, tmp_path):
    """Loading is where weights move (both ways of loading); a pipeline built around a caller's model (the
    training callback's) leaves that model's weights where they are."""
    from omegaconf import OmegaConf

    from dalle_mini_pt.pipeline import DalleMiniPipeline
    from dalle_mini_pt.tokenizer import TextTokenizer
    from dalle_mini_pt.train import CONFIG_DIR
    from dalle_mini_pt.vqgan import VQGAN, VQGANConfig

    settings = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/vqgan/tiny.yaml").config)
    settings.pop("_target_")
    vqgan = VQGAN(VQGANConfig(**{**settings, "n_embed": 16384}))
    vqgan.save_safetensors(tmp_path / "vqgan.safetensors")
    tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
    model = big_head_model(image_length=256)
    model.save_pretrained(tmp_path / "model", tokenizer=tokenizer)

    built = DalleMiniPipeline(model, tokenizer, vqgan)
    assert built.model.decoder.lm_head.weight.data_ptr() % HUGE_PAGE != 0
    loaded = DalleMiniPipeline.from_components(str(tmp_path / "model"), str(tmp_path / "vqgan.safetensors"))
    assert loaded.model.decoder.lm_head.weight.data_ptr() % HUGE_PAGE == 0
    loaded.save_pretrained(tmp_path / "pipeline")
    again = DalleMiniPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert again.model.decoder.lm_head.weight.data_ptr() % HUGE_PAGE == 0
