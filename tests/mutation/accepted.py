"""Reviewed survivors: mutants no fast unit test kills, each with why that is harmless.

module path -> {mutant key (as `make mutation` prints it): why it is equivalent or acceptable}.
"""

ACCEPTED: dict[str, dict[str, str]] = {}
