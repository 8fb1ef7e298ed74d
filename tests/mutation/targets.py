"""What `make mutation` mutates, and which fast unit tests must catch each module's mutants.

Only the module's own unit tests count (tests marked slow never run): a bug that only an end-to-end
test notices is a survivor here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    path: str  # the module, relative to the repository
    tests: tuple[str, ...]  # its unit test files
    select: Callable[[str, str], bool] | None = None  # (qualname, statement) -> mutate it?

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


def _learning_rate_lines(qualname: str, statement: str) -> bool:
    """The training loop's use of the schedule: where each step's rate is computed and given to the optimizer."""
    return qualname == "train" and re.search(r'lr_factor|\["lr"\]', statement) is not None


TARGETS = (
    Target("blip_lora_core/lora/hooks.py", ("tests/test_lora.py", "tests/test_adapter_io.py")),
    Target("blip_lora_core/lora/dropout.py", ("tests/test_dropout.py", "tests/test_lora.py")),
    Target("blip_lora_core/lora/adapter_io.py",
           ("tests/test_adapter_io.py", "tests/test_fuzz_adapter.py", "tests/test_fault_files.py")),
    Target("blip_lora_core/lora/peft_interop.py", ("tests/test_peft_interop.py",)),
    Target("blip_lora_core/models/labels.py", ("tests/test_labels.py",)),
    Target("blip_lora_core/models/static_decoder.py", ("tests/test_static_decoder.py",)),
    Target("blip_lora_core/train/schedule.py", ("tests/test_train.py",)),
    Target("blip_lora_core/train/loop.py", ("tests/test_train.py",), select=_learning_rate_lines),
    Target("blip_lora_core/runtime/image_msgs.py", ("tests/test_image_msgs.py", "tests/test_image_msgs_fuzz.py")),
)
