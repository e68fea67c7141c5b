"""Evaluate an InternVL2 checkpoint on a standard benchmark with the official prompts and scorers.

    python paddlemix/examples/internvl2/eval/evaluate.py CHECKPOINT DATASET [--dynamic] [--max-num N]

Run it from the folder holding ``data/`` (or pass ``--data-root``); several devices:
``python -m paddle.distributed.launch --devices 0,1,... evaluate.py ...`` or ``GPUS=N evaluate.sh``.
Answers, merged records and ``results.json`` go to ``OUT_DIR/<checkpoint name>/<dataset>/``.
MathVista, MM-Vet and LLaVA-Bench are scored by an LLM judge: pass ``--judge-url`` (any
OpenAI-compatible endpoint), or score saved answers later with ``--score-only --judge-url ...``.
"""
import argparse
import logging
import os

import paddlemix  # noqa: F401  (sets the CPU thread count before paddle is imported)
from paddlemix.cli import hold_import_notices, run_main, setup_logging

hold_import_notices()  # before the tasks import paddle; shown with --verbose
from paddlemix.examples.internvl2.eval import runner  # noqa: E402
from paddlemix.examples.internvl2.eval.datafiles import DatasetError, read_json, write_json  # noqa: E402
from paddlemix.examples.internvl2.eval.judge import DEFAULT_KEY_ENV, judge_all, judge_from_args  # noqa: E402
from paddlemix.examples.internvl2.eval.published import SOURCE, published_scores  # noqa: E402
from paddlemix.examples.internvl2.eval.tasks import (DATASETS, JudgedTask, build_task,  # noqa: E402
                                                     check_visuals)

logger = logging.getLogger("evaluate")


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
    judged = parser.add_argument_group("LLM judge (mathvista-testmini, mmvet, llava-bench)")
    judged.add_argument("--judge-url", default=None,
                        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1; "
                             "without it the answers are written for scoring later")
    judged.add_argument("--judge-model", default=None,
                        help="judge model (default: the official scorer's, gpt-3.5-turbo for MathVista's answer "
                             "extraction, gpt-4-0613 for MM-Vet and LLaVA-Bench)")
    judged.add_argument("--judge-key-env", default=DEFAULT_KEY_ENV,
                        help=f"environment variable holding the judge's API key (default {DEFAULT_KEY_ENV})")
    judged.add_argument("--judge-retries", type=int, default=5,
                        help="retries of a failed judge request (network errors, HTTP 429 and 5xx) before giving up")
    judged.add_argument("--score-only", action="store_true",
                        help="judge and score the answers of an earlier run without loading the model")
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


def print_summary(dataset, metrics, results_path, published=None):
    """The metrics as a table; for a released checkpoint the release's numbers in a last column."""
    published = published or {}
    rows = flatten(metrics)
    rows += [(name, "-") for name in published if name not in dict(rows)]  # e.g. the test server's score
    table = [("dataset", "metric", "value", "published" if published else "")]
    table += [(dataset, name, f"{value:.4f}" if isinstance(value, float) else str(value),
               f"{published[name]:.4f}" if name in published else "") for name, value in rows]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths + [0])).rstrip())
    print(f"results: {results_path}")


def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    task = build_task(args.dataset, args.data_root, args.num_segments)
    judged = isinstance(task, JudgedTask)
    judge = judge_from_args(args.judge_url, args.judge_model, args.judge_key_env, task.judge_model,
                            args.judge_retries) if judged else None
    if (args.score_only or args.judge_url) and not judged:
        raise ValueError(f"{args.dataset} is scored without a judge; --judge-url and --score-only are for "
                         f"mathvista-testmini, mmvet and llava-bench")
    if args.score_only and judge is None:
        raise ValueError("--score-only needs --judge-url (an OpenAI-compatible endpoint) to score with")
    items = task.load()
    if judge is not None:
        task.check_judge_files()
    if not args.score_only:
        check_visuals(task, items)
    settings = run_settings(args, task)
    if args.check:
        print(f"{args.dataset}: {len(items)} questions, all files present")
        return None
    rank, _ = runner.distributed_rank()
    model_name = os.path.basename(os.path.normpath(args.checkpoint))
    run_dir = os.path.join(args.out_dir, model_name, args.dataset)
    if args.score_only:
        settings, answers = saved_answers(run_dir, items)
    else:
        os.makedirs(run_dir, exist_ok=True)
        check_resume(run_dir, settings, rank)
        answer_all(args, settings, items, run_dir, rank)
        answers = None
    if rank != 0:
        return None
    records = runner.merge(items, answers if answers is not None
                          else runner.wait_for_answers(items, run_dir, args.wait_timeout))
    write_json(os.path.join(run_dir, "answers.json"), records)
    metrics = task.evaluate(records, run_dir)
    if judge is not None:
        judgments = judge_all(records, run_dir, judge, task.judge_one, desc=f"{args.dataset} judge")
        metrics.update(task.score(records, judgments, run_dir), judge_model=judge.model)
    elif judged:
        places = "".join(f" --{name} {value}" for name, value, default in
                         (("data-root", args.data_root, "."), ("out-dir", args.out_dir, "results")) if value != default)
        metrics["how_to_score"] = (f"evaluate.py {args.checkpoint} {args.dataset}{places} --score-only "
                                   f"--judge-url URL [--judge-model M], with the key in ${args.judge_key_env}")
        logger.warning("%s needs an LLM judge: answers saved; score them with %s", args.dataset,
                       metrics["how_to_score"])
    results = {"dataset": args.dataset, "num_questions": len(records), "settings": settings, "metrics": metrics}
    published = published_scores(args.checkpoint, args.dataset)
    if published:
        results["published"] = {"model": model_name, "source": SOURCE, "metrics": published}
    results_path = os.path.join(run_dir, "results.json")
    write_json(results_path, results)
    print_summary(args.dataset, metrics, results_path, published)
    return results


def answer_all(args, settings, items, run_dir, rank):
    """This rank's share of the answers; the model is loaded on the first unanswered question."""
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


def saved_answers(run_dir, items):
    """--score-only: (settings, answers) of the run that answered every question in ``run_dir``."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        raise DatasetError(f"no answers to score in {run_dir}; run without --score-only first")
    answers = runner.read_answers(run_dir)
    missing = sum(1 for item in items if item.key not in answers)
    if missing:
        raise DatasetError(f"{missing} of {len(items)} questions have no answer in {run_dir}; run without "
                           f"--score-only to answer them first")
    return read_json(path), answers


if __name__ == "__main__":
    run_main(main)
