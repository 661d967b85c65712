"""tools/torch_pair.py: the torch and torchvision pair check that tools/setup-env stops on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PAIR = os.path.join(ROOT, "tools", "torch_pair.py")
TORCH = metadata.version("torch")
TORCHVISION = metadata.version("torchvision")


def run_torch_pair(*args, shadow=None, site_packages=True):
    """Run torch_pair.py; `shadow` is a folder put first on the path, to stand in for a torchvision."""
    env = dict(os.environ)
    if shadow:
        env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    python = [sys.executable] if site_packages else [sys.executable, "-S"]
    return subprocess.run([*python, TORCH_PAIR, *args], capture_output=True, text=True, env=env, timeout=300)


def fake_torchvision(folder, version, torch_requirement, body):
    """A torchvision distribution that shadows the real one: its metadata and a package running `body`."""
    dist_info = folder / f"torchvision-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchvision\nVersion: {version}\n"
                                        f"Requires-Dist: numpy\nRequires-Dist: {torch_requirement}\n")
    package = folder / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(body)
    return folder


def test_the_installed_pair_passes():
    result = run_torch_pair("check")
    assert result.returncode == 0, result.stderr


def test_a_missing_torch_or_torchvision_is_named(tmp_path):
    result = run_torch_pair("check", site_packages=False)
    assert result.returncode == 1
    assert f"torch and torchvision are not installed in {sys.executable}" in result.stderr
    dist_info = tmp_path / "torch-9.9.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 9.9\n")
    result = run_torch_pair("check", shadow=tmp_path, site_packages=False)
    assert result.returncode == 1
    assert f"torchvision is not installed in {sys.executable} (found torch 9.9)" in result.stderr


def test_a_torchvision_of_another_build_of_the_same_torch_fails_naming_both_versions_and_the_error(tmp_path):
    # PyPI's torchvision beside a local +cpu torch: the version pin agrees, the import does not.
    shadow = fake_torchvision(tmp_path, "0.28.0", f"torch (=={TORCH.split('+')[0]})",
                              'raise RuntimeError("operator torchvision::nms does not exist")\n')
    result = run_torch_pair("check", shadow=shadow)
    assert result.returncode == 1
    assert f"torch {TORCH} and torchvision 0.28.0 are not a pair (torchvision 0.28.0 asks for " \
        f"torch=={TORCH.split('+')[0]}, of the build it was made with): RuntimeError: operator torchvision::nms " \
        "does not exist" in result.stderr


def test_a_torchvision_asking_for_a_torch_range_is_still_imported_and_run(tmp_path):
    shadow = fake_torchvision(tmp_path, "0.29.1", "torch (>=0.1)", 'raise ImportError("undefined symbol")\n')
    result = run_torch_pair("check", shadow=shadow)
    assert result.returncode == 1
    assert "torchvision 0.29.1 asks for torch>=0.1, of the build it was made with): ImportError: undefined symbol" \
        in result.stderr


def test_a_torchvision_built_for_another_torch_fails_before_importing_it(tmp_path):
    shadow = fake_torchvision(tmp_path, "0.1.0", "torch==1.0.0", 'raise AssertionError("must not be imported")\n')
    result = run_torch_pair("check", shadow=shadow)
    assert result.returncode == 1
    assert f"torch {TORCH} and torchvision 0.1.0 are not a pair: torchvision 0.1.0 is built for torch 1.0.0" \
        in result.stderr
    assert "must not be imported" not in result.stderr


def test_pins_hold_the_installed_pair():
    result = run_torch_pair("pins")
    assert result.returncode == 0
    assert result.stdout.split() == [f"torch=={TORCH}", f"torchvision=={TORCHVISION}"]


def test_sources_say_which_file_came_from_disk_and_which_from_an_index(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"install": [
        {"metadata": {"name": "torch", "version": "2.14.1"},
         "download_info": {"url": "file:///opt/wheels%20here/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl"}},
        {"metadata": {"name": "torchvision", "version": "0.29.1"},
         "download_info": {"url": "https://files.example.org/torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl"}},
    ]}))
    lines = run_torch_pair("sources", str(report)).stdout.splitlines()
    assert lines == ["setup-env: torch 2.14.1 (on disk, /opt/wheels here/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl)",
                     "setup-env: torchvision 0.29.1 (from the index at files.example.org)"]
