"""What a guided run shows while it runs: passes on the progress bar, each term's loss, the pre-run cost line and
the loss plot; in the engine alone and through ComfyUI's executor."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import graphs
from gaussian import GaussianDenoiser, eps_noise_scaling, sigmas_eps
from samplers import cost
from samplers.pass_counts import PassCounts
from samplers.progress import LossHistory, term_labels
from samplers.settings import Settings
from samplers.terms import GuidanceTerm
from samplers.universal_guidance import sample_universal_guidance


class TargetLoss:
    """ℓ = per-sample squared distance of the 'image' to 0.9; `readings` holds each call's batch mean."""

    def __init__(self):
        self.readings = []

    def check(self, batch, height, width):
        pass

    def bind(self, device):
        def loss(image):
            value = ((image - 0.9) ** 2).flatten(1).sum(1)
            self.readings.append(float(value.detach().mean()))
            return value

        return loss


def quadratic_term(**settings):
    return GuidanceTerm(name="target guidance", loss=TargetLoss(), **settings)


def _run(terms, steps=6, recurrence=3, **levers):
    denoiser = GaussianDenoiser(eps_noise_scaling)
    sigmas = sigmas_eps(steps)
    reports, counts = [], PassCounts()
    model, guidance, decode, _ = counts.wrapped(denoiser, terms, torch.sigmoid)
    with counts.counting_optimizer_steps():
        x = sample_universal_guidance(model, sigmas[0] * torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)),
                                      sigmas, guidance=guidance, decode=decode, noise_scaling=eps_noise_scaling,
                                      settings=Settings(recurrence=recurrence, **levers), on_pass=reports.append,
                                      disable=True)
    return x, reports, counts, sigmas


def test_every_pass_is_reported_with_the_progress_in_passes():
    terms = (quadratic_term(weight=1.0, end_percent=0.5),)
    _, reports, _, _ = _run(terms, steps=6, recurrence=3)
    passes = [r.passes for r in reports if r.pass_index == 0]
    assert passes == [3, 3, 3, 1, 1, 1]
    assert [r.done for r in reports] == list(range(1, 13)) and {r.total for r in reports} == {12}
    assert [r.step for r in reports if r.last_of_step] == list(range(6))


def test_each_terms_loss_is_its_first_reading_in_the_pass_and_it_falls_under_guidance():
    term = quadratic_term(weight=0.0, backward_steps=4, backward_lr=0.2)
    twin = quadratic_term(weight=0.0, backward_steps=4, backward_lr=0.2)  # same name: labelled apart
    _, reports, _, _ = _run((term, twin), steps=5, recurrence=2)
    labels = term_labels((term, twin))
    assert labels == [term.name, f"{term.name} (2)"]
    first = reports[0].losses
    assert list(first) == labels
    assert first[labels[0]] == pytest.approx(term.loss.readings[0])
    assert reports[1].losses[labels[1]] == pytest.approx(twin.loss.readings[4])  # pass 2 reads afresh
    per_step = [r.losses[labels[0]] for r in reports if r.last_of_step]
    assert per_step[-1] < 0.5 * per_step[0], per_step
    assert labels[0] in reports[-1].text() and "step 5/5, pass 2/2" in reports[-1].text()


def test_the_loss_history_holds_each_step_inside_the_terms_window_only():
    term = quadratic_term(weight=1.0, start_percent=0.25, end_percent=0.75)
    history = LossHistory()
    history.start((term,), 8)
    _, reports, _, _ = _run((term,), steps=8, recurrence=2)
    for report in reports:
        history.record(report)
    values = history.values[term.name]
    assert [math.isfinite(v) for v in values] == [False, False, True, True, True, True, False, False]
    assert history.windows[term.name] == (2.0, 6.0)


@pytest.mark.parametrize("levers", [
    dict(),
    dict(guidance_every=2, backward_end=0.8, backward_recurrence=2),
    dict(method="mpgd"),
    dict(method="tfg", smoothing=0.1),
    dict(gradient="x0_only", guidance_end=0.5),
])
def test_the_counted_plan_is_what_the_run_computes(levers):
    terms = (quadratic_term(weight=1.0, backward_steps=2, backward_lr=0.1), quadratic_term(weight=0.5, end_percent=0.5))
    _, _, counts, sigmas = _run(terms, steps=6, recurrence=3, **levers)
    plan = cost.counted_passes(6, [cost.term_settings(t) for t in terms], Settings(recurrence=3, **levers),
                               sigmas=sigmas, noise_scaling=eps_noise_scaling)
    samples = 2
    assert plan.forward["denoiser"] == counts.forward["denoiser"] / samples
    assert plan.backward["denoiser"] == counts.backward["denoiser"] / samples
    assert plan.backward_guidance_steps == counts.backward_guidance_steps / samples > 0
    text = cost.plan_summary(plan, 6, "vae")
    assert f"{plan.forward['denoiser']:g} denoiser passes" in text and "× an unguided run of 6 steps" in text


def _saved(comfy, result, node):
    files = result.outputs[node]["images"]
    return [np.asarray(Image.open(os.path.join(comfy.output_dir, f["subfolder"], f["filename"]))) for f in files]


def test_the_guided_ksampler_shows_passes_losses_cost_and_a_loss_plot(comfy, caplog, monkeypatch):
    utils = sys.modules["comfy.utils"]
    progress = []
    monkeypatch.setattr(utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, *rest, **kw: progress.append((value, total)))
    graph = graphs.base_graph(batch=1)
    guidance = graphs.clip_guidance(graph, weight=0.05, backward_steps=2, end_percent=0.5)
    graphs.guided_sampler(graph, "7", guidance, steps=4, recurrence=3)
    graphs.save(graph, "8", ["7", 0], "live")
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 1], "filename_prefix": "loss_plot"}}
    with caplog.at_level("INFO"):
        result = comfy.run(graph)
    assert result.success, result.errors
    messages = [r.getMessage() for r in caplog.records]
    plan = next(m for m in messages if "denoiser passes" in m)
    assert "4 steps, 8 denoiser passes (6 with a backward pass)" in plan and "12 backward-guidance steps" in plan
    steps = [m for m in messages if m.startswith("Universal guidance: step ")]
    assert len(steps) == 2 and "CLIP" in steps[0], steps  # the log line per guided step where no server shows text
    values = [v for v, total in progress if total == 4]
    assert len(values) >= 8 and values == sorted(values) and values[-1] == 4  # every pass moves the bar
    assert any(v != int(v) for v in values)
    (plot,) = _saved(comfy, result, "9")
    assert plot.shape == (360, 640, 3) and plot.std() > 5


def test_progress_text_goes_to_the_executing_node_where_the_host_shows_it(comfy, monkeypatch):
    live = comfy.pack_module("nodes.live_progress")
    progress = comfy.pack_module("samplers.progress")
    sent = []

    class Server:
        def send_progress_text(self, text, node):
            sent.append((text, node))

    monkeypatch.setattr(live, "_executing_node_and_server", lambda: ("12", Server()))
    monitor = live.LiveProgress()
    x = torch.zeros(1)
    monitor(progress.PassReport(0, 4, 0, 2, 1, 8, {"CLIP guidance": 0.25}, x, x))
    monitor(progress.PassReport(0, 4, 1, 2, 2, 8, {}, x, x))
    assert sent == [("step 1/4, pass 1/2: CLIP guidance 0.25", "12")]
