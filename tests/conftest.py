import os

# nothing may be fetched from the hub in tests; set before transformers / huggingface_hub import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import dalle_mini_pt  # noqa: E402,F401  (patches torchvision before anything imports it)
from dalle_mini_pt.data import tiny_dataset  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A `paths.data_dir` holding the project's tiny caption/code set (`tiny/`), built once per session."""
    root = tmp_path_factory.mktemp("data")
    tiny_dataset.build(root / "tiny", n_train=128, n_val=32)
    return root


@pytest.fixture(scope="session")
def tiny_data(data_dir):
    return data_dir / "tiny"
