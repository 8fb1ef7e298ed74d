"""The Label Studio round trip against a real server (label-studio 1.23, SQLite, localhost): order -> push ->
annotate through the API as a labeller does -> pull (live and from a JSON export) -> train on the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from blip_lora_core.lora.adapter_io import save_adapter
from blip_lora_core.lora.hooks import LoraConfig, inject_lora, lora_layers
from blip_lora_core.models.loading import load_blip
from blip_lora_core.train.data import read_jsonl
from blip_lora_training.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("label_studio")]

FRAMES = ["blue_0001", "green_0010", "red_0020", "wood_0030", "blue_on_green_0040", "none_0050"]


def _adapter(model_dir: Path, path: Path) -> Path:
    """A non-zero adapter for the tiny model (its captions differ from the base's)."""
    bundle = load_blip(str(model_dir), device="cpu")
    torch.manual_seed(3)
    config = LoraConfig(r=4, alpha=8)
    inject_lora(bundle.model, config)
    with torch.no_grad():
        for layer in lora_layers(bundle.model).values():
            layer.lora_B.normal_(0.0, 0.05)
    return save_adapter(bundle.model, path, config=config, base_model="tiny")


def _frames(seed_blocks: Path, folder: Path) -> tuple[Path, dict[str, str]]:
    """frames.jsonl as `bag extract` writes it (empty captions, provenance) with one frame listed twice; and
    each frame's true caption, for the labeller."""
    truth = {Path(s.image).stem: s.text for s in read_jsonl(seed_blocks / "annotations.jsonl", check_images=False)[0]}
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, name in enumerate(FRAMES + FRAMES[:1]):
        shutil.copy(seed_blocks / "image_train" / f"{name}.jpg", folder / "images" / f"{name}.jpg")
        rows.append({"image": f"images/{name}.jpg", "text": "", "reviewed": False, "stamp": 100.0 + i,
                     "topic": "/camera/image_raw"})
    jsonl = folder / "frames.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl, {n: truth[n] for n in FRAMES}


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _annotate(server, task: int, text: str, **extra) -> dict:
    result = [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]
    return server.api("POST", f"/api/tasks/{task}/annotations/", {"result": result, **extra})


def test_order_push_annotate_pull_train(label_studio, seed_blocks, tiny_model_dir, tmp_path, capsys):
    server = label_studio
    jsonl, truth = _frames(seed_blocks, tmp_path / "frames")
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter.safetensors")
    ordered = tmp_path / "frames" / "ordered.jsonl"
    code, out, _ = _cli(capsys, "label", "order", jsonl, "--model", tiny_model_dir, "--adapter", adapter,
                        "--max-new-tokens", "6", "--duplicate-threshold", "0", "--out", ordered)
    assert code == 0 and "wrote 7 frames" in out
    rows = [json.loads(line) for line in ordered.read_text().splitlines()]
    confidences = [r["precaption"]["confidence"] for r in rows]
    assert confidences == sorted(confidences) and all(r["text"] for r in rows)

    # push with a personal access token (JWT refresh -> access)
    code, out, _ = _cli(capsys, "label", "push", ordered, "--project", "robot frames", "--url", server.url,
                        "--token", server.personal_token)
    assert code == 0, out
    assert "created project" in out and "6 new tasks (6 with a pre-caption)" in out and "1 repeated" in out
    project = server.api("GET", "/api/projects?title=robot%20frames")["results"][0]
    tasks = sorted(server.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON"
                                     f"&download_all_tasks=true"), key=lambda t: t["id"])
    firsts = list({r["image"]: r for r in rows}.values())  # the repeated frame is pushed once, at its first line
    assert [t["data"]["blip_lora"]["path"] for t in tasks] == [str(ordered.parent / r["image"]) for r in firsts]
    predictions = {p["task"]: p for p in server.api("GET", f"/api/predictions?project={project['id']}")}
    for task, row in zip(tasks, firsts, strict=True):
        prediction = predictions[task["id"]]
        assert prediction["model_version"] == "adapter.safetensors"
        assert prediction["score"] == pytest.approx(row["precaption"]["confidence"], abs=1e-6)
        assert prediction["result"][0]["value"]["text"] == [row["text"]]
        assert server.api("GET", task["data"]["image"]) == (ordered.parent / row["image"]).read_bytes()
    assert server.api("GET", f"/api/projects/{project['id']}/next")["id"] == tasks[0]["id"]  # least confident

    # a labeller: accepts one pre-caption, corrects two, skips one, leaves one; a reviewer corrects twice
    name = {t["id"]: Path(t["data"]["blip_lora"]["path"]).stem for t in tasks}
    t = [task["id"] for task in tasks]
    _annotate(server, t[0], firsts[0]["text"], parent_prediction=predictions[t[0]]["id"])
    _annotate(server, t[1], truth[name[t[1]]])
    _annotate(server, t[2], "", was_cancelled=True)
    _annotate(server, t[3], "a first try")
    _annotate(server, t[3], truth[name[t[3]]])  # the later one wins
    gt = _annotate(server, t[4], truth[name[t[4]]])
    server.api("PATCH", f"/api/annotations/{gt['id']}", {"ground_truth": True})
    _annotate(server, t[4], "a later try")  # later, but the ground truth wins

    code, out, _ = _cli(capsys, "label", "push", ordered, "--project", "robot frames", "--url", server.url,
                        "--token", server.personal_token)
    assert code == 0 and "0 new tasks" in out and "6 frames already there unchanged" in out

    pulled = tmp_path / "labelled" / "reviewed.jsonl"
    code, out, _ = _cli(capsys, "label", "pull", "--project", "robot frames", "--out", pulled, "--url", server.url,
                        "--token", server.personal_token)
    assert code == 0, out
    assert "4 reviewed captions of 6 tasks (1 accepted as pre-captioned, 3 corrected, 0 written" in out
    assert "1 skipped or cancelled, 1 not labelled yet" in out and "2 with disagreeing annotations" in out
    samples, _ = read_jsonl(pulled)
    expected = [(t[0], firsts[0]["text"]), (t[1], truth[name[t[1]]]), (t[3], truth[name[t[3]]]),
                (t[4], truth[name[t[4]]])]
    assert [(s.extras["label_studio"]["task"], s.text) for s in samples] == expected
    assert [s.image.resolve() for s in samples] == [ordered.parent / "images" / f"{name[i]}.jpg" for i, _ in expected]
    assert all(s.extras["reviewed"] is True and s.extras["topic"] == "/camera/image_raw" for s in samples)
    assert [json.loads(line)["image"] for line in pulled.read_text().splitlines()][0].startswith("../frames/")

    export = tmp_path / "export.json"  # what "Export -> JSON" in the browser downloads
    export.write_text(json.dumps(server.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")))
    from_export = tmp_path / "labelled" / "from_export.jsonl"
    code, out, _ = _cli(capsys, "label", "pull", "--from-export", export, "--out", from_export)
    assert code == 0 and from_export.read_text() == pulled.read_text()

    run = tmp_path / "run"
    code, out, _ = _cli(capsys, "train", "--model", tiny_model_dir, "--train", pulled, "--out", run, "--max-steps",
                        "2", "--batch-size", "2", "--grad-accum", "1", "--precision", "fp32", "--workers", "0",
                        "--warmup-steps", "0", "--r", "4", "--alpha", "8", "--no-progress")
    assert code == 0 and next(run.glob("lora_r4_*.safetensors")).is_file()


def test_a_new_model_version_adds_predictions_and_errors_are_one_line(label_studio, seed_blocks, tmp_path,
                                                                        capsys):
    server = label_studio
    jsonl, _ = _frames(seed_blocks, tmp_path / "frames")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for i, row in enumerate(rows):
        row.update(text=f"machine caption {i}", precaption={"model": "base", "adapter": "/runs/a/v1.safetensors",
                                                             "confidence": 0.5})
    v1 = tmp_path / "frames" / "v1.jsonl"
    v1.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _cli(capsys, "label", "push", v1, "--project", "versions", "--url", server.url,
                        "--token", server.legacy_token)  # a legacy token works as well
    assert code == 0 and "6 new tasks" in out
    for row in rows:
        row["precaption"]["adapter"] = "/runs/b/v2.safetensors"
    v2 = tmp_path / "frames" / "v2.jsonl"
    v2.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _cli(capsys, "label", "push", v2, "--project", "versions", "--url", server.url,
                        "--token", server.legacy_token)
    assert code == 0 and "0 new tasks" in out and "6 new predictions" in out
    project = server.api("GET", "/api/projects?title=versions")["results"][0]
    assert project["model_version"] == "v2.safetensors"  # the pre-captions annotators now see
    versions = sorted(p["model_version"] for p in server.api("GET", f"/api/predictions?project={project['id']}"))
    assert versions == ["v1.safetensors"] * 6 + ["v2.safetensors"] * 6

    code, _, err = _cli(capsys, "label", "push", v1, "--project", "versions", "--url", server.url,
                        "--token", "0" * 40)
    assert code == 2 and len(err.splitlines()) == 1 and "refused the token" in err
    code, _, err = _cli(capsys, "label", "pull", "--project", "versions", "--out", tmp_path / "x.jsonl",
                        "--url", server.url, "--token", server.personal_token[:-4] + "abcd")
    assert code == 2 and len(err.splitlines()) == 1 and "refused the personal access token" in err
    (tmp_path / "frames" / "images" / "red_0020.jpg").unlink()
    code, _, err = _cli(capsys, "label", "push", v1, "--project", "versions", "--url", server.url,
                        "--token", server.legacy_token)
    assert code == 2 and len(err.splitlines()) == 1 and "v1.jsonl:3" in err and "red_0020.jpg" in err
