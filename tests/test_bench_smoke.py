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
