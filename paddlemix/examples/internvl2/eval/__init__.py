"""InternVL2 benchmark evaluation: the official prompts, decoding settings and scorers, in Paddle.

Entry points: ``evaluate.sh CHECKPOINT DATASET [--dynamic] [--max-num N]`` or
``python paddlemix/examples/internvl2/eval/evaluate.py CHECKPOINT DATASET ...``; see README.md.
"""
