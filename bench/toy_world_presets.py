"""Choosing the presets: one bounded search per cost budget on the toy world's tuning half, the same for every
method, with the guidance nodes at their defaults (what a user gets).

    bash bench/toy-world-presets search --budget fast --stage coarse --models eps
    bash bench/toy-world-presets choose --budget fast

A candidate is one setting of the sampler (samplers/settings.py): a method, a lever template of the budget (steps,
guidance decoder, recurrence, window, gradient path, known_pixels) and a weight_scale on the nodes' default auto w.
It runs on every task through the Universal Guided KSampler, 8 tuning-half targets × 1 seed a row, and is scored by
the share of paper mode's gain over unguided that it keeps ("retention"), against paper mode and unguided rows of
the same targets and seeds (`references`). It is within the budget where its counted cost is, on every task: fast,
at most 1.5× an unguided 20-step run; balanced, at most ⅕ of paper mode's; quality, at most paper mode's. Among
those, the highest worst-case retention over the task/model pairs wins, its mean breaking ties: a preset is one
setting for every guidance, so it must hold where it is weakest, and a margin there is what carries to targets the
search never saw.

The search, the same for every method: `coarse` runs every method at the budget's first template with weight_scale
in SCALES; `fine` takes the two best coarse (method, weight_scale) pairs through the budget's other templates, and
the best one with its weight_scale ×√2 and ÷√2; `polish` gives the best candidate so far polish_steps in POLISH,
which act on inpainting alone (its other tasks' rows are the candidate's own, reused); `strength`, for the
balanced budget, the chosen candidate at other weight_scales (STRENGTH_FACTORS), which give each task's own best
strength beside the default one (docs/presets-speed-memory.md: Defaults). Candidates over the budget on some task are not run (their cost is
counted on a stand-in first). Every row lands in bench/frontier/presets/<budget>_<model>.json; `choose` joins the
models and prints the ranking. Run one process per model (`--models eps`, `--models flow`) to use both cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)

from bench import toy_world_frontier as frontier  # noqa: E402
from samplers.settings import METHODS, Settings  # noqa: E402

OUTPUT = os.path.join(PACK_DIR, "bench", "frontier", "presets")
TARGETS, SEEDS = 8, 1
SCALES = (0.5, 1.0, 2.0)
POLISH = (10, 20, 40)  # the polish stage's polish_steps; the reconstruction node's own 5 otherwise
STRENGTH_FACTORS = (0.5, math.sqrt(0.5), math.sqrt(2), 2.0)  # the strength stage's, on the chosen weight_scale
FINE_METHODS = 2
REPLACE = dict(known_pixels="replace")
# budget: the most a candidate may cost on a task, given paper mode's cost there; and its lever templates, each
# (name, the settings' levers, steps, cheap guidance decoder), the first the coarse stage's
BUDGETS = {
    "fast": (lambda paper_cost: 1.5, [
        ("10 steps, TAESD, x0_only, k 3 in the first 50%", dict(recurrence=3, guidance_end=0.5, gradient="x0_only", **REPLACE), 10, True),
        ("10 steps, TAESD, x0_only, k 2 on every step", dict(recurrence=2, gradient="x0_only", **REPLACE), 10, True),
        ("10 steps, TAESD, x0_only, k 4 in the first 40%", dict(recurrence=4, guidance_end=0.4, gradient="x0_only", **REPLACE), 10, True),
    ]),
    "balanced": (lambda paper_cost: paper_cost / 5, [
        ("x0_only, k 4 in the first 40%", dict(recurrence=4, guidance_end=0.4, gradient="x0_only", **REPLACE), 20, False),
        ("x0_only, k 3 in the first 50%", dict(recurrence=3, guidance_end=0.5, gradient="x0_only", **REPLACE), 20, False),
        ("through the UNet, k 2 in the first 40%", dict(recurrence=2, guidance_end=0.4, **REPLACE), 20, False),
    ]),
    "quality": (lambda paper_cost: paper_cost, [
        ("through the UNet, k 5", dict(recurrence=5, **REPLACE), 20, False),
        ("through the UNet, k 3", dict(recurrence=3, **REPLACE), 20, False),
        ("x0_only, k 8", dict(recurrence=8, gradient="x0_only", **REPLACE), 20, False),
    ]),
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    budget: str
    method: str
    template: int
    scale: float
    polish: int = 0  # the settings' polish_steps (0: the guidance's own)

    @property
    def name(self) -> str:
        polish = f", polish {self.polish}" if self.polish else ""
        return f"{self.method}, {BUDGETS[self.budget][1][self.template][0]}, weight ×{self.scale:.3g}{polish}"

    def setting(self) -> frontier.Setting:
        _, levers, steps, cheap = BUDGETS[self.budget][1][self.template]
        settings = Settings(method=self.method, weight_scale=self.scale, polish_steps=self.polish, **levers)
        return frontier.Setting(self.name, settings, steps=steps, cheap_decoder=cheap, node_defaults=True)


def term_counts(toy: frontier.Toy, task: str) -> list[dict]:
    """The task's guidance terms at the nodes' defaults, as samplers/cost counts them."""
    names = ("segmentation", "classification") if task == "combination" else (task,)
    return [dict(toy.node_defaults(name), knows_pixels=name == "inpainting") for name in names]


def counted_cost(toy: frontier.Toy, task: str, setting: frontier.Setting) -> float:
    return frontier.sd_equivalent.settings_multiple(setting.steps, term_counts(toy, task), setting.levers,
                                                    "taesd" if setting.cheap_decoder else "vae",
                                                    "segmentation" if task == "segmentation" else "clip")


def path(budget: str, model: str) -> str:
    return os.path.join(OUTPUT, f"{budget}_{model}.json")


def load(file: str) -> list[dict]:
    return json.load(open(file)) if os.path.exists(file) else []


def references(toy, features, real, model: str) -> dict:
    """{task: (unguided row, paper row)} on the search's targets and seeds, run once and kept."""
    file = os.path.join(OUTPUT, f"references_{model}.json")
    rows = {(r["task"], r["setting"]): r for r in load(file)}
    for task in frontier.TASKS:
        for setting in (frontier.UNGUIDED, frontier.PAPER):
            if (task, setting.name) not in rows:
                rows[task, setting.name] = frontier.run_row(toy, features, real, model, task, setting, "tuning",
                                                            TARGETS, SEEDS)
                json.dump(list(rows.values()), open(file, "w"), indent=1)
    return {task: (rows[task, frontier.UNGUIDED.name], rows[task, frontier.PAPER.name]) for task in frontier.TASKS}


def retention(row: dict, unguided: dict, paper: dict) -> float:
    gain = paper["mean"] - unguided["mean"]
    return (row["mean"] - unguided["mean"]) / gain if gain > 0 else math.nan


def evaluated(budget: str, models) -> dict[str, list[dict]]:
    """Every candidate's rows, by name: each task's retention, score, cost and whether that is within the budget."""
    by_name: dict[str, list[dict]] = {}
    for model in models:
        refs = {(r["task"], r["setting"]): r for r in load(os.path.join(OUTPUT, f"references_{model}.json"))}
        for row in load(path(budget, model)):
            unguided, paper = refs[row["task"], frontier.UNGUIDED.name], refs[row["task"], frontier.PAPER.name]
            within = row["sd15_cost"] <= BUDGETS[budget][0](paper["sd15_cost"]) + 1e-9
            by_name.setdefault(row["setting"], []).append(
                dict(model=model, task=row["task"], retention=retention(row, unguided, paper), within=within,
                     mean=row["mean"], cost=row["sd15_cost"], candidate=row["candidate"]))
    return by_name


def ranking(budget: str, models) -> list[dict]:
    """Every candidate run on every task of every model, within the budget everywhere, best first."""
    complete = [rows for rows in evaluated(budget, models).values()
                if len(rows) == len(models) * len(frontier.TASKS) and all(r["within"] for r in rows)]
    ranked = [dict(name=rows[0]["candidate"]["name"], candidate=rows[0]["candidate"], rows=rows,
                   worst=min(r["retention"] for r in rows), mean=sum(r["retention"] for r in rows) / len(rows))
              for rows in complete]
    return sorted(ranked, key=lambda c: (c["worst"], c["mean"]), reverse=True)


def stage_candidates(budget: str, stage: str, models) -> list[Candidate]:
    templates = BUDGETS[budget][1]
    if stage == "coarse":
        return [Candidate(budget, method, 0, scale) for method in METHODS for scale in SCALES]
    best = ranking(budget, models)
    if not best:
        raise SystemExit(f"no coarse candidate of {budget} is complete and within the budget: run the coarse stage")
    base = best[0]["candidate"]
    if stage == "polish":
        return [Candidate(budget, base["method"], base["template"], base["scale"], polish) for polish in POLISH]
    if stage == "strength":
        return [Candidate(budget, base["method"], base["template"], round(base["scale"] * f, 4), base.get("polish", 0))
                for f in STRENGTH_FACTORS]
    pairs = list(dict.fromkeys((c["candidate"]["method"], c["candidate"]["scale"]) for c in best))[:FINE_METHODS]
    fine = [Candidate(budget, method, t, scale) for method, scale in pairs for t in range(1, len(templates))]
    method, scale = pairs[0]
    fine += [Candidate(budget, method, 0, round(scale * f, 4)) for f in (math.sqrt(0.5), math.sqrt(2))]
    return fine


def search(args) -> None:
    from comfy_headless import ComfyHost

    toy = frontier.Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    features = frontier.evaluation.RealismFeatures(toy.evaluators["classifier"])
    real = frontier.evaluation.real_scenes()
    os.makedirs(OUTPUT, exist_ok=True)
    for model in args.models:
        refs = references(toy, features, real, model)
        candidates = stage_candidates(args.budget, args.stage, args.models_for_ranking)
        rows = load(path(args.budget, model))
        done = {(r["setting"], r["task"]) for r in rows}
        started = time.time()
        for candidate in candidates:
            setting = candidate.setting()
            base = dataclasses.replace(candidate, polish=0).setting().name
            if args.stage == "strength":
                base = None
            limits = {task: BUDGETS[args.budget][0](refs[task][1]["sd15_cost"]) for task in frontier.TASKS}
            over = [t for t in frontier.TASKS if counted_cost(toy, t, setting) > limits[t] + 1e-9]
            if over:
                print(f"skip {candidate.name}: over the budget on {', '.join(over)}", flush=True)
                continue
            for task in frontier.TASKS:
                if (setting.name, task) in done:
                    continue
                if base and candidate.polish and task != "inpainting":  # polish acts only where a guidance knows pixels
                    row = dict(next(r for r in rows if (r["setting"], r["task"]) == (base, task)),
                               setting=setting.name, reused_from=base)
                else:
                    row = frontier.run_row(toy, features, real, model, task, setting, "tuning", TARGETS, SEEDS)
                row["candidate"] = dict(dataclasses.asdict(candidate), name=candidate.name)
                rows.append(row)
                json.dump(rows, open(path(args.budget, model), "w"), indent=1)
                unguided, paper = refs[task]
                print(f"{model} {task} {candidate.name}: {row['mean']:.3f}, retention "
                      f"{retention(row, unguided, paper):.0%}, {row['sd15_cost']:.2f}× "
                      f"({(time.time() - started) / 60:.1f} min)", flush=True)


def retention_cells(rows: list[dict], pairs: list[tuple[str, str]]) -> str:
    """A ranking table's cells, one per (model, task) pair: the retention, then the score and the counted cost."""
    cells = {(r["model"], r["task"]): f"{r['retention']:.0%} ({r['mean']:.3g}, {r['cost']:.2f}×)" for r in rows}
    return " | ".join(cells[p] for p in pairs)


def choose(args) -> None:
    """Print the ranking's top and write every candidate run, ranked, to <budget>.md beside the rows."""
    ranked = ranking(args.budget, args.models)
    print(f"{args.budget}: {len(ranked)} candidates complete and within the budget on every task")
    for c in ranked[:args.top]:
        cells = ", ".join(f"{r['model']} {r['task']} {r['retention']:.0%}" for r in c["rows"])
        print(f"- {c['name']}: worst {c['worst']:.0%}, mean {c['mean']:.0%} ({cells})")
    pairs = [(m, t) for m in args.models for t in frontier.TASKS]
    lines = [f"# The {args.budget} budget's search, tuning half ({TARGETS} targets × {SEEDS} seed a row)", "",
             "Every candidate complete on every task and within the budget, best worst-case retention first; a cell "
             "is the share of paper mode's gain over unguided kept (the score, then the counted SD 1.5 cost).", "",
             "| candidate | worst | mean | " + " | ".join(f"{m} {t}" for m, t in pairs) + " |",
             "|---|---|---|" + "---|" * len(pairs)]
    for c in ranked:
        lines.append(f"| {c['name']} | {c['worst']:.0%} | {c['mean']:.0%} | {retention_cells(c['rows'], pairs)} |")
    ranked_names = {c["name"] for c in ranked}
    others = [(name, rows) for name, rows in evaluated(args.budget, args.models).items() if name not in ranked_names]
    if others:
        lines += ["", "Run, but over the budget on some task or not run on every task (not eligible):", ""]
        lines += [f"- {name}: " + ", ".join(f"{r['model']} {r['task']} {r['cost']:.2f}×"
                                              + ("" if r["within"] else " (over)") for r in rows)
                  for name, rows in others]
    with open(os.path.join(OUTPUT, f"{args.budget}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("search", "choose"))
    parser.add_argument("--budget", required=True, choices=tuple(BUDGETS))
    parser.add_argument("--stage", default="coarse", choices=("coarse", "fine", "polish", "strength"))
    parser.add_argument("--models", nargs="+", default=list(frontier.MODELS), choices=frontier.MODELS)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    args.models_for_ranking = list(frontier.MODELS)  # the fine stage follows both models' coarse rows
    search(args) if args.command == "search" else choose(args)


if __name__ == "__main__":
    main()
