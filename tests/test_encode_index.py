"""The folder source's item index: listed one directory at a time in exactly sorted order, held as Arrow
strings (a few bytes an item beyond the path), and not copied by forked DataLoader workers reading it."""

import importlib.util

import pytest
from test_encode import ROOT

from dalle_mini_pt.data.image_sources import IMAGE_EXTENSIONS, FolderSource
from dalle_mini_pt.data.item_index import PathIndex, sorted_walk

NAMES = ["a.jpg", "a/b.jpg", "a-b/c.PNG", "ab.jpg", "a/b/c.webp", "a0/x.jpeg", "z.txt", "é/ü.jpg",
         "a/b.json", "b/.hidden/x.jpg", "00000/000000001.jpg", "00000.parquet", "00000_stats.json"]


def test_the_walk_lists_images_in_the_order_sorted_puts_their_paths(tmp_path):
    for name in NAMES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    images = [n for n in NAMES if n.lower().endswith(IMAGE_EXTENSIONS)]
    assert list(sorted_walk(str(tmp_path), IMAGE_EXTENSIONS)) == sorted(images)
    source = FolderSource(tmp_path)
    assert [source.name(i) for i in range(len(source))] == sorted(images)


def test_the_index_holds_the_paths_and_their_offsets_only():
    paths = [f"{i // 10000:05d}/{i:09d}.jpg" for i in range(200_000)] + ["é/ü.jpg", ""]
    index = PathIndex(iter(paths))
    assert len(index) == len(paths) and index[0] == paths[0] and index[len(paths) - 2] == "é/ü.jpg"
    assert [index[i] for i in range(0, len(paths), 9973)] == paths[::9973]
    assert index.nbytes == sum(len(p.encode()) for p in paths) + 4 * (len(paths) + len(index.paths.chunks))
    assert len(PathIndex(iter([]))) == 0


def test_the_memory_benchmark_shows_workers_copy_the_list_but_not_the_index(capsys):
    spec = importlib.util.spec_from_file_location("index_memory", ROOT / "benchmarks" / "index_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--items", "400000", "--compare-items", "400000"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()
            if line.startswith("| P")}
    arrow, listed = rows["PathIndex (Arrow strings)"], rows["Python list of str"]
    assert float(arrow[2]) == pytest.approx(23.0) and float(listed[2]) > 60
    copied_arrow = [float(x) for x in arrow[5].strip(" |").split(", ")]
    copied_list = [float(x) for x in listed[5].strip(" |").split(", ")]
    # each worker reads its half: the list's pages are copied (reference counts), the index's are not
    assert min(copied_list) > 10 and max(copied_arrow) < min(copied_list) / 2
