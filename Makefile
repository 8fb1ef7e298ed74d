# `make test` and `make demo` each build .venv on a fresh machine and need nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine install the torch you want into .venv first.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test demo bench gpu-bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Other supported transformers lines, each in a folder of its own that tests/test_compat.py puts first
# on PYTHONPATH (the venv keeps its own transformers).
TRANSFORMERS_LINES ?= 4.57.6 5.17.0

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.transformers-lines: $(VENV)/.installed Makefile
	for v in $(TRANSFORMERS_LINES); do \
	  test -d $(VENV)/transformers-lines/$$v/transformers || \
	  $(BIN)/python -m pip install -q --no-warn-conflicts --target $(VENV)/transformers-lines/$$v "transformers==$$v" || exit 1; \
	done
	touch $@

# Label Studio, the labelling server tests/test_label_studio.py starts, in a venv of its own inside .venv: it
# pins its own Django stack, which must not touch the project's packages. The project itself talks to it over
# HTTP with the standard library only.
LABEL_STUDIO_SPEC ?= label-studio==1.23.2
LABEL_STUDIO_VENV := $(VENV)/label-studio

$(LABEL_STUDIO_VENV)/.installed: Makefile | $(BIN)/activate
	test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install -q "$(LABEL_STUDIO_SPEC)"
	touch $@

# The node tests extract ../shared/ros2-humble once into .ros2/ and colcon-build ros2_ws on it (or use a
# sourced ROS 2): see bench/ros2_stack.py.
test: $(VENV)/.installed $(VENV)/.transformers-lines $(LABEL_STUDIO_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(BIN)/python -m blip_lora_training.demo

bench: $(VENV)/.installed
	$(BIN)/python -m bench.run_all

gpu-bench:
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) build ros2_ws/build ros2_ws/install ros2_ws/log .ros2
