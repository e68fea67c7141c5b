"""Evaluate an InternVL2 checkpoint on a standard benchmark with the official prompts and scorers.

    python paddlemix/examples/internvl2/eval/evaluate.py CHECKPOINT DATASET [--dynamic] [--max-num N]

Run it from the folder holding ``data/`` (or pass ``--data-root``); several devices:
``python -m paddle.distributed.launch --devices 0,1,... evaluate.py ...`` or ``GPUS=N evaluate.sh``.
Answers, merged records and ``results.json`` go to ``OUT_DIR/<checkpoint name>/<dataset>/``.
"""
import argparse
import os

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import hold_import_notices, run_main, setup_logging

hold_import_notices()  # before the tasks import paddle; shown with --verbose
from paddlemix.examples.internvl2.eval import runner  # noqa: E402
from paddlemix.examples.internvl2.eval.datafiles import read_json, write_json  # noqa: E402
from paddlemix.examples.internvl2.eval.tasks import DATASETS, build_task, check_visuals  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="local checkpoint directory or hub model id")
    parser.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic high-resolution tiling (InternVL2's published scores use it); "
                             "without it every image is a single tile")
    parser.add_argument("--max-num", type=int, default=None,
                        help="maximum tiles per image with --dynamic (default 6; 1 for mvbench)")
    parser.add_argument("--num-segments", type=int, default=16, help="frames per video (mvbench)")
    parser.add_argument("--data-root", default=".", help="folder that holds data/ (default: current folder)")
    parser.add_argument("--out-dir", default="results", help="where answers and results go (default: results)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="override the official per-dataset answer length (for quick smoke runs only)")
    parser.add_argument("--num-beams", type=int, default=1, help="beam width (default 1: greedy, as official)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 on CPU, "
                                                      "bfloat16 on GPUs that support it, else float16)")
    parser.add_argument("--device", default=None, help="cpu, gpu, npu ... (default: paddle's default)")
    parser.add_argument("--download-source", default=None, choices=["huggingface", "aistudio", "modelscope"])
    parser.add_argument("--wait-timeout", type=float, default=3600,
                        help="rank 0 gives up after this many seconds without progress from the other ranks")
    parser.add_argument("--check", action="store_true", help="only check the dataset files, then exit")
    parser.add_argument("--verbose", action="store_true", help="log progress details")
    return parser.parse_args(argv)


def run_settings(args, task):
    """What the answers depend on; a resumed run must match the run that wrote the first answers."""
    max_num = args.max_num if args.max_num is not None else task.default_max_num
    if max_num < 1:
        raise ValueError(f"--max-num must be at least 1, got {max_num}")
    return {
        "checkpoint": args.checkpoint,
        "dataset": args.dataset,
        "dynamic": args.dynamic,
        "max_num": max_num if args.dynamic else None,
        "num_segments": args.num_segments if args.dataset == "mvbench" else None,
        "max_new_tokens": args.max_new_tokens or task.max_new_tokens,
        "num_beams": args.num_beams,
        "dtype": args.dtype,
    }


def check_resume(run_dir, settings, rank):
    path = os.path.join(run_dir, "run.json")
    if os.path.exists(path):
        saved = read_json(path)
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{run_dir} holds answers made with other settings ({', '.join(changed)}); "
                             f"use another --out-dir or delete that folder")
    elif rank == 0:
        write_json(path, settings)


def flatten(metrics, prefix=""):
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{prefix}{name}."))
        else:
            rows.append((prefix + name, value))
    return rows


def print_summary(dataset, metrics, results_path):
    rows = flatten(metrics)
    first = max(len("dataset"), len(dataset))
    width = max([len("metric")] + [len(name) for name, _ in rows])
    print(f"{'dataset':<{first}}  {'metric':<{width}}  value")
    for name, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{dataset:<{first}}  {name:<{width}}  {shown}")
    print(f"results: {results_path}")


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    task = build_task(args.dataset, args.data_root, args.num_segments)
    items = task.load()
    check_visuals(task, items)
    settings = run_settings(args, task)
    if args.check:
        print(f"{args.dataset}: {len(items)} questions, all files present")
        return None
    rank, _ = runner.distributed_rank()
    model_name = os.path.basename(os.path.normpath(args.checkpoint))
    run_dir = os.path.join(args.out_dir, model_name, args.dataset)
    os.makedirs(run_dir, exist_ok=True)
    check_resume(run_dir, settings, rank)

    predictor = None

    def answer(item):
        nonlocal predictor
        if predictor is None:
            from paddlemix.examples.internvl2.eval.predictor import Predictor

            max_num = settings["max_num"] or 1  # only used with --dynamic
            predictor = Predictor(args.checkpoint, args.dynamic, max_num, args.num_segments,
                                  settings["max_new_tokens"], args.num_beams, args.dtype, args.device,
                                  args.download_source)
        return predictor(item)

    runner.answer_shard(items, run_dir, answer, desc=f"{args.dataset} rank {rank}")
    if rank != 0:
        return None
    records = runner.merge(items, runner.wait_for_answers(items, run_dir, args.wait_timeout))
    write_json(os.path.join(run_dir, "answers.json"), records)
    metrics = task.evaluate(records, run_dir)
    results = {"dataset": args.dataset, "num_questions": len(records), "settings": settings, "metrics": metrics}
    results_path = os.path.join(run_dir, "results.json")
    write_json(results_path, results)
    print_summary(args.dataset, metrics, results_path)
    return results


if __name__ == "__main__":
    run_main(main)
