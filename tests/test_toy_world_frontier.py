"""A tiny smoke run of the quality-against-cost benchmark's harness (bench/toy_world_frontier.py) in a real
ComfyUI; it times nothing. Batching targets must give each sample what a run of its own gives."""
from __future__ import annotations

import pytest
import torch

from bench import toy_world_frontier as frontier
from toy_world import splits, targets

TINY = frontier.Setting("tiny", frontier.Settings(recurrence=2), steps=3, backward_steps=1)


def with_levers(setting, **levers):
    return frontier.dataclasses.replace(setting, levers=setting.levers.replace(**levers))


def spelled_out(setting) -> dict:
    """A row's fields with its settings' levers among them."""
    fields = {f.name: getattr(setting, f.name) for f in frontier.dataclasses.fields(setting) if f.name != "levers"}
    return {**fields, **{f.name: getattr(setting.levers, f.name) for f in frontier.dataclasses.fields(setting.levers)}}


@pytest.fixture(scope="module")
def toy(comfy):
    return frontier.Toy(comfy)


@pytest.mark.parametrize("task", ["classification", "location", "segmentation", "inpainting"])
def test_a_batch_of_targets_guides_each_sample_as_a_run_of_its_own(toy, task):
    """Without recurrence, whose re-noising is drawn for the whole batch, the run is deterministic given its noise."""
    task_targets = targets.targets(task, "tuning")[:2]
    seed = splits.sampling_seeds("tuning", 1)[0]
    once = with_levers(TINY, recurrence=1)
    batched = toy.sample("eps", task, task_targets, once, seed)
    alone = toy.sample("eps", task, task_targets[:1], once, seed)
    unguided = toy.sample("eps", task, task_targets[:1], frontier.Setting("plain", steps=3, guided=False), seed)
    moved_by_guidance = (alone - unguided).abs().mean()
    assert moved_by_guidance > 1e-3
    # Not bitwise: the batch changes the CPU kernels' rounding, and the detector's proposal ranking can turn on
    # it (about 1% of guidance's movement on some CPUs); a sample guided to the wrong target moves by all of it.
    assert (batched[:1] - alone).abs().mean() < 0.05 * moved_by_guidance


def test_a_row_under_bf16_autocast_runs_its_guided_passes_in_bf16_and_lands_near_full_precision(toy):
    task_targets = targets.targets("segmentation", "tuning")[:2]
    seed = splits.sampling_seeds("tuning", 1)[0]
    once = with_levers(TINY, recurrence=1)
    full = toy.sample("eps", "segmentation", task_targets, once, seed)
    bf16 = toy.sample("eps", "segmentation", task_targets, with_levers(once, autocast="bf16"), seed)
    unguided = toy.sample("eps", "segmentation", task_targets, frontier.Setting("plain", steps=3, guided=False), seed)
    moved_by_guidance, moved_by_bf16 = (full - unguided).abs().mean(), (full - bf16).abs().mean()
    # bf16's rounding compounds over the steps (about a quarter of guidance's movement here, at 3 steps); whether
    # it changes the scores is what the benchmark's paired rows measure, and a broken autocast lands far off
    assert 0 < moved_by_bf16 < 0.5 * moved_by_guidance, (moved_by_bf16, moved_by_guidance)


def test_a_row_reports_a_score_with_its_interval_realism_and_counted_cost(toy):
    features = frontier.evaluation.RealismFeatures(toy.evaluators["classifier"])
    real = frontier.evaluation.real_scenes(splits.REALISM_SEEDS[:16])
    row = frontier.run_row(toy, features, real, "eps", "combination", TINY, "tuning", 2, 2)
    plain = frontier.run_row(toy, features, real, "eps", "combination", frontier.Setting("plain", steps=3, guided=False),
                             "tuning", 2, 2)
    assert row["samples"] == 4 and 0 <= row["interval"][0] <= row["mean"] <= row["interval"][1] <= 1
    assert row["passes"]["forward"]["denoiser"] == 3 * 2  # 3 steps, k = 2, per sample
    assert row["passes"]["backward"]["guidance_network"] == 2 * 3 * 2 * (1 + 1)  # two terms, forward + 1 backward step
    assert row["sd15_cost"] > plain["sd15_cost"] > 0 and row["denoising_error"] > 0
    assert "| eps | combination | tiny |" in frontier.markdown([row])


def test_the_sweep_changes_one_lever_of_paper_mode_at_a_time():
    paper = spelled_out(frontier.PAPER)
    for setting in frontier.lever_sweep():
        changed = {name for name, value in spelled_out(setting).items() if value != paper[name]} - {"name"}
        assert len(changed) == 1, (setting, changed)


def test_the_rows_cover_every_task_and_model_and_the_filters_pick_among_them():
    rows = frontier.rows_to_run(False, frontier.MODELS)
    everywhere = ("unguided", "paper", "balanced preset", "fast preset", "quality preset")
    for name in everywhere:
        assert {(m, t) for m, t, s in rows if s.name == name} == {(m, t) for m in frontier.MODELS for t in frontier.TASKS}
    for setting in frontier.KNOWN_PIXELS:  # the known pixels' lever, on inpainting alone
        assert {(m, t) for m, t, s in rows if s.name == setting.name} == {(m, "inpainting") for m in frontier.MODELS}
    picked = frontier.rows_to_run(False, ["eps"], ["segmentation"])
    assert {(m, t) for m, t, _ in picked} == {("eps", "segmentation")}
    # less m = 0, which is segmentation's paper mode
    assert len(picked) == len(everywhere) + len(frontier.lever_sweep()) - 1 + len(frontier.combinations())
    main, sweep = (frontier.rows_to_run(False, frontier.MODELS, group=group) for group in ("main", "sweep"))
    assert main + sweep == rows
    assert {s.name for _, _, s in main} == set(everywhere) | {s.name for s in frontier.KNOWN_PIXELS}
    costs = [frontier.expected_cost("segmentation", s) for m, t, s in sweep if (m, t) == ("eps", "segmentation")]
    assert costs == sorted(costs) and costs[0] < 10 < 100 < costs[-1]  # cheapest first: fast with the VAE to m = 5


def test_the_paper_preset_is_the_benchmarks_paper_mode_and_preset_rows_spell_out_their_levers():
    levers = ("steps", "recurrence", "gradient", "decode_resolution", "cheap_decoder", "guidance_every",
              "guidance_end", "backward_end", "backward_recurrence", "weight_scale")
    paper = spelled_out(frontier.preset_setting("paper"))
    assert [paper[f] for f in levers] == [spelled_out(frontier.PAPER)[f] for f in levers]
    fast = spelled_out(frontier.preset_setting("fast"))
    preset = frontier.PRESETS["fast"]
    assert (fast["preset"], fast["steps"], fast["recurrence"], fast["cheap_decoder"]) == \
        ("fast", preset.steps, preset.levers["recurrence"], preset.cheap_decoder)
    assert {k: fast[k] for k in preset.levers} == preset.levers


def test_the_pareto_front_keeps_only_points_that_nothing_beats_on_both_cost_and_score():
    points = [(1.0, 0.2), (60.0, 0.5), (12.0, 0.5), (30.0, 0.4), (5.0, 0.1), (12.0, 0.3)]
    assert frontier.pareto_front(points) == [(1.0, 0.2), (12.0, 0.5)]


def test_the_plot_has_a_panel_per_task(tmp_path):
    rows = [dict(model=model, task=task, setting=setting, mean=score, interval=(score - 0.05, score + 0.05),
                 sd15_cost=cost) for model in frontier.MODELS for task in ("segmentation", "inpainting")
            for setting, score, cost in (("unguided", 0.2, 1.0), ("paper", 0.5, 60.7), ("k = 2", 0.45, 12.2))]
    path = tmp_path / "frontier.png"
    frontier.plot(rows, str(path))
    from PIL import Image

    width, height = Image.open(path).size
    assert width == 2 * 450 and height == 400  # two panels of 4.5 × 4 inches at 100 dpi


def test_the_preset_checks_hold_each_preset_to_its_targets():
    def row(setting, mean, cost, kid=100.0):
        return dict(model="eps", task="segmentation", setting=setting, mean=mean, sd15_cost=cost, kid=kid, kid_spread=50.0)

    results = [row("unguided", 0.2, 1.0), row("paper", 0.6, 60.0), row("fast preset", 0.57, 1.4, kid=140.0),
               row("balanced preset", 0.59, 10.0, kid=200.0)]
    fast, balanced = frontier.preset_checks(results)
    assert "fast: keeps 92% of paper mode's gain at 1.40× unguided" in fast and fast.endswith("meets its targets")
    assert balanced.endswith("misses on score, KID")  # below paper mode's score, KID beyond its spread


def test_the_claims_read_the_papers_questions_off_the_rows():
    def row(task, setting, mean, cost=1.0):
        return dict(model="eps", task=task, setting=setting, mean=mean, interval=(mean - 0.1, mean + 0.1), sd15_cost=cost)

    results = [row("location", "unguided", 0.1), row("location", "paper", 0.3, 160.0), row("location", "m = 0", 0.2, 60.0),
               row("location", "k = 1", 0.05, 15.0), row("location", "k = 2", 0.15, 30.0)]
    beats, backward, recurrence = frontier.claims(results)
    assert beats == "- Guided beats unguided in 3 of 4 rows; not in: eps location k = 1."
    assert backward.startswith("- eps, location: forward + backward (m = 3) 0.300") and backward.endswith("holds.")
    assert recurrence == "- eps, location, recurrence: k = 1: 0.050 at 15.0×, k = 2: 0.150 at 30.0×, k = 10: 0.300 at 160.0×."


def test_jobs_claim_the_rows_costliest_first_and_each_once(tmp_path):
    rows = frontier.rows_to_run(False, ["eps"], ["segmentation"])
    order = frontier.costliest_first(rows)
    assert sorted(order) == list(range(len(rows)))
    costs = [frontier.row_cost(rows[i][1], rows[i][2]) for i in order]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    assert [frontier.claim(str(tmp_path), i) for i in (3, 5, 3)] == [True, True, False]


def test_jobs_run_the_rows_left_in_workers_and_join_them_with_the_resumed_ones(comfy, tmp_path):
    """--quick --jobs 2 --resume with paper mode and k = 2 already done: two workers run unguided and fast."""
    done = [dict(model="eps", task="segmentation", setting=name, mean=0.5, interval=[0.4, 0.6], samples=4,
                 denoising_error=0.1, kid=0.0, kid_spread=1.0, sd15_cost=cost, seconds=1.0, passes={},
                 scores=[[0.4], [0.5], [0.5], [0.6]])  # 4 targets × 1 seed
            for name, cost in (("paper", 60.7), ("k = 2", 12.2))]
    (tmp_path / "results_report.json").write_text(frontier.json.dumps(done))
    results = frontier.main(["--quick", "--jobs", "2", "--resume", "--output", str(tmp_path)])
    assert [r["setting"] for r in results] == ["unguided", "paper", "fast preset", "k = 2"]  # the row list's order
    assert results[1] == done[0] and results[0]["samples"] == 4 and results[2]["sd15_cost"] < 2
    assert frontier.json.loads((tmp_path / "results_report.json").read_text()) == results
    assert not frontier.worker_outputs(str(tmp_path))  # the workers' folders are gone once their rows are joined
