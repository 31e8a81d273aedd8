"""The pipeline's image completion (`init_image`, `keep_rows`), its streaming (`stream`) and the PNG text
chunks that record how each image was made, on tiny random components."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import pipe  # noqa: F401  (the module-scoped tiny pipeline fixture)

from dalle_mini_pt.png_metadata import png_bytes, read_png_text


def picture(size=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_kept_rows_are_the_images_codes_and_the_rest_is_sampled(pipe):  # noqa: F811
    image = picture()
    codes = pipe.vqgan.encode(torch.from_numpy(np.array(image))[None])
    out = pipe(["a red square", "a blue circle"], num_images=3, top_k=8, seed=1, init_image=image,
               keep_rows=5)
    for r in out:
        assert (r.codes[:, :80] == codes[:, :80]).all() and r.keep_rows == 5
        assert not (r.codes[:, 80:] == codes[:, 80:]).all()
    again = pipe(["a red square", "a blue circle"], num_images=3, top_k=8, seed=1, init_image=image,
                 keep_rows=5)
    other = pipe(["a red square", "a blue circle"], num_images=3, top_k=8, seed=2, init_image=image,
                 keep_rows=5)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(out, again))
    assert not torch.equal(out[0].codes, other[0].codes)
    # keep_rows=0 is plain generation; one image per prompt works too
    plain = pipe("a red square", num_images=2, top_k=8, seed=4)
    assert torch.equal(pipe("a red square", num_images=2, top_k=8, seed=4, init_image=image,
                            keep_rows=0)[0].codes, plain[0].codes)
    two = pipe(["a", "b"], num_images=1, seed=0, init_image=[image, picture(seed=1)], keep_rows=2)
    second = pipe.vqgan.encode(torch.from_numpy(np.array(picture(seed=1)))[None])
    assert (two[1].codes[:, :32] == second[:, :32]).all()


def test_bad_images_get_the_encoders_errors(pipe):  # noqa: F811
    with pytest.raises(ValueError, match="images are 40x40 but this VQGAN encodes 32x32"):
        pipe("x", init_image=picture(40), keep_rows=2)
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        pipe("x", init_image=torch.full((3, 32, 32), 2.0), keep_rows=2)
    with pytest.raises(TypeError, match="init_image must be a PIL image"):
        pipe("x", init_image="cat.png", keep_rows=2)
    with pytest.raises(ValueError, match="keep_rows=17 must be a whole number in 0..16"):
        pipe("x", init_image=picture(), keep_rows=17)
    with pytest.raises(ValueError, match="needs init_image"):
        pipe("x", keep_rows=3)
    with pytest.raises(ValueError, match="one per prompt"):
        pipe(["a", "b", "c"], init_image=[picture(), picture()], keep_rows=3)


def test_stream_fills_in_row_by_row_and_ends_with_the_ranked_result(pipe):  # noqa: F811
    steps = list(pipe.stream(["a red square"], num_images=2, top_k=8, seed=3))
    assert [n for n, _ in steps] == list(range(16, 257, 16))  # one row of the 16x16 code grid at a time
    final = pipe(["a red square"], num_images=2, top_k=8, seed=3)[0]
    assert torch.equal(steps[-1][1][0].codes, final.codes) and steps[-1][1][0].scores == final.scores
    partial = steps[3][1][0]  # 4 of 16 code rows written: the top quarter drawn, the rest grey
    assert partial.scores is None and (partial.codes[:, 64:] == -1).all()
    pixels = np.asarray(partial.images[0]).astype(int)
    assert (np.abs(pixels[8:] - 128) <= 1).all() and np.abs(pixels[:8] - 128).max() > 2


def test_each_image_says_how_it_was_made(pipe):  # noqa: F811
    out = pipe("a blue stripe ✓", num_images=3, top_k=8, temperature=0.9)[0]
    assert out.seed is not None and sorted(out.order) == [0, 1, 2]  # a seed was drawn and is named
    text = read_png_text(png_bytes(out.images[1], out.metadata(1)))
    assert text["prompt"] == "a blue stripe ✓" and int(text["seed"]) == out.seed
    assert float(text["clip_score"]) == pytest.approx(out.scores[1], abs=1e-4)
    settings = __import__("json").loads(text["settings"])
    assert settings["temperature"] == 0.9 and settings["keep_rows"] == 0
    # the recorded seed and sample index give the same image back
    again = pipe(text["prompt"], num_images=3, top_k=8, temperature=0.9, seed=int(text["seed"]))[0]
    sample = int(text["sample"])
    assert torch.equal(again.codes[again.order.index(sample)], out.codes[1])
