"""Particles against gradient guidance at matched counted cost, on the toy world (samplers/particles.py).

    bash bench/toy-world-particles search --models eps      # tuning half: the bounded search
    bash bench/toy-world-particles choose                   # the search's ranking, bench/frontier/particles/search.md
    bash bench/toy-world-particles compare --models eps     # report half: the chosen rows beside the presets
    bash bench/toy-world-particles report                   # bench/frontier/particles/report.md and its plot

The search, on the tuning half (the first 4 of the presets search's 8 targets × 1 seed a row, against its unguided
and paper rows on those 4), is the same for every kind of row: at the balanced budget (⅕ of paper mode's cost),
N = 8 particles, resampled every 4 steps by each potential (max, difference, sum) at each λ in TEMPERATURES, or only
at the end (best-of-N); once with every guidance reward-only and the ddpm sampler (particles alone), and once with
the fast preset's gradient guidance on every particle (particles with gradient guidance). A candidate's worst-case
retention over the task/model pairs ranks it, its mean breaking ties, as for the presets (bench/toy_world_presets.py).
On location alone it also runs best-of-8 and both kinds scored by the detected boxes (Object Location Reward).

`compare` runs, on the report half (16 targets × 1 seed, classification 12 × 2: the first seed of the frontier's
report rows, to fit this CPU), one process per model: at the fast budget, best-of-2 (two 10-step particles fit in
1.5×); at the balanced budget, best-of-8, the chosen particles alone and the chosen particles with gradient
guidance; on location, the box-reward rows; at paper mode's budget, the particles with gradient guidance at
N = 16. `report` sets them beside
the frontier's unguided, paper mode and preset rows on the same targets and seeds (REFERENCES), with the guide
networks' own loss beside the held-out evaluator's score and KID, and checks the issue's targets.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "tools"))
sys.path.insert(0, PACK_DIR)

from bench import toy_world_frontier as frontier  # noqa: E402
from bench import toy_world_presets as presets  # noqa: E402
from samplers.presets import PRESETS  # noqa: E402
from samplers.settings import POTENTIALS, Settings  # noqa: E402

OUTPUT = os.path.join(PACK_DIR, "bench", "frontier", "particles")
TARGETS = 4  # the search's: a particle row costs N runs on this CPU
TEMPERATURES = (10.0, 1000.0)  # the guidance losses are raw, from ~0.01 (inpainting's MSE) to ~10 (the detector's)
RESAMPLE_EVERY = 4
PARTICLES = {"fast": 2, "balanced": 8, "quality": 16}  # quality: paper mode's budget, which 16 fill a third of


def particles_alone(n: int, steps: int = 20, **levers) -> frontier.Setting:
    name = (f"best of {n}" if not levers.get("resample_every") else
            f"FK {levers['potential']}, λ {levers['temperature']:g}, N {n}")
    return frontier.Setting(name, Settings(particles=n, **levers), steps=steps, node_defaults=True, reward_only=True,
                            sampler="ddpm")


def with_gradient(n: int, **levers) -> frontier.Setting:
    """The fast preset's gradient guidance on each of n particles, at its 10 steps and TAESD decoder."""
    fast = PRESETS["fast"]
    name = (f"fast preset × best of {n}" if not levers.get("resample_every") else
            f"fast preset × FK {levers['potential']}, λ {levers['temperature']:g}, N {n}")
    return frontier.Setting(name, fast.over(Settings()).replace(particles=n, **levers), steps=fast.steps,
                            cheap_decoder=True, node_defaults=True)


def search_settings() -> list[frontier.Setting]:
    n = PARTICLES["balanced"]
    fk = [dict(resample_every=RESAMPLE_EVERY, potential=p, temperature=t) for p in POTENTIALS for t in TEMPERATURES]
    return ([particles_alone(n)] + [particles_alone(n, **levers) for levers in fk]
            + [with_gradient(n)] + [with_gradient(n, **levers) for levers in fk])


def box_reward_settings() -> list[frontier.Setting]:
    """Location only: the search's best-of-N and max-potential rows, scored by the detected boxes instead."""
    n, fk = PARTICLES["balanced"], dict(resample_every=RESAMPLE_EVERY, potential="max", temperature=TEMPERATURES[0])
    return [dataclasses.replace(s, name=f"{s.name}, box reward", box_reward=True)
            for s in (particles_alone(n), with_gradient(n), with_gradient(n, **fk))]


def path(name: str) -> str:
    return os.path.join(OUTPUT, name)


def search(args) -> None:
    from comfy_headless import ComfyHost

    toy = frontier.Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    features = frontier.evaluation.RealismFeatures(toy.evaluators["classifier"])
    real = frontier.evaluation.real_scenes()
    os.makedirs(OUTPUT, exist_ok=True)
    started = time.time()
    for model in args.models:
        refs = presets.references(toy, features, real, model)
        file = path(f"search_{model}.json")
        rows = presets.load(file)
        done = {(r["setting"], r["task"]) for r in rows}
        for setting, tasks in [(s, frontier.TASKS) for s in search_settings()] + [(s, ("location",))
                                                                                   for s in box_reward_settings()]:
            for task in tasks:
                if (setting.name, task) in done:
                    continue
                row = frontier.run_row(toy, features, real, model, task, setting, "tuning", TARGETS, presets.SEEDS)
                rows.append(row)
                json.dump(rows, open(file, "w"), indent=1)
                unguided, paper = (on_search_targets(r) for r in refs[task])
                print(f"{model} {task} {setting.name}: {row['mean']:.3f}, retention "
                      f"{presets.retention(row, unguided, paper):.0%}, {row['sd15_cost']:.2f}× "
                      f"({(time.time() - started) / 60:.1f} min)", flush=True)


def on_search_targets(reference: dict) -> dict:
    """A presets-search reference row with its mean over the particle search's targets only."""
    scores = reference["scores"][:TARGETS]
    return dict(reference, mean=sum(map(sum, scores)) / sum(map(len, scores)))


def ranking(models) -> list[dict]:
    """Every search setting run on every task of every model, within the balanced budget everywhere, best first."""
    by_name: dict[str, list[dict]] = {}
    for model in models:
        refs = {(r["task"], r["setting"]): r for r in presets.load(os.path.join(presets.OUTPUT, f"references_{model}.json"))}
        for row in presets.load(path(f"search_{model}.json")):
            unguided, paper = (on_search_targets(refs[row["task"], name]) for name in ("unguided", "paper"))
            by_name.setdefault(row["setting"], []).append(dict(
                model=model, task=row["task"], retention=presets.retention(row, unguided, paper), mean=row["mean"],
                cost=row["sd15_cost"], within=row["sd15_cost"] <= paper["sd15_cost"] / 5 + 1e-9))
    ranked = [dict(name=name, rows=rows, worst=min(r["retention"] for r in rows),
                   mean=sum(r["retention"] for r in rows) / len(rows), within=all(r["within"] for r in rows))
              for name, rows in by_name.items() if len(rows) == len(models) * len(frontier.TASKS)]
    return sorted(ranked, key=lambda c: (c["within"], c["worst"], c["mean"]), reverse=True)


def choose(args) -> None:
    ranked = ranking(args.models)
    pairs = [(m, t) for m in args.models for t in frontier.TASKS]
    lines = [f"# Particles: the search at the balanced budget, tuning half ({TARGETS} targets × "
             f"{presets.SEEDS} seed a row)", "",
             "Best worst-case retention first among the settings within ⅕ of paper mode's cost on every task; a cell is "
             "the share of paper mode's gain over unguided kept (the score, then the counted SD 1.5 cost).", "",
             "| setting | within budget | worst | mean | " + " | ".join(f"{m} {t}" for m, t in pairs) + " |",
             "|---|---|---|---|" + "---|" * len(pairs)]
    for c in ranked:
        lines.append(f"| {c['name']} | {'yes' if c['within'] else 'no'} | {c['worst']:.0%} | {c['mean']:.0%} | "
                     f"{presets.retention_cells(c['rows'], pairs)} |")
        print(f"- {c['name']}: worst {c['worst']:.0%}, mean {c['mean']:.0%}, within {c['within']}")
    lines += ["", "Location, scored by the detector's training loss (the rows above) or by the detected boxes (Object "
              "Location Reward, `, box reward`): retention on each model.", "",
              "| setting | " + " | ".join(args.models) + " |", "|---|" + "---|" * len(args.models)]
    location = {}
    for model in args.models:
        refs = {(r["task"], r["setting"]): r for r in presets.load(os.path.join(presets.OUTPUT, f"references_{model}.json"))}
        unguided, paper = (on_search_targets(refs["location", name]) for name in ("unguided", "paper"))
        for row in presets.load(path(f"search_{model}.json")):
            if row["task"] == "location":
                location.setdefault(row["setting"], {})[model] = presets.retention(row, unguided, paper)
    lines += [f"| {name} | " + " | ".join(f"{cells[m]:.0%}" if m in cells else "–" for m in args.models) + " |"
              for name, cells in location.items()]
    with open(path("search.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def chosen(kind: str) -> dict:
    """The particle levers of the best within-budget search setting of a kind ("alone" or "with gradient"): {} for
    best-of-N, else FK steering's."""
    for c in ranking(frontier.MODELS):
        alone = not c["name"].startswith("fast preset")
        if c["within"] and alone == (kind == "alone") and "box reward" not in c["name"]:
            if "FK " not in c["name"]:
                return {}
            potential, rest = c["name"].split("FK ")[1].split(", λ ")
            return dict(resample_every=RESAMPLE_EVERY, potential=potential, temperature=float(rest.split(",")[0]))
    raise SystemExit("run the search on both models first")


def compare_rows() -> list[tuple[frontier.Setting, tuple[str, ...]]]:
    """(setting, the tasks it runs on): every row on every task, the box reward's on location alone."""
    alone, guided = chosen("alone"), chosen("with gradient")
    n, more = PARTICLES["balanced"], PARTICLES["quality"]
    every = [particles_alone(PARTICLES["fast"], steps=10), particles_alone(n), particles_alone(n, **alone),
             with_gradient(n, **guided)]
    return ([(s, frontier.TASKS) for s in every] + [(s, ("location",)) for s in box_reward_settings()]
            + [(with_gradient(more, **guided), frontier.TASKS)])


REFERENCES = ("unguided", "paper", "balanced preset", "quality preset")


def references_on(rows: list[dict]) -> list[dict]:
    """The frontier's report-half rows of REFERENCES (bench/frontier/results_report.json: the same targets, seeds and
    code), cut to the seeds the particle rows ran on, with their mean and interval recomputed."""
    seeds = {(r["model"], r["task"]): len(r["scores"][0]) for r in rows}
    cut = []
    for r in json.load(open(os.path.join(PACK_DIR, "bench", "frontier", "results_report.json"))):
        if r["setting"] in REFERENCES and (r["model"], r["task"]) in seeds:
            table = frontier.torch.tensor(r["scores"])[:, :seeds[r["model"], r["task"]]]
            cut.append(dict(r, scores=table.tolist(), mean=float(table.mean()),
                            interval=frontier.bootstrap_interval(table), samples=table.numel(), guide_loss=None))
    return cut


def compare(args) -> None:
    from comfy_headless import ComfyHost

    toy = frontier.Toy(ComfyHost(os.environ["COMFYUI_PATH"]))
    features = frontier.evaluation.RealismFeatures(toy.evaluators["classifier"])
    real = frontier.evaluation.real_scenes()
    started = time.time()
    for model in args.models:
        file = path(f"report_{model}.json")
        rows = presets.load(file)
        done = {(r["setting"], r["task"]) for r in rows}
        for setting, tasks in compare_rows():
            for task in tasks:
                if (setting.name, task) not in done:
                    rows.append(frontier.run_row(toy, features, real, model, task, setting, "report", args.targets,
                                                 args.seeds))
                    json.dump(rows, open(file, "w"), indent=1)
                    print(f"{model} {task} {setting.name}: {rows[-1]['mean']:.3f}, {rows[-1]['sd15_cost']:.2f}× "
                          f"({(time.time() - started) / 60:.1f} min)", flush=True)


def row_name_kind(name: str) -> str:
    if name in ("unguided", "paper") or name.endswith(" preset"):
        return "gradient" if name != "unguided" else "unguided"
    return "particles with gradient guidance" if name.startswith("fast preset") else "particles alone"


def report(args) -> None:
    """bench/frontier/particles/report.md and .png from the compare rows: every row's score, the guide's own loss,
    KID and cost, and the issue's two targets checked, with paired intervals."""
    particle_rows = [r for model in frontier.MODELS for r in presets.load(path(f"report_{model}.json"))]
    results = references_on(particle_rows) + particle_rows
    rows = {frontier.row_key(r): r for r in results}
    lines = ["# Particles against gradient guidance, report half", "",
             "Each row: the held-out evaluator's mean score (95% interval over targets and seeds), the guide networks' "
             "own loss on the same images (what particles select on), KID against the real scenes (mean ± "
             "spread, as the frontier gives it) and the counted cost (SD 1.5, unguided 20-step runs). The unguided, paper and preset rows are "
             "bench/frontier/results_report.json's, cut to the particle rows' targets and seeds (their KID is over all "
             "their seeds, and their guide's loss was not recorded).", "",
             "| model | task | setting | kind | score | guide's loss | KID | cost |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        low, high = r["interval"]
        guide = "–" if r["guide_loss"] is None else f"{r['guide_loss']:.4g}"
        lines.append(f"| {r['model']} | {r['task']} | {r['setting']} | {row_name_kind(r['setting'])} | {r['mean']:.3f} "
                     f"({low:.3f}–{high:.3f}) | {guide} | {r['kid']:.0f} ± {r['kid_spread']:.0f} | "
                     f"{r['sd15_cost']:.2f}× |")
    lines += ["", "Targets:", ""]
    for model in dict.fromkeys(r["model"] for r in results):
        guided = [r for r in results if r["model"] == model and row_name_kind(r["setting"]) == "particles with gradient guidance"]
        for task in ("location", "inpainting"):
            paper = rows.get((model, task, "paper"))
            cheap = [r for r in guided if r["task"] == task and paper and r["sd15_cost"] <= paper["sd15_cost"] / 5 + 1e-9]
            for r in cheap:
                low, high = frontier.paired_interval(r, paper)
                lines.append(f"- {model} {task}: {r['setting']} at {r['sd15_cost']:.2f}× (paper mode {paper['sd15_cost']:.1f}×) "
                             f"scores {r['mean']:.3f} against paper mode's {paper['mean']:.3f}, paired difference "
                             f"{r['mean'] - paper['mean']:+.3f} ({low:+.3f} to {high:+.3f}): "
                             + ("beats it." if r["mean"] > paper["mean"] else "misses."))
        wins = []
        for task in frontier.TASKS:
            best_gradient = rows.get((model, task, "balanced preset"))
            matched = [r for r in guided if r["task"] == task and best_gradient and
                       r["sd15_cost"] <= max(best_gradient["sd15_cost"], rows[(model, task, "paper")]["sd15_cost"] / 5) + 1e-9
                       and "box reward" not in r["setting"]]
            for r in matched:
                low, high = frontier.paired_interval(r, best_gradient)
                lines.append(f"- {model} {task}: {r['setting']} ({r['sd15_cost']:.2f}×) against the balanced preset "
                             f"({best_gradient['sd15_cost']:.2f}×): {r['mean'] - best_gradient['mean']:+.3f} "
                             f"({low:+.3f} to {high:+.3f})" + (", above 0." if low > 0 else "."))
                if low > 0:
                    wins.append(task)
        lines.append(f"- {model}: particles with gradient guidance beat the best gradient-only setting at the balanced "
                     f"budget, the paired interval above 0, on {len(set(wins))} of {len(frontier.TASKS)} tasks "
                     f"({', '.join(sorted(set(wins))) or 'none'}).")
    with open(path("report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    frontier.plot(results, path("particles_report.png"))
    print("\n".join(lines[-40:]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("search", "choose", "compare", "report"))
    parser.add_argument("--models", nargs="+", default=list(frontier.MODELS), choices=frontier.MODELS)
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    {"search": search, "choose": choose, "compare": compare, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
