"""ComfyUI's two workflow formats, read against node definitions in the shape of the server's /object_info.

UI format: what the frontend saves and loads (`nodes`, `links`, positional `widgets_values`).
API format: what `/prompt` runs (`{id: {"class_type", "inputs"}}`).
Turning one into the other needs the node definitions, because `widgets_values` is positional.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes: they have no definition on the server and are left out of the API format.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
CONTROL, UPLOAD = "control_after_generate", "upload"


def declared_inputs(definition: dict) -> list[tuple[str, list]]:
    """(name, spec) of every required and optional input, in the order the frontend lays them out."""
    inputs = definition["input"]
    return [(name, spec) for group in ("required", "optional") for name, spec in inputs.get(group, {}).items()]


def input_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not input_options(spec).get("forceInput")


def combo_choices(spec) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return input_options(spec).get("options")
    return None


def widget_slots(definition: dict) -> list[tuple[str, str | None]]:
    """(input name, pseudo-widget kind or None) for each entry of `widgets_values`, in order.

    The frontend adds a "control after generate" value after every seed, and an upload button after the
    required inputs of a node with an image-upload combo; both are saved in `widgets_values` but are not
    inputs of the node.
    """
    slots, upload = [], None
    for group in ("required", "optional"):
        for name, spec in definition["input"].get(group, {}).items():
            if not is_widget(spec):
                continue
            slots.append((name, None))
            options = input_options(spec)
            if (spec[0] == "INT" and name in SEED_NAMES) or options.get(CONTROL):
                slots.append((name, CONTROL))
            if options.get("image_upload"):
                upload = (name, UPLOAD)
        if group == "required" and upload:
            slots.append(upload)
    return slots


def socket_inputs(definition: dict) -> list[tuple[str, str]]:
    """(name, type) of the inputs that are joined by links, in order."""
    return [(name, spec[0]) for name, spec in declared_inputs(definition) if not is_widget(spec)]


def widget_inputs(node: dict, definition: dict) -> dict:
    """The node's widget values by input name, without the pseudo-widgets."""
    return {name: value for (name, pseudo), value in zip(widget_slots(definition), node["widgets_values"])
            if pseudo is None}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt of a UI-format workflow (what the frontend's "Export (API)" writes)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) == 4:
            raise ValueError(f"node {node['id']} ({node['type']}) is bypassed; un-bypass it, or export the "
                             "workflow with the frontend's Export (API)")
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == 2:  # muted nodes do not run
            continue
        definition = object_info.get(node["type"])
        if definition is None:
            raise ValueError(f"node {node['id']} is a {node['type']}, a node type this ComfyUI does not have; "
                             "install the custom node pack that provides it")
        inputs = widget_inputs(node, definition)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", definition.get("display_name", node["type"]))}}
    return prompt


def _widget_problem(name: str, pseudo, spec, value, file_inputs: set) -> str | None:
    if pseudo == CONTROL:
        return None if value in CONTROL_VALUES else f"'{name}' control value {value!r} is not one of {sorted(CONTROL_VALUES)}"
    if pseudo == UPLOAD:
        return None
    kind, options = spec[0], input_options(spec)
    choices = combo_choices(spec)
    if choices is not None:
        if name in file_inputs:  # a model or input file: it need not be on this machine
            return None if isinstance(value, str) else f"'{name}' should be a file name, got {value!r}"
        return None if value in choices else f"'{name}' = {value!r} is not one of the choices"
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, expected) or (kind != "BOOLEAN" and isinstance(value, bool)):
        return f"'{name}' should be {kind}, got {value!r}"
    if kind in ("INT", "FLOAT") and not options.get("min", value) <= value <= options.get("max", value):
        return f"'{name}' = {value} is outside [{options.get('min')}, {options.get('max')}]"
    return None


def check_ui(workflow: dict, object_info: dict, file_inputs: dict | None = None) -> list[str]:
    """Everything wrong with a UI-format workflow against the node definitions; [] when it is consistent.

    file_inputs: {node type: {input names that name files}}; such combos may name files this host lacks.
    """
    file_inputs = file_inputs or {}
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        definition = object_info.get(node["type"])
        if definition is None:
            problems.append(f"{where}: no such node type on this ComfyUI")
            continue
        slots = widget_slots(definition)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widget values for {len(slots)} widgets {[s[0] for s in slots]}")
            continue
        specs = dict(declared_inputs(definition))
        for (name, pseudo), value in zip(slots, values):
            problem = _widget_problem(name, pseudo, specs[name], value, file_inputs.get(node["type"], set()))
            if problem:
                problems.append(f"{where}: {problem}")
        sockets = dict(socket_inputs(definition))
        linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        for slot in node.get("inputs", []):
            if slot["name"] not in sockets:
                problems.append(f"{where}: input slot '{slot['name']}' is not a socket of this node type")
            elif slot["type"] != sockets[slot["name"]]:
                problems.append(f"{where}: input '{slot['name']}' has type {slot['type']}, not {sockets[slot['name']]}")
        for name in definition["input"].get("required", {}):
            if name in sockets and name not in linked:
                problems.append(f"{where}: required input '{name}' is not connected")
        outputs = list(definition["output"])
        for index, slot in enumerate(node.get("outputs", [])):
            if index >= len(outputs) or slot["type"] != outputs[index]:
                problems.append(f"{where}: output {index} has type {slot['type']}, not {outputs[index:index + 1]}")
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        where = f"link {link_id}"
        if source not in nodes or target not in nodes:
            problems.append(f"{where}: joins a node that is not in the workflow")
            continue
        output = nodes[source]["outputs"][source_slot]
        target_input = nodes[target]["inputs"][target_slot]
        if link_id not in (output.get("links") or []) or target_input.get("link") != link_id:
            problems.append(f"{where}: the nodes' slots do not record it")
        if not output["type"] == target_input["type"] == kind:
            problems.append(f"{where}: joins {output['type']} to {target_input['type']} as {kind}")
    return problems
