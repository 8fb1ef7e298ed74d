"""Mutation testing of the core's riskiest modules: `make mutation` (python -m tests.mutation).

operators.py makes small deliberate bugs (mutants) in a module's syntax tree; targets.py names the
modules and the fast unit tests that must catch them; bugs.py holds hand-written bugs from past audits;
runner.py runs each mutant's tests in a forked process and reports the survivors; accepted.py lists the
reviewed survivors and why each is harmless.
"""
