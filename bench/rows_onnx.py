"""Deploy without torch: the ONNX export on ONNX Runtime against torch, side by side in one run.

- onnx_caption: one 20-token caption at batch 1 on BLIP-large (random weights; --quick: the medium BLIP), same
  thread count: ORT fp32 and ORT int8 vs torch fp32 generate() (the Captioner with the fast path off), tokens
  checked equal (fp32); the notes split each side into vision encoder and decoder and name ORT's top ops.
- onnx_process: a fresh process that loads the model and captions one image: peak RSS and start-up time
  (imports + load, to ready) of the ONNX path vs the torch path.
- onnx_precision: the tiny base LoRA-trained on seed_blocks (rows_caption's): the 224 validation photos
  captioned by ORT fp32 and int8 vs torch fp32 generate(); exact match of int8 with the fp32 captions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from blip_lora_core.export.onnx_export import export_bundle, export_onnx
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.ort.captioner import OrtCaptioner
from blip_lora_core.ort.folder import DECODER, VISION, WEIGHTS_SUFFIX, read_manifest

from .common import (
    MEDIUM,
    REPO,
    Row,
    interleave,
    large_bundle,
    large_model_dir,
    median,
    seed_block_images,
    small_bundle,
    small_model_dir,
    workdir,
)

NEW_TOKENS = 20


def _exports(bundle, name: str) -> dict[str, Path]:
    """fp32 and int8 exports of a bundle (made once per run)."""
    folders = {}
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        folder = workdir() / f"onnx-{name}-{kind}"
        if not (folder / "manifest.json").is_file():
            export_bundle(bundle, folder, quantize=quantize)
        folders[kind] = folder
    return folders


def caption_rows(quick: bool) -> list[Row]:
    bundle = small_bundle(MEDIUM) if quick else large_bundle()
    label = "medium BLIP" if quick else "BLIP-large (random weights)"
    bundle.model.text_decoder.generation_config.min_new_tokens = NEW_TOKENS  # 20 tokens on every side
    threads = torch.get_num_threads()
    began = time.perf_counter()
    folders = _exports(bundle, "medium" if quick else "large")
    export_seconds = time.perf_counter() - began
    images = seed_block_images(1)
    torch_captioner = Captioner(bundle, max_new_tokens=NEW_TOKENS, batch_size=1, fast=False)
    ort = {kind: OrtCaptioner(folder, max_new_tokens=NEW_TOKENS, batch_size=1, threads=threads)
           for kind, folder in folders.items()}
    pixels = bundle.preprocess.batch(images)
    if not np.array_equal(ort["fp32"].decode(pixels.numpy())[0], torch_captioner.generate_ids(pixels).numpy()):
        raise AssertionError("ORT fp32 tokens differ from torch generate()'s: a bug")
    repeats = 3 if quick else 4
    times = interleave({"torch": lambda: torch_captioner.caption(images),
                        **{kind: (lambda c=c: c.caption(images)) for kind, c in ort.items()}}, repeats)
    split = _where_the_time_goes(bundle, ort, pixels, times)
    base = median(times["torch"])
    rows = []
    int8_same = ort["int8"].caption(images) == ort["fp32"].caption(images)
    for kind, goal in (("fp32", ">= 1.3"), ("int8", ">= 3")):
        same = ("tokens equal to generate()'s" if kind == "fp32" else
                f"caption {'equal to' if int8_same else 'differs from'} fp32's")
        rows.append(Row(f"onnx_caption_{kind}", f"20-token captions/s at batch 1, {label}, {threads} thread(s)",
                        1 / median(times[kind]), 1 / base, "captions/s", goal, repeats,
                        f"{ort[kind].describe()} vs torch fp32 generate() ({base:.2f} s); {same}; {split[kind]}; "
                        f"export of both took {export_seconds:.0f} s"))
    return rows


def _where_the_time_goes(bundle, ort: dict[str, OrtCaptioner], pixels: torch.Tensor, times: dict) -> dict[str, str]:
    """Per side: the vision encoder's share of a caption, and ORT's three costliest op types (profiled run)."""
    with torch.inference_mode():
        torch_vision = median(interleave({"v": lambda: bundle.model.vision_model(pixel_values=pixels)}, 3)["v"])
    notes = {}
    feed = {"pixel_values": pixels.numpy()}
    for kind, captioner in ort.items():
        vision = median(interleave({"v": lambda c=captioner: c._vision.run(None, feed)}, 3)["v"])
        total = median(times[kind])
        notes[kind] = (f"vision encoder {vision:.2f} s of {total:.2f} s (torch: {torch_vision:.2f} s of "
                       f"{median(times['torch']):.2f} s); top ops: {_top_ops(captioner, pixels.numpy())}")
    return notes


def _top_ops(captioner: OrtCaptioner, pixels: np.ndarray) -> str:
    """Profile one caption's graphs with onnxruntime's profiler: the share of node time per op type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = torch.get_num_threads()
    options.profile_file_prefix = str(workdir() / f"profile-{captioner.manifest.quantize or 'fp32'}")
    durations: Counter[str] = Counter()
    for name in (VISION, DECODER):
        session = ort.InferenceSession(str(captioner.folder / name), options, providers=["CPUExecutionProvider"])
        saved = {VISION: "_vision", DECODER: "_decoder"}[name]
        original = getattr(captioner, saved)
        setattr(captioner, saved, session)
        try:
            captioner.decode(pixels)
        finally:
            setattr(captioner, saved, original)
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
                durations[event["args"]["op_name"]] += event["dur"]
    total = sum(durations.values()) or 1
    return ", ".join(f"{op} {100 * d / total:.0f} %" for op, d in durations.most_common(3))


# ---------------------------------------------------------------- a fresh process: RSS and start-up

_CHILD = """
import json, sys, time
began = time.perf_counter()
kind, folder = sys.argv[1], sys.argv[2]
if kind == "torch":
    import torch
    torch.set_num_threads(1)
    from blip_lora_core.models.captioning import Captioner
    captioner = Captioner.from_pretrained(folder, device="cpu", max_new_tokens=20, batch_size=1)
else:
    from blip_lora_core.ort.captioner import OrtCaptioner
    captioner = OrtCaptioner(folder, max_new_tokens=20, batch_size=1, threads=1)
ready = time.perf_counter()
import numpy as np
captioner.caption([np.zeros((480, 640, 3), np.uint8)])
first = time.perf_counter() - ready
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over fork)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"startup": ready - began, "first_caption": first, "rss_mib": peak / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def _child(kind: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(folder)], capture_output=True, text=True,
                          check=True, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def process_rows(quick: bool) -> list[Row]:
    if quick:
        model_dir, bundle = small_model_dir(MEDIUM), small_bundle(MEDIUM)
        label = "medium BLIP"
    else:
        model_dir, bundle = large_model_dir(), large_bundle()  # the same random weights (seed 0)
        label = "BLIP-large (random weights)"
    folders = _exports(bundle, "medium" if quick else "large")
    del bundle
    repeats = 1 if quick else 2
    runs: dict[str, list[dict]] = {"torch": [], "fp32": [], "int8": []}
    for _ in range(repeats):  # alternated, each in a fresh process
        for kind in runs:
            runs[kind].append(_child(kind, model_dir if kind == "torch" else folders[kind]))
    if any(run["torch_imported"] for kind in ("fp32", "int8") for run in runs[kind]):
        raise AssertionError("the ONNX path imported torch")
    rows = []
    for kind in ("fp32", "int8"):
        weights = sum(f["bytes"] for name, f in read_manifest(folders[kind]).files.items()
                      if name.endswith(WEIGHTS_SUFFIX)) / 2**20
        for measure, unit, what in (("rss_mib", "MiB", "peak RSS"), ("startup", "s", "start-up (imports + load)")):
            ours, theirs = median([r[measure] for r in runs[kind]]), median([r[measure] for r in runs["torch"]])
            first = median([r["first_caption"] for r in runs[kind]])
            rows.append(Row(f"onnx_process_{measure.split('_')[0]}_{kind}", f"{what} of a process captioning one "
                            f"image, {label}, ONNX {kind} vs torch fp32", ours, theirs, unit, "<= 0.5", repeats,
                            f"fresh processes, 1 thread; weights {weights:,.0f} MiB; first caption {first:.2f} s "
                            f"vs torch {median([r['first_caption'] for r in runs['torch']]):.2f} s; the ONNX process "
                            "imports no torch"))
    return rows


# ---------------------------------------------------------------- seed_blocks: int8 vs fp32 captions

def precision_rows(quick: bool) -> list[Row]:
    from blip_lora_core.models.images import load_image

    from .rows_caption import seed_blocks_model

    base, adapter, val = seed_blocks_model(quick)
    folders = {}
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        folders[kind] = workdir() / f"onnx-seed-blocks-{kind}"
        export_onnx(base, folders[kind], adapter=adapter, quantize=quantize, force=True)
    images = [load_image(s.image) for s in val]
    settings = dict(max_new_tokens=12, batch_size=32)
    torch_captioner = Captioner.from_pretrained(base, adapter=adapter, device="cpu", fast=False, **settings)
    ort = {kind: OrtCaptioner(folder, threads=torch.get_num_threads(), **settings) for kind, folder in folders.items()}
    captions = {"torch": torch_captioner.caption(images), **{k: c.caption(images) for k, c in ort.items()}}
    repeats = 1 if quick else 3
    times = interleave({"torch": lambda: torch_captioner.caption(images),
                        **{k: (lambda c=c: c.caption(images)) for k, c in ort.items()}}, repeats, warmup=0)

    def match(a: str, b: str) -> float:
        return sum(x == y for x, y in zip(captions[a], captions[b], strict=True)) / len(images)

    rate = {name: len(images) / median(t) for name, t in times.items()}
    notes = (f"{len(images)} seed_blocks validation photos, tiny base + adapter, batch 32, up to 12 tokens; "
             f"exact match with torch generate(): ORT fp32 {match('fp32', 'torch'):.3f}, ORT int8 "
             f"{match('int8', 'torch'):.3f}; captions/s ORT fp32 {rate['fp32']:.1f}, ORT int8 {rate['int8']:.1f}, "
             f"torch generate() {rate['torch']:.1f}")
    return [Row("onnx_precision_int8", "exact match of ORT int8 captions with ORT fp32 captions, seed_blocks "
                "validation", match("int8", "fp32"), 1.0, "fraction", ">= 0.99", repeats, notes)]


ROWS = {"onnx_caption": caption_rows, "onnx_process": process_rows, "onnx_precision": precision_rows}
