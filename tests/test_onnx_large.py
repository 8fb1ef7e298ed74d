"""The fp32 ONNX export of BLIP-large's architecture (random weights, 384 px, 24 + 12 layers) gives exactly the
tokens of torch's generate(): without and with a prompt, batch 1 and batch > 1, captions ending at different
steps (the [SEP] bias raised so that one row ends at step 7, one at step 8 and one never within 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blip_lora_core.export.onnx_export import export_bundle
from blip_lora_core.ort.captioner import OrtCaptioner
from tests.test_static_decoder import _generate, _pixels

SEP_BIAS = 1.33  # the rows' smallest gaps between their top logit and [SEP]'s: 1.23 (step 7), 1.27 (step 8), 1.36


@pytest.mark.slow
@pytest.mark.xdist_group("blip_large")
def test_fp32_export_of_blip_large_gives_the_tokens_of_generate(tmp_path):
    from bench.common import large_bundle

    bundle = large_bundle(seed=0)
    model = bundle.model
    sep = model.config.text_config.sep_token_id
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[sep] += SEP_BIAS
    export_bundle(bundle, tmp_path / "export")
    captioner = OrtCaptioner(tmp_path / "export", max_new_tokens=10, threads=1)
    pixels = _pixels(3, size=384)
    prompt = [1037, 3861, 1997]  # "a picture of" in BERT's vocabulary
    cases = [([], slice(0, 3)), ([], slice(0, 1)), (prompt, slice(1, 3))]  # batch 3 and 1; batch 2 with a prompt
    for ids, rows in cases:
        expected = _generate(model, pixels[rows], ids, 10).numpy()
        got, log_probs = captioner.decode(pixels[rows].numpy(), ids)
        assert np.array_equal(got, expected), (ids, rows)
        assert log_probs.shape == (got.shape[0], got.shape[1] - 1 - len(ids))
        if rows == slice(0, 3):  # the case the bias is for: rows end at different steps, or not at all
            ended = [int(np.argmax(row == sep)) + 1 if (row == sep).any() else None for row in got[:, 1:]]
            assert len(set(ended)) == 3 and None in ended, ended
