"""What a guided run shows in ComfyUI while it runs: the progress bar moving on every denoiser pass, and each
guidance term's loss as the sampling node's progress text (`PromptServer.send_progress_text`, ComfyUI 0.3.34 and
later) or, on older hosts, as a log line per step."""
from __future__ import annotations

import logging
import sys

from ..samplers.progress import LossHistory, PassReport

log = logging.getLogger(__name__)


def _executing_node_and_server():
    """(the executing node's id, the server that can show it text), or (None, None) outside a server. Only
    modules the host has loaded are read: a headless host has no server to import."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "send_progress_text"):
        return None, None
    execution = sys.modules.get("comfy_execution.utils")
    context = execution.get_executing_context() if hasattr(execution, "get_executing_context") else None
    node = context.node_id if context is not None else getattr(instance, "last_node_id", None)
    return (node, instance) if node is not None else (None, None)


class LiveProgress:
    """The sampler's `on_pass`: ComfyUI's step callback on the passes inside a step (a fractional step, so that
    the bar and the preview move during a k = 10 step), the losses as text, and the history for the loss plot."""

    def __init__(self, callback=None, history: LossHistory | None = None):
        self.callback, self.history = callback, history
        self.node, self.server = _executing_node_and_server()

    def __call__(self, report: PassReport) -> None:
        if self.history is not None:
            self.history.record(report)
        if self.callback is not None and not report.last_of_step:  # the sampler calls it at the step's end
            progress = report.step + (report.pass_index + 1) / report.passes
            self.callback({"x": report.x, "i": progress - 1, "denoised": report.denoised})
        if not report.losses:
            return
        if self.server is not None:
            self.server.send_progress_text(report.text(), self.node)
        elif report.last_of_step:
            log.info("Universal guidance: %s.", report.text())
