"""What an encoding run writes: its pieces (one output shard each), which are still to do, and who does them.

A piece is either a range of `shard_size` items of an indexed source (folder, table, map-style hf; shard
`NNNNN` holds items NNNNN*shard_size ...) or one input file of a streamed source (a tar; a streamed hf data
file), read whole. The plan depends on the source and the settings only, never on how many processes run
it, so the shards of an N-process run are those of a 1-process run; a shard in output_dir whose recorded run
or piece differ from this plan's is refused rather than mixed in.

Work is handed out as tasks: a batch-sized item range of an indexed piece (DataLoader workers share a piece
batch by batch), or a whole streamed piece. Pending pieces go to the ranks in turn (rank r takes pending
pieces r, r + world_size, ...), and each rank's tasks to its DataLoader workers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .shard_files import OutputDir


@dataclass(frozen=True)
class Piece:
    shard: str  # output file stem
    source: str  # what it holds, recorded in the shard: "items 0..9999" or an input file
    start: int = 0
    stop: int = -1  # -1: a streamed piece, whose length is known once it is read

    @property
    def streamed(self) -> bool:
        return self.stop < 0

    @property
    def file(self) -> str:
        return f"{self.shard}.parquet"


def is_streamed(source) -> bool:
    return getattr(source, "streamed", False)


def plan_pieces(source, shard_size: int) -> list[Piece]:
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: a shard holds at least one item")
    if is_streamed(source):
        return [Piece(name, label) for name, label in source.pieces()]
    n = len(source)
    return [Piece(f"{s // shard_size:05d}", f"items {s}..{min(s + shard_size, n) - 1}", s,
                  min(s + shard_size, n)) for s in range(0, n, shard_size)]


def run_identity(source, shard_size: int, vqgan_config) -> dict:
    """Settings every shard of one run shares (the item count and shard size fix an indexed source's
    pieces; a streamed source's pieces are its files, checked one by one)."""
    streamed = is_streamed(source)
    return {"num_items": None if streamed else len(source), "shard_size": None if streamed else shard_size,
            "resolution": vqgan_config.resolution, "codebook_size": vqgan_config.n_embed,
            "codes_per_image": vqgan_config.codes_per_image, "pixel_range": vqgan_config.pixel_range}


def recorded_source(meta: dict) -> str:
    if "source" in meta:
        return meta["source"]
    start, stop = meta["items"]  # shards of the encoder before pieces had names
    return f"items {start}..{stop - 1}"


def pending_pieces(out: OutputDir, pieces: list[Piece], run: dict) -> list[int]:
    """Indices of the pieces whose shard is not in output_dir; refuses shards of another run or piece."""
    present = out.listing()
    done = [i for i, p in enumerate(pieces) if p.file in present]
    for i, meta in zip(done, out.read_metas([pieces[i].file for i in done])):
        path = out.display(pieces[i].file)
        saved = meta["run"]
        if saved != run:
            diff = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
            raise ValueError(f"{path} was written by another run ({diff}, shard's vs now); encode into an "
                             "empty output_dir or restore the settings it was made with")
        if recorded_source(meta) != pieces[i].source:
            raise ValueError(f"{path} holds {recorded_source(meta)}, but in this run it would hold "
                             f"{pieces[i].source}; the input changed. Encode into an empty output_dir")
    finished = set(done)
    return [i for i in range(len(pieces)) if i not in finished]


def tasks_for(pieces: list[Piece], mine: list[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(piece index, start, stop) per task: a whole streamed piece is (k, 0, -1)."""
    tasks = []
    for k in mine:
        p = pieces[k]
        if p.streamed:
            tasks.append((k, 0, -1))
        else:
            tasks += [(k, a, min(a + batch_size, p.stop)) for a in range(p.start, p.stop, batch_size)]
    return tasks


def tasks_per_piece(tasks: list[tuple[int, int, int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for k, _, _ in tasks:
        counts[k] = counts.get(k, 0) + 1
    return counts
