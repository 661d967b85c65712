"""The training-free family side by side on the toy world, at one lever setting for all, strengths searched alike.

    bash bench/toy-world-methods [--cost fast|paper] [--tasks …] [--models …] [--methods …]
                                 [--search-targets 8] [--search-seeds 1] [--targets 16] [--seeds 2]

For each task and model, every method (samplers/methods) runs at the same levers, those of the fast preset or of
paper mode, so at about the same counted cost. Its strengths are m times a per-task reference
(`toy_world_frontier.method_terms`), and m is found by the same bounded search for every method, on the tuning
half (`--search-targets` × `--search-seeds` samples per evaluation): five values a decade apart (10⁻³ to 10),
then the half-decade on each side of the best, then the quarter-decade on the better side of the new best, eight
evaluations in all. The chosen m then runs on the report half (`--targets` × `--seeds`), all methods of a task in
one run, and the table gives each one's score with its 95% interval, KID and counted cost, and the best method's
margin over UGD with the interval of the paired difference (bootstrap over the same targets and seeds).

TFG takes N_iter = 1 and smoothing γ̄ = 0.1 (its Stable Diffusion setting), its ρ and μ tied to one m; the
searched space is the same size for every method.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)
from comfy_headless import ComfyHost  # noqa: E402

from bench import toy_world_frontier as frontier  # noqa: E402
from toy_world import evaluation, splits  # noqa: E402

METHODS = ("ugd", "freedom", "mpgd", "dps", "tfg")
COARSE = [10.0 ** e for e in range(-3, 2)]
TFG_SMOOTHING = 0.1


def levers(cost: str) -> frontier.Setting:
    if cost == "paper":
        return frontier.PAPER
    fast = frontier.preset_setting("fast")
    return dataclasses.replace(fast, preset="custom", levers=fast.levers.replace(weight_scale=1.0))


def setting(cost: str, method: str, m: float) -> frontier.Setting:
    """The levers for a method; MPGD's and TFG's mean guidance is a backward step, so the fast preset's
    backward_recurrence 1 would take their guided steps' recurrence away: they keep its k there instead."""
    chosen = levers(cost)
    changes = dict(method=method, smoothing=TFG_SMOOTHING if method == "tfg" else 0.0)
    if method in ("mpgd", "tfg"):
        changes["backward_recurrence"] = 0
    return dataclasses.replace(chosen, name=f"{method}, m = {m:.3g}", method_strength=m,
                               levers=chosen.levers.replace(**changes))


def search(evaluate, budget_log: list) -> float:
    """The bounded search: a decade grid, then half- and quarter-decade refinements around the best (8 calls)."""
    scores = {}

    def score(m):
        if m not in scores:
            scores[m] = evaluate(m)
            budget_log.append((m, scores[m]))
        return scores[m]

    for m in COARSE:
        score(m)
    best = max(scores, key=scores.get)
    for m in (best / math.sqrt(10), best * math.sqrt(10)):
        score(m)
    best = max(scores, key=scores.get)
    down, up = best / 10 ** 0.25, best * 10 ** 0.25
    below = max((v for k, v in scores.items() if k < best), default=-math.inf)
    above = max((v for k, v in scores.items() if k > best), default=-math.inf)
    score(up if above >= below else down)
    return max(scores, key=scores.get)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cost", default="fast", choices=("fast", "paper"))
    parser.add_argument("--tasks", nargs="+", default=frontier.TASKS, choices=frontier.TASKS)
    parser.add_argument("--models", nargs="+", default=frontier.MODELS, choices=frontier.MODELS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--search-targets", type=int, default=8)
    parser.add_argument("--search-seeds", type=int, default=1)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(PACK_DIR, "bench-output", "methods"))
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    toy = frontier.Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    features = evaluation.RealismFeatures(toy.evaluators["classifier"])
    real = evaluation.real_scenes()
    path = os.path.join(args.output, f"methods_{args.cost}_{'_'.join(args.models)}.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    started = time.time()
    for model in args.models:
        if model not in toy.models:
            continue
        for task in args.tasks:
            for method in args.methods:
                key = f"{model}/{task}/{method}"
                if key in results:
                    continue
                log = []

                def evaluate(m):
                    row = frontier.run_row(toy, features, real, model, task, setting(args.cost, method, m), "tuning",
                                           args.search_targets, args.search_seeds)
                    return row["mean"]

                chosen = search(evaluate, log)
                report = frontier.run_row(toy, features, real, model, task, setting(args.cost, method, chosen),
                                          "report", args.targets, args.seeds)
                results[key] = dict(model=model, task=task, method=method, m=chosen, search=log,
                                    report=report, scores=report.pop("scores"))
                print(f"{key}: m = {chosen:.3g}, report {report['mean']:.3f} "
                      f"({report['interval'][0]:.3f}-{report['interval'][1]:.3f}), cost {report['sd15_cost']:.2f}, "
                      f"{(time.time() - started) / 60:.1f} min", flush=True)
                with open(path, "w") as f:
                    json.dump(results, f, indent=1)
    text = markdown(results) + "\n\n" + summary(results)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return results


def markdown(results: dict) -> str:
    lines = ["| model | task | method | m (tuning half) | score (95% interval) | KID | SD 1.5 cost | best − UGD (95%) |",
             "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for row in results.values():
        groups.setdefault((row["model"], row["task"]), []).append(row)
    for (model, task), rows in groups.items():
        ugd = next((r for r in rows if r["method"] == "ugd"), None)
        best = max(rows, key=lambda r: r["report"]["mean"])
        for r in rows:
            rep = r["report"]
            margin = ""
            if r is best and ugd is not None and r is not ugd:
                diff = torch.tensor(r["scores"]) - torch.tensor(ugd["scores"])
                low, high = frontier.bootstrap_interval(diff)
                margin = f"{float(diff.mean()):+.3f} ({low:+.3f} to {high:+.3f})"
            lines.append(f"| {model} | {task} | {r['method']} | {r['m']:.3g} | {rep['mean']:.3f} "
                         f"({rep['interval'][0]:.3f}–{rep['interval'][1]:.3f}) | {rep['kid']:.0f} | "
                         f"{rep['sd15_cost']:.2f}× | {margin} |")
    return "\n".join(lines)


def summary(results: dict) -> str:
    """One line per task and model: each method's report-half score and cost, and the best one's margin over UGD."""
    methods = [m for m in METHODS if any(r["method"] == m for r in results.values())]
    lines = ["| model | task | " + " | ".join(methods) + " | best | best − UGD (95%) |",
             "|---|---|" + "---|" * (len(methods) + 2)]
    groups = {}
    for row in results.values():
        groups.setdefault((row["model"], row["task"]), {})[row["method"]] = row
    for (model, task), rows in groups.items():
        def cell(m):
            if m not in rows:
                return "–"
            rep = rows[m]["report"]
            return f"{rep['mean']:.3f} ({rep['sd15_cost']:.2f}×)" if math.isfinite(rep["mean"]) else "not finite"
        finite = {m: r for m, r in rows.items() if math.isfinite(r["report"]["mean"])}
        best = max(finite, key=lambda m: finite[m]["report"]["mean"])
        margin = "–"
        if best != "ugd" and "ugd" in rows:
            diff = torch.tensor(rows[best]["scores"]) - torch.tensor(rows["ugd"]["scores"])
            low, high = frontier.bootstrap_interval(diff)
            margin = f"{float(diff.mean()):+.3f} ({low:+.3f} to {high:+.3f})"
        lines.append(f"| {model} | {task} | " + " | ".join(cell(m) for m in methods) + f" | {best} | {margin} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
