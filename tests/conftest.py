"""Make the repository root (``paddlemix``) and ``tests/`` (helpers such as ``reference``) importable."""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(TESTS_DIR), TESTS_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_1b(tmp_path_factory):
    """A tiny random-weight checkpoint in the HF layout, from the real InternVL2-1B config and tokenizer."""
    from reference import load_tool, require_asset

    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-1b")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out), seed=7)
    return str(out)


@pytest.fixture(scope="session")
def model(tiny_1b):
    """The model of `tiny_1b`, shared by the tests that only chat with it."""
    from paddlemix.models.internvl2 import InternVLChatModel

    return InternVLChatModel.from_pretrained(tiny_1b)


@pytest.fixture(scope="session")
def tokenizer(tiny_1b):
    from paddlemix.models.internvl2 import load_tokenizer

    return load_tokenizer(tiny_1b)


def random_pixels(tiles, seed, size=448):
    """Random normalised tiles [tiles, 3, size, size] as a paddle tensor."""
    import paddle

    return paddle.to_tensor(np.random.RandomState(seed).standard_normal((tiles, 3, size, size)).astype(np.float32))


if os.environ.get("PADDLEMIX_SIMULATE_NO_AVX512") == "1":
    # Runs the suite as on a CPU without AVX-512 (test_portability.py uses it for test_kernels.py).
    import paddle  # noqa: E402

    paddle.base.core.supports_avx512f = lambda: False
