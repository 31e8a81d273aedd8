import pytest

from dalle_mini_pt.tokenizer import TextTokenizer


def test_pads_truncates_and_makes_the_unconditional_prompt(tiny_data):
    tok = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), max_length=8)
    enc = tok(["a red square on the left", "blue"])
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (2, 8)
    assert enc["input_ids"][1, 0] == 0 and 2 in enc["input_ids"][1].tolist()  # <s> ... </s>
    assert enc["attention_mask"][1].sum() < 8
    with pytest.warns(UserWarning, match="truncated"):
        long = tok(["a yellow circle on the right side of a very long caption indeed"])
    assert long["input_ids"][0, -1] == 2  # still ends with </s>
    blank = tok.unconditional()
    assert (blank["uncond_input_ids"][0, :3].tolist() == [0, 2, 1]
            and blank["uncond_attention_mask"].sum() == 2)


def test_bad_input(tiny_data, tmp_path):
    tok = TextTokenizer.from_pretrained(str(tiny_data / "tokenizer"), max_length=8)
    with pytest.raises(TypeError, match="list of prompts"):
        tok("a single string")
    with pytest.raises(ValueError, match="no prompts"):
        tok([])
    with pytest.raises(OSError, match="could not load a tokenizer"):
        TextTokenizer.from_pretrained(str(tmp_path / "missing"), max_length=8)
