"""The torch-free parts stay torch-free, checked in fresh interpreters through sys.modules: the package root
(lazy re-exports), the image decoder and the caption pipeline, and the ONNX Runtime caption path (the captioner
and `blip-lora caption --model EXPORT`), which also runs where importing torch or transformers fails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from blip_lora_core.models.captioning import Captioner
from tests.faults import REPO, cli_env

# a finder that makes `import torch` / `import transformers` fail, as on a robot where they are not installed
_BLOCK = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
"""
_REPORT = """
import json, sys
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("MODULES " + json.dumps(heavy))
"""


def _python(code: str) -> tuple[str, list[str]]:
    """Run code in a fresh interpreter; its stdout and the torch/transformers modules it left imported."""
    done = subprocess.run([sys.executable, "-c", code + _REPORT], capture_output=True, text=True, timeout=300,
                          env=cli_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out, _, modules = done.stdout.rpartition("MODULES ")
    return out, json.loads(modules)


@pytest.mark.parametrize("module", ["blip_lora_core", "blip_lora_core.runtime.image_msgs",
                                    "blip_lora_core.runtime.pipeline", "blip_lora_core.runtime.captioners",
                                    "blip_lora_core.ort.captioner", "blip_lora_training.cli"])
def test_importing_a_torch_free_module_imports_no_torch(module):
    _, heavy = _python(f"import {module}")
    assert heavy == []


def test_the_package_root_still_gives_every_name_on_first_use():
    out, heavy = _python("import blip_lora_core as b\nprint(b.ConfigError.__name__, 'LoraConfig' in dir(b))\n"
                         "print(b.LoraConfig().r)")
    assert out.split() == ["ConfigError", "True", "16"] and "torch" in heavy  # LoraConfig's module needs torch
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import blip_lora_core

        blip_lora_core.nothing  # noqa: B018


@pytest.mark.xdist_group("onnx_tiny")  # beside the other users of the exported tiny model
def test_the_onnx_captioner_imports_neither_torch_nor_transformers(trained, onnx_export):
    files = sorted(str(path) for path in trained.base.parent.glob("*.png"))
    out, heavy = _python(f"""
import json
from blip_lora_core.ort.captioner import OrtCaptioner
captioner = OrtCaptioner({str(onnx_export)!r}, max_new_tokens=12, prompt="a picture of")
print(json.dumps(captioner.caption_files({files!r})))
""")
    assert heavy == []
    expected = Captioner.from_pretrained(str(trained.base), adapter=str(trained.adapter), device="cpu",
                                         max_new_tokens=12, prompt="a picture of").caption_files(files)
    assert json.loads(out) == expected


@pytest.mark.xdist_group("onnx_tiny")
def test_blip_lora_caption_runs_an_export_where_torch_cannot_be_imported(trained, onnx_export):
    files = sorted(str(path) for path in trained.base.parent.glob("*.png"))[:3]
    code = _BLOCK + f"""
from blip_lora_training.cli import main
raise SystemExit(main(["caption", *{files!r}, "--model", {str(onnx_export)!r}, "--max-new-tokens", "12"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=cli_env(),
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expected = Captioner.from_pretrained(str(trained.base), adapter=str(trained.adapter), device="cpu",
                                         max_new_tokens=12).caption_files(files)
    assert [row["caption"] for row in rows] == expected and [row["image"] for row in rows] == files
    assert "onnxruntime CPU, cpu, fp32, quantize none" in done.stderr  # the start-up line names the provider


def test_the_torch_path_still_imports_torch_where_it_is_needed():
    """The blocker is real: the torch captioner cannot be imported where torch is absent."""
    done = subprocess.run([sys.executable, "-c", _BLOCK + "import blip_lora_core.models.captioning"],
                          capture_output=True, text=True, timeout=120, env=cli_env(), cwd=REPO)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
