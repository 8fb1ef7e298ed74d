"""Reviewed survivors: mutants no fast unit test kills, each with why that is harmless.

module path -> {mutant key (as `make mutation` prints it): why it is equivalent or acceptable}. Reasons
start with a category: "equivalent" (no input can tell the mutant from the original), "CUDA only" (the
code runs on a CUDA device, which CI does not have; tests/test_static_decoder.py's CUDA test and
bench/gpu.sh run it on a GPU) or "performance" (the same results, more work).
"""

_INT64 = "equivalent: torch infers int64 from Python ints, so dtype=torch.long changes nothing"
_CUDA = "CUDA only: on the CPU both versions do the same"
_DEVICE = "CUDA only: without device=, torch allocates on the CPU, where CI runs"
_GRAPHS = "CUDA only: CUDA graphs (capture and replay)"
_IMREAD = "equivalent: cv2.imdecode with IMREAD_COLOR returns an (H, W, 3) uint8 array or None, nothing else"
_CUT = ("CUDA only: eagerly, decoding stops at the step the last row ended, so _finish has nothing to cut; "
        "a replayed graph runs every step")

_HELP = ("acceptable: the help text of a setting (shown by --help and the ROS parameter table); a test could only "
         "repeat the sentence, its wording is reviewed by reading")
_HOOK_NONE = ("equivalent: a forward hook that returns None keeps the module's output, which here is the same "
              "tensor (unchanged, or updated in place)")
_NO_DROPOUT = "equivalent: lora_dropout(x, 0.0) returns (x, 1.0) without drawing (CUDA: dropout with p 0 returns x)"
_AUTOCAST = ("performance: A cast to the input's dtype before autocast casts it to autocast's dtype: the same values "
             "where autocast's dtype is the input's or the input is fp32 (training autocasts in the base's dtype), "
             "and without autocast A already has the input's dtype or is cast in both versions")
_META = "equivalent: kaiming_uniform_ on a meta tensor stores nothing and draws nothing from the generator"

ACCEPTED: dict[str, dict[str, str]] = {
    "blip_lora_core/models/labels.py": {
        "collate_text: drop keyword: dtype=torch.long -> (deleted)": _INT64,
        "collate_text: drop keyword: dtype=torch.long -> (deleted) #2": _INT64,
        "generation_prompt: drop keyword: dtype=torch.long -> (deleted)": _INT64,
        "token_loss_sum: drop keyword: attention_mask=batch['attention_mask'] -> (deleted)":
            "equivalent: padding is on the right and the decoder is causal, so no label position sees a pad",
        "token_loss_sum: drop keyword: ignore_index=IGNORE_INDEX -> (deleted)":
            "equivalent: IGNORE_INDEX is -100, cross_entropy's default ignore_index",
    },
    "blip_lora_core/models/static_decoder.py": {
        "_Plan: number + 1: 0 -> 1": "equivalent: decode() sets live before every run",
        "StaticGreedyDecoder.__init__: change string: 'cuda' -> 'XXcudaXX'": _CUDA,
        "StaticGreedyDecoder.__init__: drop operand: self.graphs and self.device.type != 'cuda' -> self.graphs": _CUDA,
        "StaticGreedyDecoder.__init__: change string: 'cuda' -> 'XXcudaXX' #2": _CUDA,
        "StaticGreedyDecoder.__init__: condition always False: self.graphs -> False": _CUDA,
        "attend: drop unary operator: -2 -> 2": "equivalent: keys are 4-D, so transpose(-1, 2) is transpose(-1, -2)",
        "StaticGreedyDecoder._forward: drop keyword: device=tokens.device -> (deleted)": _DEVICE,
        "causal_mask: drop keyword: device=pos.device -> (deleted)": _DEVICE,
        "StaticGreedyDecoder._forward: drop slice lower: -1: -> :":
            "performance: the LM head scores every position of the step; only the last is read",
        "StaticGreedyDecoder._forward: number + 1: 1 -> 2":
            "performance: the LM head scores the last two positions; only the last is read",
        "StaticGreedyDecoder._forward: drop unary operator: -1 -> 1 #3": "equivalent: dim 1 of (B, vocab) is dim -1",
        "StaticGreedyDecoder._forward: drop unary operator: -1 -> 1 #4": "equivalent: dim 1 of (B, vocab) is dim -1",
        "StaticGreedyDecoder._run: delete call: plan.log_probs.zero_() -> pass":
            "equivalent: every position decode() returns is written in the same run",
        "StaticGreedyDecoder._run: drop keyword: device=plan.out.device -> (deleted)": _DEVICE,
        "StaticGreedyDecoder._run: drop keyword: device=plan.out.device -> (deleted) #2": _DEVICE,
        "StaticGreedyDecoder._run: condition always True: stop_early -> True":
            "equivalent: padding rows' tokens are thrown away",
        "StaticGreedyDecoder._run: condition always False: stop_early -> False":
            "performance: a padding row (a zero image) may decode steps after the real rows ended; same tokens",
        "StaticGreedyDecoder._run: swap bool: True -> False":
            "performance: a padding row (a zero image) may decode steps after the real rows ended; same tokens",
        "StaticGreedyDecoder._run: drop operand: stop_early and bool(done.all()) -> bool(done.all())":
            "CUDA only: only a graph capture runs with stop_early=False",
        "StaticGreedyDecoder._run: number + 1: 1 -> 2 #4":
            "equivalent: one column more, which _finish cuts again (every row has ended)",
        "StaticGreedyDecoder._plan: condition always True: param.is_floating_point() -> True":
            "equivalent: a BLIP model's first parameter is floating point (int8 keeps the vision embeddings float)",
        "StaticGreedyDecoder._plan: drop keyword: device=self.device -> (deleted)": _DEVICE,
        "StaticGreedyDecoder._plan: drop keyword: device=self.device -> (deleted) #2": _DEVICE,
        "StaticGreedyDecoder._plan: drop keyword: device=self.device -> (deleted) #3": _DEVICE,
        "StaticGreedyDecoder._plan: drop keyword: device=self.device -> (deleted) #4": _DEVICE,
        "StaticGreedyDecoder._plan: drop keyword: device=self.device -> (deleted) #5": _DEVICE,
        "StaticGreedyDecoder._plan: drop keyword: dtype=dtype -> (deleted) #2":
            "equivalent: BLIP's vision embeddings cast the pixels to their weights' dtype",
        "StaticGreedyDecoder._plan: drop keyword: dtype=torch.long -> (deleted)": _INT64,
        "StaticGreedyDecoder._plan: drop keyword: dtype=torch.long -> (deleted) #2": _INT64,
        "StaticGreedyDecoder._plan: drop keyword: dtype=torch.float32 -> (deleted)":
            "equivalent: float32 is torch's default dtype",
        "StaticGreedyDecoder._plan: condition always True: self.graphs -> True": _GRAPHS,
        "StaticGreedyDecoder._plan: condition always False: self.graphs -> False": _GRAPHS,
        "StaticGreedyDecoder._plan: delete call: self._capture(plan, min_new_tokens) -> pass": _GRAPHS,
        "StaticGreedyDecoder._plan: swap bool: False -> True #2": _GRAPHS,
        "StaticGreedyDecoder._capture: delete call: stream.wait_stream(torch.cuda.current_stream(self.device)) -> "
        "pass": _GRAPHS,
        "StaticGreedyDecoder._capture: number + 1: 2 -> 3": _GRAPHS,
        "StaticGreedyDecoder._capture: delete call: self._run(plan, min_new_tokens, stop_early=False) -> pass":
            _GRAPHS,
        "StaticGreedyDecoder._capture: swap bool: False -> True": _GRAPHS,
        "StaticGreedyDecoder._capture: drop keyword: stop_early=False -> (deleted)": _GRAPHS,
        "StaticGreedyDecoder._capture: delete call: torch.cuda.current_stream(self.device).wait_stream(stream) -> "
        "pass": _GRAPHS,
        "StaticGreedyDecoder._capture: delete call: self._run(plan, min_new_tokens, stop_early=False) -> pass #2":
            _GRAPHS,
        "StaticGreedyDecoder._capture: swap bool: False -> True #2": _GRAPHS,
        "StaticGreedyDecoder._capture: drop keyword: stop_early=False -> (deleted) #2": _GRAPHS,
        "StaticGreedyDecoder.decode: condition always True: self.batch_buckets -> True":
            "equivalent: bucket(n, ()) is n",
        "StaticGreedyDecoder.decode: delete call: plan.pixels[batch:].zero_() -> pass":
            "equivalent: padding rows only exist with buckets (CUDA graphs); their tokens are thrown away",
        "StaticGreedyDecoder.decode: drop keyword: dtype=torch.long -> (deleted)": _INT64,
        "StaticGreedyDecoder.decode: drop keyword: device=self.device -> (deleted)": _DEVICE,
        "StaticGreedyDecoder.decode: condition always False: plan.graph is not None -> False": _GRAPHS,
        "StaticGreedyDecoder.decode: delete call: plan.graph.replay() -> pass": _GRAPHS,
        "StaticGreedyDecoder.decode: drop slice upper: :start + made -> :": _CUT,
        "StaticGreedyDecoder._finish: drop slice lower: start: -> :":
            "equivalent: [DEC] and the prompt never hold [SEP]",
        "StaticGreedyDecoder._finish: condition always True: bool((ended[:, -1] > 0).all()) -> True": _CUT,
        "StaticGreedyDecoder._finish: condition always False: bool((ended[:, -1] > 0).all()) -> False": _CUT,
        "StaticGreedyDecoder._finish: swap comparison: ended[:, -1] > 0 -> ended[:, -1] >= 0": _CUT,
        "StaticGreedyDecoder._finish: number + 1: 0 -> 1": _CUT,
        "StaticGreedyDecoder._finish: drop slice upper: :start + last + 1 -> :": _CUT,
        "StaticGreedyDecoder._finish: number + 1: 1 -> 2 #4": _CUT,
    },
    "blip_lora_core/runtime/image_msgs.py": {
        "<module>: change string: 'tiff' -> 'XXtiffXX'": "equivalent: 'tif', also on the list, is part of 'tiff'",
        "_as_uint8: number + 1: 1 -> 2": "equivalent: numpy's reshape takes any negative size as 'the rest'",
        "_as_uint8: number + 1: 1 -> 2 #2": "equivalent: numpy's reshape takes any negative size as 'the rest'",
        "_pixels: condition always True: layout.channels > 1 -> True":
            "equivalent: OpenCV reads an (H, W, 1) array as the (H, W) one",
        "_pixels: swap comparison: layout.channels > 1 -> layout.channels >= 1":
            "equivalent: OpenCV reads an (H, W, 1) array as the (H, W) one",
        "decode_image: drop keyword: dtype=np.uint8 -> (deleted)": "equivalent: the pixels are uint8 already",
        "decode_image: drop keyword: order='C' -> (deleted)":
            "equivalent: a copy of a row-sliced view is C-ordered with numpy's default order too",
        "decode_image: drop keyword: copy=True -> (deleted)": "equivalent: np.array copies by default",
        "_payload_is_rgb: number + 1: 1 -> 2":
            "equivalent: image_transport formats hold 'compressed' once, so rsplit gives the same last part",
        "_check_png_chunks: drop operand: raw.nbytes < len(_PNG_SIGNATURE) or raw[:len(_PNG_SIGNATURE)] != "
        "_PNG_SIGNATURE -> raw[:len(_PNG_SIGNATURE)] != _PNG_SIGNATURE":
            "equivalent: a buffer shorter than the signature cannot start with it",
        "_check_png_chunks: swap comparison: raw.nbytes < len(_PNG_SIGNATURE) -> raw.nbytes <= len(_PNG_SIGNATURE)":
            "equivalent: a PNG of the signature alone has no chunk to walk",
        "_check_png_chunks: swap operator: pos + 8 -> pos - 8":
            "acceptable: only a PNG without IEND walks to the end, and OpenCV refuses that too (another message)",
        "decode_compressed: drop operand: bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or (bgr.dtype != "
        "np.uint8) -> bgr is None or bgr.shape[2] != 3 or bgr.dtype != np.uint8": _IMREAD,
        "decode_compressed: drop operand: bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or (bgr.dtype != "
        "np.uint8) -> bgr is None or bgr.ndim != 3 or bgr.dtype != np.uint8": _IMREAD,
        "decode_compressed: drop operand: bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or (bgr.dtype != "
        "np.uint8) -> bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3": _IMREAD,
    },
    "blip_lora_core/lora/hooks.py": {
        "<module>: change string: '_lora_requires_grad_before' -> 'XX_lora_requires_grad_beforeXX'":
            "equivalent: the attribute's name is private; inject_lora writes and remove_lora reads it by this constant",
        "LoraConfig: change string: 'LoRA rank' -> 'XXLoRA rankXX'": _HELP,
        "LoraConfig: change string: 'LoRA alpha (scaling = alpha / r)' -> 'XXLoRA alpha (scaling = alpha / r)XX'":
            _HELP,
        "LoraConfig: change string: 'dropout on the LoRA branch' -> 'XXdropout on the LoRA branchXX'": _HELP,
        "LoraConfig: change string: 'rank-stabilised scaling: alpha / sqrt(r)' -> "
        "'XXrank-stabilised scaling: alpha / sqrt(r)XX'": _HELP,
        "LoraConfig: change string: 'module-name patterns of the nn.Linear layers to adapt' -> "
        "'XXmodule-name patterns of the nn.Linear layers to adaptXX'": _HELP,
        "_lora_hook: return None: return output -> return None": _HOOK_NONE,
        "_lora_hook: return None: return output -> return None #2": _HOOK_NONE,
        "_lora_hook: drop operand: state.dropout > 0.0 and module.training -> module.training": _NO_DROPOUT,
        "_lora_hook: swap comparison: state.dropout > 0.0 -> state.dropout >= 0.0": _NO_DROPOUT,
        "_lora_hook: condition always True: a.dtype != x.dtype and (not torch.is_autocast_enabled(x.device.type)) -> "
        "True": _AUTOCAST,
        "_lora_hook: swap and/or: a.dtype != x.dtype and (not torch.is_autocast_enabled(x.device.type)) -> "
        "a.dtype != x.dtype or not torch.is_autocast_enabled(x.device.type)": _AUTOCAST,
        "_lora_hook: drop operand: a.dtype != x.dtype and (not torch.is_autocast_enabled(x.device.type)) -> "
        "not torch.is_autocast_enabled(x.device.type)":
            "equivalent: without autocast, A.to(x.dtype) of an A already in x's dtype returns A itself",
        "_lora_hook: drop operand: a.dtype != x.dtype and (not torch.is_autocast_enabled(x.device.type)) -> "
        "a.dtype != x.dtype": _AUTOCAST,
        "_hook_layer: condition always True: weight.device.type != 'meta' -> True": _META,
        "_hook_layer: change string: 'meta' -> 'XXmetaXX'": _META,
        "base_weight_values: drop unary operator: -1 -> 1 #3":
            "equivalent: the product is (k, r) for the documented flat index (k,), so dim 1 is dim -1",
    },
    "blip_lora_core/lora/dropout.py": {
        "lora_dropout: drop keyword: training=True -> (deleted)":
            "equivalent: training=True is torch.nn.functional.dropout's default",
        "lora_dropout: swap operator: threshold - _LEVELS // 2 -> threshold + _LEVELS // 2":
            "equivalent: the bound is compared with int16 values, where +32768 and -32768 are the same number",
        "lora_dropout: swap operator: _LEVELS // 2 -> _LEVELS / 2": "equivalent: 65536 / 2 == 65536 // 2",
        "_uniform16: number + 1: 3 -> 4":
            "equivalent: one unused 64-bit word more when the count is a multiple of 4; the mask is the same",
        "_uniform16: number + 1: 1 -> 2 #3":
            "equivalent: the 64-bit draw's upper bound one lower: 1 value in 2**64 less, never observable",
    },
}
