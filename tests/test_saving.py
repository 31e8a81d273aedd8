"""Issue 26, saving: `export` and every `save_pretrained` refuse a folder that already holds files (a new
model would keep the other one's tokenizer) unless asked to overwrite, which replaces the folder whole; a
save that fails part-way leaves the folder as it was and nothing half-written beside it."""

import hashlib
from pathlib import Path

import pytest
import torch
from helpers import compose_train
from hydra.errors import InstantiationException
from test_hub_mixin import component
from test_reliability import command, debug

from dalle_mini_pt.export import main as export_main
from dalle_mini_pt.model import DalleBart
from dalle_mini_pt.pipeline import DalleMiniPipeline
from dalle_mini_pt.tokenizer import TextTokenizer
from dalle_mini_pt.train import build, train


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(debug(data_dir, run, "trainer.max_steps=1", "trainer.val_check_interval=1"))
    return run / "checkpoints" / "last.ckpt"


def test_export_into_a_folder_holding_another_model_is_refused_unless_overwrite(checkpoint, tiny_data,
                                                                                 tmp_path):
    out = tmp_path / "model"
    DalleBart(component("dallebart").config).save_pretrained(out, tokenizer=str(tiny_data / "tokenizer"))
    before = contents(out)
    proc = command("dalle_mini_pt.export", checkpoint, out)
    assert proc.returncode == 2
    assert f"{out} is not empty (it holds README.md, config.json" in proc.stderr
    assert "mix this model with what is there" in proc.stderr and "pass --overwrite" in proc.stderr
    assert contents(out) == before

    # a failed overwrite (the tokenizer cannot be read) leaves the folder as it was, nothing beside it
    with pytest.raises(OSError):
        export_main([str(checkpoint), str(out), "--overwrite", "--tokenizer", str(tmp_path / "absent")])
    assert contents(out) == before and leftovers(out) == []

    export_main([str(checkpoint), str(out), "--overwrite"])
    # the other model's tokenizer went with the rest
    assert sorted(contents(out)) == ["README.md", "config.json", "model.safetensors"]
    exported = DalleBart.from_pretrained(out).state_dict()
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, trained[f"net.{k}"]) for k, v in exported.items()) and leftovers(out) == []


@pytest.mark.parametrize("kind", ["dallebart", "vqgan", "clip", "pipeline"])
def test_save_pretrained_refuses_a_folder_that_holds_files_and_overwrite_replaces_it(kind, tiny_data,
                                                                                     tmp_path):
    if kind == "pipeline":
        tokenizer = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), 16)
        saved = DalleMiniPipeline(component("dallebart"), tokenizer, component("vqgan"), component("clip"))
    else:
        saved = component(kind)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is a fine target (push_to_hub saves into a fresh temporary one)
    saved.save_pretrained(out)
    (out / "notes.txt").write_text("from another model")
    before = contents(out)
    with pytest.raises(FileExistsError, match=rf"{out} is not empty .*notes\.txt.*pass overwrite=True"):
        saved.save_pretrained(out)
    assert contents(out) == before
    saved.save_pretrained(out, overwrite=True)
    assert "notes.txt" not in contents(out) and leftovers(out) == []
    type(saved).from_pretrained(out)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        saved.save_pretrained(tmp_path / "file")


def test_the_vqgan_stage_refuses_a_used_save_dir_before_training(data_dir, tmp_path):
    used = tmp_path / "vqgan"
    component("vqgan").save_pretrained(used)
    overrides = ["+experiment=shapes_vqgan", f"model.save_dir={used}", "trainer.max_steps=1"]
    with pytest.raises(InstantiationException, match=rf"{used} is not empty.*pass model\.overwrite=true"):
        build(compose_train(overrides, output_dir=tmp_path / "run"))
    build(compose_train([*overrides, "model.overwrite=true"], output_dir=tmp_path / "run"))
