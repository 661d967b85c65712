"""The torch and torchvision pair of the cached environment (tools/setup-env).

  torch_pair.py check           exit 1, naming both versions, unless torch and torchvision work together
  torch_pair.py pins            print pip constraints that keep the installed pair as it is
  torch_pair.py sources REPORT  say where pip took the pair from, read from `pip install --report REPORT`

A torchvision wheel is built against one torch build. Its metadata asks for `torch==X` (lately `torch>=X`),
and beside another build of the same X (a local `+cpu` one) it fails to import ("operator torchvision::nms
does not exist"). So the check imports both and runs a torchvision operator, beyond comparing versions.
"""
from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from urllib.parse import unquote, urlparse


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_requirement() -> str | None:
    """What this torchvision asks of torch, e.g. `==2.13.0` or `>=2.14.0` (metadata writes `torch (==2.13.0)`)."""
    for requirement in metadata.requires("torchvision") or []:
        match = re.fullmatch(r"torch\s*\(?\s*([<>=!~][^;()]*?)\s*\)?\s*(;.*)?", requirement)
        if match:
            return re.sub(r"\s+", "", match.group(1))
    return None


def pair_problem() -> str | None:
    """Why torch and torchvision don't work together here, or None when they do."""
    versions = {name: _installed(name) for name in ("torch", "torchvision")}
    torch_version, torchvision_version = versions.values()
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        found = "".join(f" (found {name} {version})" for name, version in versions.items() if version)
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in {sys.executable}{found}"
    pair = f"torch {torch_version} and torchvision {torchvision_version}"
    wanted = _torch_requirement()
    exact = wanted[2:] if wanted and re.fullmatch(r"==[^,*]+", wanted) else None
    # `==X` admits any local build of X (`X+cpu`); `==X+cu130` admits only that one.
    if exact is not None and exact != (torch_version if "+" in exact else torch_version.split("+")[0]):
        return f"{pair} are not a pair: torchvision {torchvision_version} is built for torch {exact}"
    try:
        import torch
        import torchvision

        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception as error:  # an ABI mismatch surfaces as RuntimeError, ImportError or OSError
        asks = f" (torchvision {torchvision_version} asks for torch{wanted}, of the build it was made with)" if wanted else ""
        return f"{pair} are not a pair{asks}: {type(error).__name__}: {error}"
    return None


def check() -> int:
    problem = pair_problem()
    if problem:
        print(f"setup-env: {problem}", file=sys.stderr)
        return 1
    return 0


def pins() -> int:
    for name in ("torch", "torchvision"):
        print(f"{name}=={metadata.version(name)}")
    return 0


def sources(report_path: str) -> int:
    with open(report_path, encoding="utf-8") as report:
        installed = {item["metadata"]["name"].lower(): item for item in json.load(report)["install"]}
    for name in ("torch", "torchvision"):
        item = installed.get(name)
        if item is None:
            print(f"setup-env: {name} {metadata.version(name)} was already installed")
            continue
        url = urlparse(item["download_info"]["url"])
        where = f"on disk, {unquote(url.path)}" if url.scheme == "file" else f"from the index at {url.netloc}"
        print(f"setup-env: {name} {item['metadata']['version']} ({where})")
    return 0


if __name__ == "__main__":
    command, *arguments = sys.argv[1:] or ["check"]
    sys.exit({"check": check, "pins": pins, "sources": sources}[command](*arguments))
