"""Training checkpoints: one safetensors file each, written atomically, loaded with tensors only.

A checkpoint holds the trainable parameters, the optimizer's tensors, and as JSON metadata the
optimizer's param groups, the GradScaler state, the step and the Python, NumPy and torch RNG states.
Nothing is pickled, so a checkpoint can never run code when loaded.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ..atomic import atomic_write_bytes
from ..errors import TrainingError

log = logging.getLogger(__name__)
_NAME = re.compile(r"step_(\d{8})\.safetensors")
_CUDA_RNG = "rng.cuda."  # + the GPU's index: one tensor per GPU


@dataclass
class Checkpoint:
    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict
    scaler: dict
    rng: dict
    path: Path
    extra: dict


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states as JSON-able values and tensors."""
    np_state = np.random.get_state()
    return {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def set_rng_state(state: dict) -> None:
    random.setstate(_tupled(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scaler_state: dict, keep: int = 2, extra: dict | None = None) -> Path:
    """Write folder/step_<step>.safetensors atomically, then delete all but the newest `keep`."""
    tensors = {f"param.{n}": t.detach().to("cpu", copy=True).contiguous() for n, t in params.items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    rng = rng_state()
    tensors["rng.torch"] = rng.pop("torch")
    for i, cuda_state in enumerate(rng.pop("cuda")):
        tensors[f"{_CUDA_RNG}{i}"] = cuda_state
    meta = {"step": step, "param_groups": opt["param_groups"], "scaler": scaler_state, "rng": rng,
            "param_names": list(params), "extra": extra or {}}
    path = atomic_write_bytes(folder / f"step_{step:08d}.safetensors",
                              safetensors_bytes(tensors, metadata={"checkpoint": json.dumps(meta)}))
    for old in sorted(_checkpoints(folder))[:-keep]:
        old[1].unlink(missing_ok=True)
    return path


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint file; TrainingError naming it when it is unreadable or its metadata is not ours."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["checkpoint"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        return _assemble(path, meta, tensors)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else str(error)[:200]
        raise TrainingError(f"{path}: unreadable checkpoint ({reason})") from error


def _assemble(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> Checkpoint:
    """Checkpoint from the metadata and tensors; KeyError / TypeError / ValueError when they do not fit."""
    if not isinstance(meta.get("step"), int) or meta["step"] < 0 or not isinstance(meta["param_names"], list):
        raise ValueError("metadata 'step' or 'param_names' is invalid")
    params = {n: tensors[f"param.{n}"] for n in meta["param_names"]}
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    cuda = sorted((int(k.removeprefix(_CUDA_RNG)), t) for k, t in tensors.items() if k.startswith(_CUDA_RNG))
    rng = dict(meta["rng"], torch=tensors["rng.torch"], cuda=[state for _, state in cuda])  # GPU order
    optimizer = {"state": state, "param_groups": meta["param_groups"]}
    return Checkpoint(meta["step"], params, optimizer, meta["scaler"], rng, path, meta.get("extra", {}))


def checkpoint_paths(folder: Path) -> list[Path]:
    """The checkpoint files in folder, oldest step first."""
    return [path for _, path in sorted(_checkpoints(folder))]


def newest_checkpoint_name(folder: Path) -> str:
    """The newest checkpoint file's path, for messages ("none written yet" when there is none)."""
    paths = checkpoint_paths(folder)
    return str(paths[-1]) if paths else "none written yet"


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest readable checkpoint in folder (an unreadable newer one is skipped with a warning)."""
    for _, path in sorted(_checkpoints(folder), reverse=True):
        try:
            return load_checkpoint(path)
        except TrainingError as error:
            log.warning("skipping %s", error)
    return None
