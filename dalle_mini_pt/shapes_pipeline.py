"""The embedded default: a complete text-to-image run on the procedural shape scenes, nothing downloaded.

    python -m dalle_mini_pt.shapes_pipeline                  # the full run (README: how long it takes)
    python -m dalle_mini_pt.shapes_pipeline --config-name shapes_smoke out_dir=/tmp/smoke
        # every stage for a few steps: what the tests and notebooks run

Its stages (`shapes/stages.py`) each run only when their inputs changed: a re-run skips finished ones.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from .config_dir import CONFIG_DIR
from .shapes.stages import run_pipeline, summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="shapes_pipeline")
def main(cfg: DictConfig) -> None:
    stages = run_pipeline(cfg)
    print("\n" + summary(stages))
    print(f"grids: {stages[-1].dir}/validation_grid.png, {stages[-1].dir}/heldout_grid.png")
    print(f"the trained pipeline: {stages[-2].dir} (python -m dalle_mini_pt.generate PROMPT --pipeline DIR)")


if __name__ == "__main__":
    main()
