"""PaddlePaddle port of the InternVL2 multimodal chat models."""
import os

# `import paddle` pins OMP_NUM_THREADS to 1 when it is unset, which leaves all
# but one CPU core idle. Use every core unless the user chose a number.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

__version__ = "0.1.0"
