"""Labelling without a server: least-confident-first order, which annotation counts, pull from an export file,
one-line errors. The real Label Studio round trip is tests/test_label_studio.py."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from blip_lora_core.errors import DataError, LabelStudioError
from blip_lora_core.labelling.order import least_confident_first, thumbnails
from blip_lora_core.labelling.roundtrip import read_frames
from blip_lora_core.labelling.studio import LabelStudio
from blip_lora_core.labelling.tasks import (
    LABEL_CONFIG,
    Frame,
    chosen_annotation,
    config_fits,
    file_sha256,
    frame_task,
    pulled_rows,
)
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.train.data import read_jsonl, scene_group
from blip_lora_training.cli import main


def _annotation(id_, text, updated, cancelled=False, ground_truth=False):
    result = [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]
    return {"id": id_, "result": [] if cancelled else result, "was_cancelled": cancelled,
            "ground_truth": ground_truth, "updated_at": updated, "completed_by": 1}


@pytest.mark.parametrize(("annotations", "status", "text", "disagree"), [
    ([], "unlabelled", None, False),
    ([_annotation(1, "x", "2026-01-01", cancelled=True)], "skipped", None, False),
    ([_annotation(1, "One red cube", "2026-01-01"), _annotation(2, "One blue cube", "2026-01-02")],
     "labelled", "One blue cube", True),  # the latest
    ([_annotation(5, "One red cube", "2026-01-03"), _annotation(2, "One blue cube", "2026-01-02")],
     "labelled", "One red cube", True),  # latest by time, not by id
    ([_annotation(1, "One red cube", "2026-01-01", ground_truth=True), _annotation(2, "One blue", "2026-01-02")],
     "labelled", "One red cube", True),  # the ground truth beats a later one
    ([_annotation(1, "One red cube", "2026-01-01"), _annotation(2, "x", "2026-01-05", cancelled=True)],
     "labelled", "One red cube", False),  # a later skip does not count
    ([_annotation(1, "  One\n red   cube ", "2026-01-01"), _annotation(2, "One red cube", "2026-01-01")],
     "labelled", "One red cube", False),  # whitespace is not a disagreement
    ([_annotation(1, "   ", "2026-01-01")], "empty", None, False),
])
def test_which_annotation_counts(annotations, status, text, disagree):
    from blip_lora_core.labelling.tasks import annotation_text

    chosen, got_status, got_disagree = chosen_annotation({"annotations": annotations})
    assert (got_status, got_disagree) == (status, disagree)
    assert (annotation_text(chosen) if chosen else None) == text


def _pushed_frames(seed_blocks: Path, folder: Path, names: list[str]) -> list[Frame]:
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, name in enumerate(names):
        shutil.copy(seed_blocks / "image_train" / f"{name}.jpg", folder / "images" / f"{name}.jpg")
        rows.append({"image": f"images/{name}.jpg", "text": f"pre {i}" if i else "", "stamp": float(i),
                     "precaption": {"adapter": "/x/a.safetensors", "confidence": 0.25 * i}})
    (folder / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_frames(folder / "frames.jsonl")


def _export(frames: list[Frame], annotations: list[list[dict]]) -> list[dict]:
    """What a Label Studio JSON export holds for tasks pushed from these frames."""
    tasks = []
    for i, (frame, anns) in enumerate(zip(frames, annotations, strict=True)):
        task = frame_task(frame, f"/data/upload/1/{i}.jpg")
        tasks.append({"id": 10 + i, "project": 3, "data": task["data"], "annotations": anns, "predictions": [i]})
    return tasks


def test_tasks_carry_the_precaption_as_a_prediction_with_model_version_and_score(seed_blocks, tmp_path):
    frames = _pushed_frames(seed_blocks, tmp_path, ["blue_0001", "red_0002"])
    first, second = (frame_task(f, "/data/upload/1/x.jpg") for f in frames)
    assert "predictions" not in first  # no pre-caption: the labeller types
    assert second["predictions"] == [{"model_version": "a.safetensors", "score": 0.25, "result": [
        {"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": ["pre 1"]}}]}]
    meta = second["data"]["blip_lora"]
    assert meta["path"] == str(tmp_path / "images" / "red_0002.jpg") and meta["caption"] == "pre 1"
    assert meta["sha256"] == file_sha256(tmp_path / "images" / "red_0002.jpg") and meta["row"]["stamp"] == 1.0
    assert config_fits(LABEL_CONFIG) and not config_fits('<View><Image name="image" value="$image"/></View>')
    assert not config_fits("<View") and config_fits(
        '<View><Image name="image" value="$image"/><TextArea name="caption" toName="image"/><Header/></View>')


def test_pull_from_an_export_file_writes_reviewed_rows_and_counts_the_rest(seed_blocks, tmp_path, capsys):
    names = ["blue_0001", "red_0002", "green_0003", "wood_0004", "none_0005"]
    frames = _pushed_frames(seed_blocks, tmp_path / "frames", names)
    tasks = _export(frames, [[_annotation(1, "One blue cube", "2026-01-01")],
                             [_annotation(2, "pre 1", "2026-01-01")],
                             [_annotation(3, "", "2026-01-01", cancelled=True)],
                             [],
                             [_annotation(4, "No cube", "2026-01-01"), _annotation(5, "Empty table", "2026-01-02")]])
    tasks.append({"id": 99, "data": {"image": "/data/upload/1/other.jpg"},
                  "annotations": [_annotation(6, "One red cube", "2026-01-01")]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "out" / "reviewed.jsonl"
    assert main(["label", "pull", "--from-export", str(export), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("3 reviewed captions of 6 tasks (1 accepted as pre-captioned, 1 corrected, 1 written from scratch); "
            "left out: 1 skipped or cancelled, 1 not labelled yet, 0 empty, 1 not pushed by blip-lora; "
            "1 with disagreeing annotations") in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["image"], r["text"], r["stamp"], r["reviewed"], r["label_studio"]["task"]) for r in rows] == [
        ("../frames/images/blue_0001.jpg", "One blue cube", 0.0, True, 10),
        ("../frames/images/red_0002.jpg", "pre 1", 1.0, True, 11),
        ("../frames/images/none_0005.jpg", "Empty table", 4.0, True, 14)]
    samples, _ = read_jsonl(out)  # what `train` reads
    assert [s.image.resolve() for s in samples] == [tmp_path / "frames" / "images" / f"{n}.jpg"
                                                   for n in names[:2] + names[4:]]


def test_pull_names_missing_or_changed_frames_in_one_line(seed_blocks, tmp_path):
    frames = _pushed_frames(seed_blocks, tmp_path / "frames", ["blue_0001", "red_0002", "green_0003"])
    tasks = _export(frames, [[_annotation(i, "One cube", "2026-01-01")] for i in range(3)])
    (tmp_path / "frames" / "images" / "red_0002.jpg").unlink()
    (tmp_path / "frames" / "images" / "green_0003.jpg").unlink()
    with pytest.raises(DataError) as missing:
        pulled_rows(tasks, tmp_path / "out.jsonl", 3)
    assert str(missing.value) == (f"task 11: frame {tmp_path}/frames/images/red_0002.jpg is not on this machine "
                                  f"(and 1 more): pull where the pushed frames are")
    shutil.copy(seed_blocks / "image_train" / "blue_0001.jpg", tmp_path / "frames" / "images" / "red_0002.jpg")
    with pytest.raises(DataError, match=r"task 11: frame .*red_0002.jpg changed since it was pushed"):
        pulled_rows(tasks[:2], tmp_path / "out.jsonl", 3)


def test_push_input_errors_are_one_line(seed_blocks, tmp_path):
    _pushed_frames(seed_blocks, tmp_path, ["blue_0001", "red_0002", "green_0003"])
    (tmp_path / "images" / "red_0002.jpg").unlink()
    (tmp_path / "images" / "green_0003.jpg").write_bytes(b"")
    with pytest.raises(DataError) as error:
        read_frames(tmp_path / "frames.jsonl")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}/frames.jsonl:2: bad image: ")
    assert "red_0002.jpg" in message and message.endswith("(and 1 more bad lines)")


def test_client_errors_are_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(LabelStudioError, match=rf"cannot reach Label Studio at http://127.0.0.1:{closed}: .*refused"):
        LabelStudio(f"http://127.0.0.1:{closed}", "t" * 40).check()
    with pytest.raises(LabelStudioError, match="must start with http"):
        LabelStudio("localhost:8080", "t")
    with pytest.raises(LabelStudioError, match="no token"):
        LabelStudio("http://localhost:8080", " ")

    class NotLabelStudio(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>a web page</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(LabelStudioError, match=f"did not answer with JSON: is {url} a Label Studio server"):
            LabelStudio(url, "t" * 40).check()
    finally:
        server.shutdown()
        server.server_close()
    frames = tmp_path / "f.jsonl"
    frames.write_text("")
    assert main(["label", "pull", "--project", "p", "--url", f"http://127.0.0.1:{closed}", "--token", "x",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot reach Label Studio" in err


def test_least_confident_first_collapses_near_duplicates_into_the_less_confident():
    thumbs = np.zeros((6, 768), dtype=np.float32)
    thumbs[1] = thumbs[0] + 2.0  # near 0
    thumbs[2] = 100.0
    thumbs[3] = 102.9  # near 2 (mean difference 2.9 < 3)
    thumbs[4] = 103.1  # 3.1 from 2, 0.2 from 3: collapsed only when 3 is kept
    thumbs[5] = 50.0
    confidence = [0.9, 0.2, 0.5, 0.7, 0.1, 0.5]
    order = least_confident_first(confidence, thumbs)
    assert order.order == [4, 1, 2, 5]  # 0.1, 0.2, 0.5 (2 before 5: file order breaks the tie)
    assert order.duplicate_of == {3: 4, 0: 1}
    assert least_confident_first(confidence, thumbs, threshold=0).order == [4, 1, 2, 5, 3, 0]


def test_the_order_shares_labels_out_across_predicted_captions_and_skips_what_is_labelled():
    thumbs = np.arange(9, dtype=np.float32)[:, None] * np.full((1, 768), 10, np.float32)  # all far apart
    confidence = [0.1, 0.2, 0.3, 0.9, 0.95, 0.4, 0.5, 0.6, 0.7]
    captions = ["One red cube", "one red  cube", "One red cube", "A blue cube on top", "No cube", "One red cube",
                "One red cube", "One red cube", "A blue cube on top"]
    order = least_confident_first(confidence, thumbs, captions=captions)
    # each frame's place among its caption's frames: red (6 frames) 0, 1/6, 2/6 ... ; stack 0 (frame 8), 1/2;
    # none 0; ties by confidence
    assert order.order == [0, 8, 4, 1, 2, 5, 3, 6, 7] and order.duplicate_of == {}
    labelled = thumbs[[3]] + 1.0  # frame 3 is (almost) a frame already labelled
    order = least_confident_first(confidence, thumbs, captions=captions, labelled=labelled)
    assert order.order == [0, 8, 4, 1, 2, 5, 6, 7] and order.duplicate_of == {3: None}


def test_the_default_threshold_never_merges_two_seed_blocks_scenes(seed_blocks):
    samples, _ = read_jsonl(seed_blocks / "annotations.jsonl", check_images=False)
    order = least_confident_first(np.zeros(len(samples)), thumbnails([s.image for s in samples]))
    assert 450 < len(order.order) < 650  # consecutive video frames collapse
    merged = {(scene_group(samples[i].image), scene_group(samples[j].image)) for i, j in order.duplicate_of.items()}
    assert all(a == b for a, b in merged)


def test_label_order_captions_with_the_nodes_confidence_and_sorts(tiny_model_dir, seed_blocks, tmp_path, capsys):
    names = ["blue_0001", "green_0010", "red_0020", "wood_0030", "none_0040", "blue_on_green_0050"]
    (tmp_path / "images").mkdir()
    rows = []
    for name in names:
        shutil.copy(seed_blocks / "image_train" / f"{name}.jpg", tmp_path / "images" / f"{name}.jpg")
        rows.append({"image": f"images/{name}.jpg", "text": "", "stamp": 1.0})
    rows[2].update(text="One red cube", reviewed=True)  # already labelled: left out
    (tmp_path / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "order" / "next.jsonl"
    assert main(["label", "order", str(tmp_path / "frames.jsonl"), "--model", str(tiny_model_dir), "--out",
                 str(out), "--max-new-tokens", "6", "--duplicate-threshold", "0", "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 frames" in printed and "1 already reviewed" in printed
    written = [json.loads(line) for line in out.read_text().splitlines()]
    captioner = Captioner.from_pretrained(str(tiny_model_dir), max_new_tokens=6)
    todo = [tmp_path / "images" / f"{n}.jpg" for i, n in enumerate(names) if i != 2]
    results = captioner.caption_file_results(todo)
    by_confidence = sorted(range(len(todo)), key=lambda i: (results[i].confidence, i))
    same = {i: [j for j in by_confidence if results[j].text == results[i].text] for i in by_confidence}
    expected = sorted(by_confidence, key=lambda i: (same[i].index(i) / len(same[i]), results[i].confidence, i))[:4]
    assert [r["image"] for r in written] == [f"../images/{todo[i].name}" for i in expected]
    for row, i in zip(written, expected, strict=True):
        assert row["text"] == results[i].text and row["reviewed"] is False and row["stamp"] == 1.0
        assert row["precaption"] == {"model": str(tiny_model_dir), "adapter": None, "prompt": None,
                                     "confidence": pytest.approx(results[i].confidence, abs=1e-6)}


def test_order_and_pull_never_overwrite_their_input(tmp_path, capsys):
    data = tmp_path / "frames.jsonl"
    data.write_text("[]")
    before = data.read_bytes()
    assert main(["label", "order", str(data), "--out", str(tmp_path / "." / "frames.jsonl")]) == 2
    assert main(["label", "pull", "--from-export", str(data), "--out", str(data)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("is the input file" in line for line in err)
    assert data.read_bytes() == before
