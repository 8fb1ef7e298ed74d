"""Corrupt and hostile files: each gives one clear error naming the file, through the API and the CLI.

Adapters, checkpoints, base models, YAML configurations, JSONL datasets and images are damaged
(truncated, bit-flipped, lying headers or metadata, pickles, alias bombs, decompression bombs). The API
must raise a BlipLoraError subclass; the command line must exit 2 with one `error:` line and no traceback.
Last, the package is checked to be safe by default: no remote code, no unpickling.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from faults import (
    REPO,
    MarkerPickle,
    assert_clean_error,
    flip_bit,
    join_safetensors,
    png_header,
    run_cli,
    split_safetensors,
    time_limit,
)
from PIL import Image

from blip_lora_core import (
    AdapterError,
    BlipLoraError,
    ConfigError,
    DataError,
    LoraConfig,
    TrainingError,
    inject_lora,
    load_adapter,
    read_adapter,
    save_adapter,
)
from blip_lora_core.models.images import load_image
from blip_lora_core.models.loading import load_blip
from blip_lora_core.train.checkpoint import latest_checkpoint, load_checkpoint
from blip_lora_core.train.config import load_config
from blip_lora_core.train.data import read_jsonl
from blip_lora_training.cli import main

CONFIG = LoraConfig(r=4, alpha=8)


@pytest.fixture(scope="module")
def adapter_bytes(tiny_model_dir) -> bytes:
    bundle = load_blip(str(tiny_model_dir), device="cpu")
    inject_lora(bundle.model, CONFIG)
    with torch.no_grad():
        for name, param in bundle.model.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(0))
    return save_adapter(bundle.model, Path(str(tiny_model_dir) + "-adapter.safetensors"), config=CONFIG,
                        base_model=str(tiny_model_dir)).read_bytes()


def _with_metadata(data: bytes, **changes: str) -> bytes:
    header, body = split_safetensors(data)
    header["__metadata__"].update(changes)
    return join_safetensors(header, body)


def _reshaped(data: bytes, suffix: str, reshape) -> bytes:
    """Every tensor whose name ends with suffix claims the shape reshape(shape) (as many elements)."""
    header, body = split_safetensors(data)
    for name in [k for k in header if k.endswith(suffix)]:
        header[name]["shape"] = reshape(header[name]["shape"])
    return join_safetensors(header, body)


def _first_layer(data: bytes) -> str:
    return json.loads(split_safetensors(data)[0]["__metadata__"]["layers"])[0]


ADAPTER_CASES = {
    "empty": lambda d: b"",
    "7 bytes": lambda d: d[:7],
    "length only": lambda d: d[:8],
    "half header": lambda d: d[:8 + int.from_bytes(d[:8], "little") // 2],
    "header only": lambda d: d[:8 + int.from_bytes(d[:8], "little")],
    "half body": lambda d: d[:len(d) - (len(d) - 8 - int.from_bytes(d[:8], "little")) // 2],
    "last byte cut": lambda d: d[:-1],
    "length bit flip": lambda d: flip_bit(d, 2, 5),
    "header bit flip": lambda d: flip_bit(d, 8, 1),  # '{' -> 'y'
    "header length 2**62": lambda d: (2 ** 62).to_bytes(8, "little") + d[8:],
    "lora_A claims rank 2": lambda d: _reshaped(d, "lora_A", lambda s: [s[0] // 2, s[1] * 2]),
    "lora_B claims a 1-d shape": lambda d: _reshaped(d, "lora_B", lambda s: [s[0] * s[1]]),
    "metadata says r=8": lambda d: _with_metadata(d, r="8"),
    "metadata names a missing layer": lambda d: _with_metadata(d, layers=json.dumps(["no.such.layer"])),
    "metadata layers not a list": lambda d: _with_metadata(d, layers='{"a": 1}'),
    "metadata alpha inf": lambda d: _with_metadata(d, alpha="inf"),
    "metadata nested 100000 deep": lambda d: _with_metadata(d, extra="[" * 100_000 + "]" * 100_000),
    "not our format": lambda d: _with_metadata(d, format="something-else"),
    "a JSON file": lambda d: b'{"lora_A": [1, 2, 3]}',
    "a PNG": lambda d: png_header(4, 4),
}


@pytest.mark.parametrize("case", sorted(ADAPTER_CASES))
def test_damaged_adapter_is_an_adapter_error_naming_the_file(adapter_bytes, tmp_path, capsys, case):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(ADAPTER_CASES[case](adapter_bytes))
    with pytest.raises(AdapterError, match=re.escape(str(path))):
        read_adapter(path)
    code = main(["export", "--adapter", str(path), "--format", "peft", "--out", str(tmp_path / "peft")])
    assert_clean_error(code, capsys.readouterr().err, str(path))
    assert not (tmp_path / "peft").exists()


@pytest.mark.parametrize("case", ["lora_A of another layer's width", "fingerprint of another model", "other base"])
def test_adapter_that_lies_about_the_model_is_refused_before_touching_it(adapter_bytes, tiny_bundle, tmp_path, case):
    """read_adapter accepts these files; loading them into the model must not."""
    if case == "fingerprint of another model":
        data = _with_metadata(adapter_bytes, fingerprint="0123456789abcdef")
    elif case == "other base":
        header, body = split_safetensors(adapter_bytes)
        probe = header["base_probe"]["data_offsets"]
        body = body[:probe[0]] + bytes(probe[1] - probe[0]) + body[probe[1]:]  # probe of an all-zero base
        data = join_safetensors(header, body)
    else:  # qkv is (192, 64): claim lora_A (4, 64) -> (2, 128) would fail read_adapter; swap layer names instead
        header, body = split_safetensors(adapter_bytes)
        layers = json.loads(header["__metadata__"]["layers"])
        qkv, fc1 = layers[0], next(n for n in layers if n.endswith("fc1"))
        for side in "AB":
            a, b = f"{qkv}.lora_{side}", f"{fc1}.lora_{side}"
            header[a], header[b] = header[b], header[a]
        data = join_safetensors(header, body)
    path = tmp_path / "liar.safetensors"
    path.write_bytes(data)
    before = {k: v.clone() for k, v in tiny_bundle.model.state_dict().items()}
    with pytest.raises(AdapterError, match=re.escape(str(path))):
        load_adapter(tiny_bundle.model, path)
    after = tiny_bundle.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_caption_with_a_damaged_adapter_is_one_line(adapter_bytes, tiny_model_dir, tmp_path, capsys):
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "frame.png")
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(_reshaped(adapter_bytes, "lora_A", lambda s: [s[0] // 2, s[1] * 2]))
    code = main(["caption", str(tmp_path / "frame.png"), "--model", str(tiny_model_dir), "--adapter", str(path)])
    line = assert_clean_error(code, capsys.readouterr().err, str(path))
    assert "do not have rank r=4" in line


@pytest.mark.parametrize("writer, suffix", [("pickle", ".safetensors"), ("pickle", ".bin"), ("torch.save", ".pt")])
def test_a_pickle_passed_as_an_adapter_is_never_unpickled(tmp_path, capsys, writer, suffix):
    marker = tmp_path / "unpickled"
    path = tmp_path / f"adapter{suffix}"
    payload = {"lora_A": MarkerPickle(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(AdapterError, match=re.escape(str(path))):
        read_adapter(path)
    line = assert_clean_error(main(["export", "--adapter", str(path), "--format", "peft", "--out",
                                    str(tmp_path / "o")]), capsys.readouterr().err, str(path))
    assert "it is a pickle or torch.save file; blip-lora never unpickles files" in line
    assert not marker.exists()
    if writer == "pickle":  # the file does work: unpickling it creates the marker
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_pickled_base_model_is_refused_without_running_it(tiny_model_dir, tmp_path, capsys):
    """A model folder whose weights are a malicious pytorch_model.bin: torch's weights-only loader refuses it."""
    folder = tmp_path / "evil_model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": MarkerPickle(marker)}))
    with pytest.raises(BlipLoraError, match="pickle"):
        load_blip(str(folder), device="cpu")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert_clean_error(main(["caption", str(tmp_path / "a.png"), "--model", str(folder)]),
                       capsys.readouterr().err, str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "config is a list"])
def test_a_damaged_base_model_is_a_clear_error(tiny_model_dir, tmp_path, capsys, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(BlipLoraError, match=re.escape(str(folder))):
        load_blip(str(folder), device="cpu")


# -- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpointed_run(tiny_model_dir, tmp_path_factory):
    """A 3-step run with checkpoints at steps 1 and 2 (the last step writes the adapter instead)."""
    from blip_lora_training.synth import write_dataset

    root = tmp_path_factory.mktemp("ckpt")
    data = write_dataset(root / "data", 4, seed=0, size=(64, 64))
    argv = ["--model", str(tiny_model_dir), "--train", str(data), "--batch-size", "2", "--grad-accum", "1",
            "--max-steps", "3", "--lr", "0.01", "--warmup-steps", "1", "--precision", "fp32", "--workers", "0",
            "--no-progress", "--r", "4", "--alpha", "8", "--seed", "1", "--checkpoint-every", "1"]
    out = root / "run"
    assert main(["train", *argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001.safetensors",
                                                                          "step_00000002.safetensors"]
    return out, argv


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    folder = out / "checkpoints"
    return out, folder / "step_00000001.safetensors", folder / "step_00000002.safetensors"


def _checkpoint_meta(data: bytes, change) -> bytes:
    header, body = split_safetensors(data)
    meta = json.loads(header["__metadata__"]["checkpoint"])
    header["__metadata__"]["checkpoint"] = json.dumps(change(meta))
    return join_safetensors(header, body)


CHECKPOINT_CASES = {
    "truncated": lambda d: d[:len(d) // 2],
    "header bit flip": lambda d: flip_bit(d, 8, 1),
    "no checkpoint metadata": lambda d: join_safetensors(
        {k: v for k, v in split_safetensors(d)[0].items() if k != "__metadata__"}, split_safetensors(d)[1]),
    "metadata is a list": lambda d: _checkpoint_meta(d, lambda meta: [meta]),
    "names a missing tensor": lambda d: _checkpoint_meta(d, lambda meta: {**meta, "param_names": ["ghost"]}),
    "no RNG state": lambda d: _checkpoint_meta(d, lambda meta: {k: v for k, v in meta.items() if k != "rng"}),
    "step is text": lambda d: _checkpoint_meta(d, lambda meta: {**meta, "step": "two"}),
    "a pickle": lambda d: pickle.dumps({"step": 2}),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_damaged_newest_checkpoint_is_skipped_with_its_name_and_resume_uses_the_older(
        checkpointed_run, tmp_path, caplog, capsys, case):
    run, argv = checkpointed_run
    out, older, newest = _copy_run(run, tmp_path)
    newest.write_bytes(CHECKPOINT_CASES[case](newest.read_bytes()))
    with pytest.raises(TrainingError, match=re.escape(str(newest))):
        load_checkpoint(newest)
    assert latest_checkpoint(out / "checkpoints").step == 1
    with caplog.at_level("INFO"):
        assert main(["train", *argv, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert f"skipping {newest}: unreadable checkpoint" in caplog.text
    assert f"resumed from {older} (step 1)" in caplog.text


def test_resume_with_every_checkpoint_damaged_stops_instead_of_starting_over(checkpointed_run, tmp_path, capsys):
    run, argv = checkpointed_run
    out, older, newest = _copy_run(run, tmp_path)
    for path in (older, newest):
        path.write_bytes(path.read_bytes()[:100])
    code = main(["train", *argv, "--out", str(out), "--resume"])
    assert_clean_error(code, capsys.readouterr().err, str(out / "checkpoints"), "none of the 2 checkpoint(s)")


def test_resume_with_another_rank_names_the_checkpoint_and_the_shapes(checkpointed_run, tmp_path, capsys):
    run, argv = checkpointed_run
    out, _, newest = _copy_run(run, tmp_path)
    code = main(["train", *argv, "--out", str(out), "--resume", "--r", "8"])
    line = assert_clean_error(code, capsys.readouterr().err, str(newest))
    assert "(4, 64) torch.float32 in the checkpoint but (8, 64) in this run" in line


def test_checkpoint_whose_optimizer_state_does_not_fit_is_a_clear_error(checkpointed_run, tmp_path, capsys):
    run, argv = checkpointed_run
    out, _, newest = _copy_run(run, tmp_path)
    newest.write_bytes(_checkpoint_meta(newest.read_bytes(), lambda meta: {**meta, "param_groups": []}))
    line = assert_clean_error(main(["train", *argv, "--out", str(out), "--resume"]), capsys.readouterr().err,
                              str(newest))
    assert "cannot resume from this checkpoint" in line


# -- YAML configurations -------------------------------------------------------------------------

YAML_CASES = {
    "unknown key": ("lr: 0.1\nbatchsize: 3\n", "unknown setting(s): batchsize (known: attention, augment, batch_size"),
    "wrong type": ("epochs: three\n", "epochs must be an integer, got str 'three'"),
    "float for int": ("lora: {r: 4.5}\n", "lora.r must be an integer, got float 4.5"),
    "flat LoRA key": ("r: 4\n", "LoRA settings ['r'] belong under 'lora:'"),
    "bad lora option": ("lora: {rank: 4}\n", "unknown lora setting(s): rank"),
    "infinite lr": ("lr: .inf\n", "lr must be a finite number, got inf"),
    "not a mapping": ("- a\n- b\n", "must be a mapping"),
    "syntax": ("lr: [0.1\n", "cannot read YAML configuration (expected ',' or ']'"),
    "bad augment option": ("augment: {fly: 1}\n", "unknown augment setting(s): fly"),
    "python object tag": ("!!python/object/apply:pathlib.Path.touch [MARKER]\n",
                          "could not determine a constructor for the tag"),
    "python tag in a value": ("lr: !!python/object/apply:pathlib.Path.touch [MARKER]\n",
                              "could not determine a constructor for the tag"),
    "python name tag": ("model: !!python/name:os.system\n", "could not determine a constructor"),
    "alias bomb": ("lr: [&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=False)) + "]\n",
                   "expands to more than 100000 values"),
    "alias cycle": ("targets: &a [*a]\n", "expands to more than 100000 values"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_yaml_configuration_is_a_config_error_naming_the_file(tmp_path, capsys, case):
    text, message = YAML_CASES[case]
    marker = tmp_path / "constructed"
    path = tmp_path / "train.yaml"
    path.write_text(text.replace("MARKER", str(marker)))
    with time_limit(10):  # an alias bomb must fail fast, not expand
        with pytest.raises(ConfigError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
            load_config(path)
        line = assert_clean_error(main(["train", "--config", str(path)]), capsys.readouterr().err, str(path))
    assert message in line and len(line) < 1000
    assert not marker.exists()


def test_non_utf8_yaml_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_bytes(b"lr: 0.1\nprompt: \"\xff\xfe\"\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*can't decode byte 0xff"):
        load_config(path)
    assert_clean_error(main(["train", "--config", str(path)]), capsys.readouterr().err, str(path))


# -- JSONL datasets ------------------------------------------------------------------------------

JSONL_CASES = {
    "broken JSON": (b'{"image": "a.png", "text": "One red cube"}\n{"image": "a.png", "text": \n', 2, "invalid JSON"),
    "not UTF-8": (b'{"image": "a.png", "text": "One red cube"}\n{"image": "a.png", "text": "\xff\xfe"}\n', 2,
                  "not valid UTF-8 (byte 0xff"),
    "not an object": (b'{"image": "a.png", "text": "One red cube"}\n[1, 2]\n', 2,
                      "line is not a JSON object (got array)"),
    "text missing": (b'{"image": "a.png"}\n', 1, 'missing "text"'),
    "NUL in the image path": (b'{"image": "a\\u0000.png", "text": "x"}\n', 1, '"image" contains a NUL character'),
    "binary garbage": (b"\xff\xd8\xff\xe0" + bytes(range(256)), 1, "not valid UTF-8 (byte 0xff at column 1)"),
}


@pytest.mark.parametrize("case", sorted(JSONL_CASES))
def test_bad_jsonl_is_a_data_error_naming_file_and_line(tiny_model_dir, tmp_path, capsys, case):
    data, line_number, reason = JSONL_CASES[case]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=re.escape(f"{path}:{line_number}: {reason}")):
        read_jsonl(path)
    code = main(["train", "--model", str(tiny_model_dir), "--train", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert_clean_error(code, err, str(path))
    assert f"  {path}:{line_number}: {reason}" in err  # the summary lists each bad line under the error


# -- images --------------------------------------------------------------------------------------

def _png(tmp_path: Path) -> bytes:
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "ok.png")
    return (tmp_path / "ok.png").read_bytes()


def _jpeg(tmp_path: Path) -> bytes:
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "ok.jpg", quality=90)
    return (tmp_path / "ok.jpg").read_bytes()


IMAGE_CASES = {
    "truncated PNG": (".png", lambda t: _png(t)[:60], "cannot decode image"),
    "truncated JPEG": (".jpg", lambda t: _jpeg(t)[:200], "cannot decode image"),
    "zero bytes": (".png", lambda t: b"", "image file is empty (0 bytes)"),
    "PNG header claiming 50000x50000": (".png", lambda t: png_header(50_000, 50_000), "decompression bomb"),
    "PNG header claiming 12000x10000": (".png", lambda t: png_header(12_000, 10_000), "over the limit of"),
    "text named .png": (".png", lambda t: b"this is not an image\n", "not an image file"),
    "JPEG bytes named .png, cut": (".png", lambda t: _jpeg(t)[:100], "cannot decode image"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_is_a_data_error_naming_the_file(tiny_model_dir, tmp_path, capsys, case):
    suffix, make, reason = IMAGE_CASES[case]
    path = tmp_path / f"frame{suffix}"
    path.write_bytes(make(tmp_path))
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + re.escape(reason)):
        load_image(path)
    line = assert_clean_error(main(["caption", str(path), "--model", str(tiny_model_dir)]), capsys.readouterr().err,
                              str(path))
    assert reason in line
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"image": path.name, "text": "One red cube"}) + "\n")
    code = main(["train", "--model", str(tiny_model_dir), "--train", str(jsonl), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert_clean_error(code, err, str(jsonl))
    assert f"{jsonl}:1: bad image: {path}" in err and reason in err


def test_a_real_process_exits_2_with_one_line_and_no_traceback(adapter_bytes, tmp_path):
    """The same checks through `python -m blip_lora_training.cli` in a fresh interpreter."""
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(adapter_bytes[:-1])
    result = run_cli(["export", "--adapter", str(path), "--format", "peft", "--out", str(tmp_path / "peft")])
    assert result.stderr.count("\n") == 1, result.stderr
    assert_clean_error(result.returncode, result.stderr, str(path))


# -- safe by default -----------------------------------------------------------------------------

SOURCES = sorted((REPO / "blip_lora_core").rglob("*.py")) + sorted((REPO / "training").rglob("*.py"))


def test_no_remote_code_and_no_unpickling_in_the_sources():
    assert len(SOURCES) > 20
    forbidden = re.compile(r"trust_remote_code\s*=\s*True|torch\.load\(|pickle\.loads?\(|yaml\.load\(|"
                           r"yaml\.unsafe_load|yaml\.(Unsafe|Full)?Loader\b|weights_only\s*=\s*False|"
                           r"(?<![.\w])(eval|exec)\(")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in SOURCES
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if forbidden.search(line)]
    assert hits == []


def test_load_blip_never_trusts_remote_code_and_pins_the_revision(tiny_model_dir, monkeypatch):
    import transformers

    from blip_lora_core.models import loading as models
    from blip_lora_core.models.preprocess import ImagePreprocessor

    calls = []

    def spy(owner, name):
        real = getattr(owner, name)

        def capture(*args, **kwargs):
            calls.append((f"{getattr(owner, '__name__', owner)}.{name}", kwargs))
            return real(str(tiny_model_dir), **{k: v for k, v in kwargs.items() if k != "revision"})
        monkeypatch.setattr(owner, name, capture)

    spy(models.BlipForConditionalGeneration, "from_pretrained")
    spy(transformers.AutoTokenizer, "from_pretrained")
    spy(ImagePreprocessor, "from_pretrained")
    bundle = load_blip("Salesforce/blip-image-captioning-large", device="cpu", revision="0123abcd")
    assert bundle.revision == "0123abcd"
    assert [name for name, _ in calls] == ["BlipForConditionalGeneration.from_pretrained",
                                           "AutoTokenizer.from_pretrained", "ImagePreprocessor.from_pretrained"]
    assert all(kwargs["revision"] == "0123abcd" for _, kwargs in calls)
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in calls[:2])


# the safetensors reader each module's file loading calls
SAFETENSORS_READERS = {"lora/adapter_io": "safe_open", "train/checkpoint": "safe_open",
                       "lora/peft_interop": "load_file"}


def _called_names(source: str) -> set[str]:
    """Names of the functions a module calls (f(...) and x.f(...))."""
    import ast

    calls = [node.func for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    return {getattr(func, "id", None) or getattr(func, "attr", None) for func in calls}


def test_adapters_and_checkpoints_are_read_with_safetensors_only():
    for module, reader in SAFETENSORS_READERS.items():
        source = (REPO / "blip_lora_core" / f"{module}.py").read_text(encoding="utf-8")
        assert reader in _called_names(source), f"{module} does not call {reader}"
        assert not re.search(r"^\s*(import|from) pickle|pickle\.|torch\.load|weights_only", source, re.M), module
