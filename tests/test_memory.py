"""The fine-tuning memory estimate (memory.py): exact parameter accounting, and a measured step."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from paddlemix.models.internvl2.config import InternVLChatConfig
from paddlemix.models.internvl2.memory import GIB, Plan, estimate, load_config, main, parameter_shapes
from paddlemix.models.internvl2.tensor_parallel import TensorParallel, apply_tensor_parallel
from reference import REPO_ROOT, load_tool, require_asset

logger = logging.getLogger(__name__)
CONFIGS = REPO_ROOT / "tests" / "data" / "configs"
make_tiny = load_tool("make_tiny_checkpoint").make_tiny_checkpoint


def _local_counts(config, degree):
    """(all parameters, language-model parameters) one rank holds, from a lazily built model."""
    import paddle

    from paddlemix.models.internvl2 import InternVLChatModel

    with paddle.LazyGuard():
        model = InternVLChatModel(config)
        if degree > 1:
            apply_tensor_parallel(model.language_model, TensorParallel(degree, 0, group=object()))
    return _count(model.parameters()), _count(model.language_model.parameters())


def _count(params):
    return sum(int(np.prod(param.shape)) for param in params)


@pytest.mark.parametrize("name", ["internvl2-llama3-76b", "internvl2-26b", "internvl2-40b"])
@pytest.mark.parametrize("degree", [1, 2, 8])
def test_the_estimate_counts_exactly_the_parameters_a_rank_holds(name, degree):
    config = load_config(str(CONFIGS / f"{name}.json"))
    total, llm = _local_counts(config, degree)
    shapes = parameter_shapes(config)
    parts = estimate(config, Plan(mode="full", tensor_parallel=degree, dtype="float32"), shapes)
    assert parts["weights"] == 4 * total
    assert parts["gradients"] == 4 * (llm + sum(int(np.prod(s)) for n, s in shapes.items() if n.startswith("mlp1.")))
    lora = estimate(config, Plan(mode="lora", tensor_parallel=degree, sharding=4, lora_rank=16), shapes)
    layers, hidden = config.llm.num_hidden_layers, config.llm.hidden_size
    heads, kv, dim, inner = (config.llm.num_attention_heads, config.llm.num_key_value_heads, config.llm.head_dim,
                             config.llm.intermediate_size)
    per_layer = 16 * ((hidden + (heads + 2 * kv) * dim // degree) + (heads * dim // degree + hidden)
                      + (hidden + 2 * inner // degree) + (inner // degree + hidden))
    assert lora["gradients"] == 4 * layers * per_layer
    assert lora["optimizer"] == 12 * layers * per_layer // 4
    assert lora["weights"] == 2 * (total + layers * per_layer)


def test_the_real_76b_figures_and_the_refusal(capsys):
    config = str(CONFIGS / "internvl2-llama3-76b.json")
    assert main([config, "--mode", "lora", "--tensor-parallel", "8", "--device-gib", "80"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("estimated memory per device: weights 27.2 GiB") and line.endswith("total 39.6 GiB")
    assert main([config, "--mode", "lora", "--tensor-parallel", "1", "--device-gib", "80"]) == 1
    assert capsys.readouterr().err.strip() == ("error: the estimate of 157.3 GiB per device exceeds the 80 GiB of "
                                               "each card; use more cards or a larger tensor-parallel degree")
    assert main([str(CONFIGS / "missing.json")]) == 2


def test_a_measured_fp32_step_on_cpu_is_within_a_fifth_of_the_estimate(tmp_path):
    """Full fine-tuning, one 1024-token sample with 2 tiles, one AdamW step, on a 2B-shaped model
    with a wide language model (~300M parameters, so that the model, not the interpreter, dominates)."""
    folder = require_asset("tokenizers", "internvl2-2b")
    make_tiny(str(folder / "config.json"), str(folder), str(tmp_path / "model"), llm_hidden=1024, llm_heads=16,
              llm_kv_heads=8, llm_intermediate=4096, llm_layers=8, vision_hidden=256, vision_heads=4,
              vision_intermediate=1024, vision_layers=4)
    tokens, tiles = 1024, 2
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "memory_worker.py"), str(tmp_path / "model"),
                           str(tokens), str(tiles)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    config = InternVLChatConfig.from_pretrained(str(tmp_path / "model"))
    parts = estimate(config, Plan(mode="full", max_seq_length=tokens, tiles_per_sample=tiles, dtype="float32",
                                  flash_attention=False))
    added = measured["peak"] - measured["baseline"]
    logger.info("measured %.2f GiB over the baseline; estimated %s", added / GIB,
                ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items()))
    assert abs(added - parts["total"]) <= 0.2 * parts["total"], (added / GIB, {k: v / GIB for k, v in parts.items()})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and exec pass ru_maxrss on Linux")
def test_the_peak_rss_is_the_process_own_not_its_parents():
    """The benchmark's and measure_memory.py's workers are started by a parent that may hold GBs."""
    ballast = np.ones(int(1.5e9) // 8)  # written, so resident in this process
    code = ("import json, resource; from paddlemix.models.internvl2.memory import peak_host_rss_bytes; "
            "print(json.dumps([peak_host_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = json.loads(done.stdout.strip().splitlines()[-1])
    assert inherited > ballast.nbytes  # the trap: ru_maxrss counts the parent's ballast
    assert own < 1e9  # importing paddle takes about 0.35 GB
