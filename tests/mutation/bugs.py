"""Hand-written bugs that once survived the test suite (issue 21's audit): each must now fail a fast unit test.

A bug is a text replacement in one module; its `old` text must occur there exactly once (tests/test_mutation.py
checks that, so a refactor that moves the code must move the bug with it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    path: str
    name: str
    old: str
    new: str

    def apply(self, source: str) -> str:
        if source.count(self.old) != 1:
            raise ValueError(f"bug {self.name!r}: its text occurs {source.count(self.old)} times in {self.path}")
        return source.replace(self.old, self.new)


BUGS = (
    Bug("blip_lora_core/models/labels.py", "token_loss_sum compares logits and labels at the same position",
        'logits, labels = logits[:, :-1], batch["labels"][:, 1:]',
        'logits, labels = logits[:, 1:], batch["labels"][:, 1:]'),
    Bug("blip_lora_core/lora/adapter_io.py", "read_adapter does not check lora_B's rank",
        "if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:",
        "if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r:"),
    Bug("blip_lora_core/lora/adapter_io.py", "the base_probe shape check reduced to ndim",
        "if tensors[PROBE_KEY].shape != (len(info.layers), _PROBE_POINTS):",
        "if tensors[PROBE_KEY].ndim != 2:"),
    Bug("blip_lora_core/lora/hooks.py", "merge_lora marks text-decoder layers merged but leaves their weights",
        "        if module._lora.merged:\n            continue\n",
        "        if module._lora.merged:\n            continue\n"
        "        if name.startswith(\"text_decoder.\"):\n"
        "            module._lora.merged = True\n            merged += 1\n            continue\n"),
    Bug("blip_lora_core/train/loop.py", "the loop applies the previous step's rate",
        "lr = config.lr * lr_factor(step, run.total_steps,",
        "lr = config.lr * lr_factor(max(step - 1, 0), run.total_steps,"),
)
