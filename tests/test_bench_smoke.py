"""The benchmarks import, run their tiniest row in --quick mode and print a well-formed table (no timing checks)."""

from __future__ import annotations

import re


def test_quick_tiny_row_prints_a_markdown_table(tmp_path, capsys):
    import torch

    from bench.run_all import main

    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--only", "lora_step_tiny", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    from bench.common import HEADER

    text = out.read_text()
    assert text in printed
    lines = text.splitlines()
    assert lines[0].startswith("## blip-lora benchmarks (quick run)")
    assert any(line.startswith("Machine: ") and " cores" in line for line in lines)
    header = lines.index(HEADER)
    columns = HEADER.count("|")
    row = lines[header + 2]
    assert row.startswith("| lora_step_tiny | ") and row.count("|") == columns
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "s/step" and re.fullmatch(r"\d+\.\d{3}x", cells[5]) and cells[7] in ("yes", "no")
    assert "same first loss" in cells[9]


def test_rows_are_listed_and_machine_names_are_file_names():
    from bench.common import Row, file_name
    from bench.run_all import all_rows

    assert {"lora_step_tiny", "lora_step_large", "train_tiny", "infer_overhead", "caption_throughput",
            "data_pipeline", "memory"} <= set(all_rows())
    assert file_name("AMD EPYC 9R14 96-Core Processor, 2 cores") == "amd-epyc-9r14-96-core-processor-2-cores"
    assert Row("r", "w", 2.0, 4.0, "s", "<= 1.00").met == "yes"
    assert Row("r", "w", 2.0, 1.0, "img/s", ">= 3").met == "no"


def _mini_seed_blocks(seed_blocks, folder):
    """seed_blocks cut down to frames 1-2 (training) and 129-130 (validation) of each scene."""
    import json

    from blip_lora_core.train.data import read_jsonl

    samples, _ = read_jsonl(seed_blocks / "annotations.jsonl", check_images=False)
    keep = [s for s in samples if s.image.stem.endswith(("_0001", "_0002", "_0129", "_0130"))]
    (folder / "image_train").mkdir(parents=True)
    for s in keep:
        (folder / "image_train" / s.image.name).write_bytes(s.image.read_bytes())
    (folder / "annotations.jsonl").write_text("".join(
        json.dumps({"image": f"image_train/{s.image.name}", "text": s.text}) + "\n" for s in keep))
    return folder


def test_camera_robust_row_runs_on_a_tiny_model(tiny_model_dir, seed_blocks, tmp_path):
    from bench import camera_robust

    data = _mini_seed_blocks(seed_blocks, tmp_path / "data")
    results = camera_robust.run(tiny_model_dir, data, tmp_path / "out", epochs=1)
    sets = {"plain", *camera_robust.TRANSFORMS}
    assert results["photos"] == 14 and set(results["default"]) == set(results["none"]) == sets
    assert all(0.0 <= v <= 1.0 for name in ("default", "none") for v in results[name].values())
    rows = camera_robust._rows(results)
    assert [r.row for r in rows] == [f"camera_{n}" for n in ("plain", *camera_robust.TRANSFORMS)]
    assert "gap to untransformed" in rows[1].notes and rows[0].goal == ">= 1.00"


def test_label_order_row_runs_and_labels_the_least_confident_first(tiny_model_dir, seed_blocks, tmp_path):
    from bench import label_order
    from blip_lora_core.labelling.order import least_confident_first, thumbnails
    from blip_lora_core.models.captioning import Captioner

    data = _mini_seed_blocks(seed_blocks, tmp_path / "data")
    setting = label_order.setting_for(tiny_model_dir, data, tmp_path / "out", steps=2, schedule=(3, 6), target=2.0)
    paths = [s.image for s in setting.pool]
    results = Captioner.from_pretrained(str(tiny_model_dir), max_new_tokens=12).caption_file_results(paths)
    thumbs = thumbnails(paths)
    expected = least_confident_first([r.confidence for r in results], thumbs,
                                     captions=[r.text for r in results]).order[:3]
    assert label_order._least_confident(setting, None, [], 3, thumbs) == expected
    results = label_order.compare(setting, [0], log=lambda _: None)
    for strategy in label_order.STRATEGIES:
        run = results["runs"][strategy]["0"]
        assert run["labels"] is None and [n for n, _ in run["curve"]] == [3, 6]  # the target 2.0 is never reached
    row = label_order._row(results)
    assert row.row == "label_order" and row.unit == "labels" and row.goal == "<= 0.50"
