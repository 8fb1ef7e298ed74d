# `make test` and `make demo` each build .venv on a fresh machine and need nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine install the torch you want into .venv first.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: test mutation demo bench gpu-bench clean ros-system-libs

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

# The node tests extract ../shared/ros2-humble and ../shared/ros2-jazzy once into .ros2/ and colcon-build ros2_ws on
# each (or use a sourced ROS 2), and run on both: see bench/ros2_stack.py and tests/ros_env.py.
# cv_bridge (in the shared ROS 2 trees) loads Debian's OpenCV 4.6 and boost-python at run time
ROS_APT_LIBS := libopencv-core406 libopencv-imgproc406 libopencv-imgcodecs406 libboost-python1.74.0
ros-system-libs:
	@dpkg -s $(ROS_APT_LIBS) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends $(ROS_APT_LIBS) >/dev/null; } || \
	  echo "cv_bridge needs: apt-get install $(ROS_APT_LIBS)"

# Label Studio, the labelling server tests/test_label_studio.py starts, in a venv of its own inside .venv: it
# pins its own Django stack, which must not touch the project's packages. The project itself talks to it over
# HTTP with the standard library only.
LABEL_STUDIO_SPEC ?= label-studio==1.23.2
LABEL_STUDIO_VENV := $(VENV)/label-studio

$(LABEL_STUDIO_VENV)/.installed: Makefile | $(BIN)/activate
	test -x $(LABEL_STUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/python -m pip install -q "$(LABEL_STUDIO_SPEC)"
	touch $@

test: $(VENV)/.installed $(VENV)/.transformers-lines $(LABEL_STUDIO_VENV)/.installed ros-system-libs
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# Mutation testing of the riskiest core modules against their fast unit tests (tests/mutation/; not part
# of make test: about an hour on 2 cores, less when .mutation/ holds results of unchanged code and tests).
MUTATION_ARGS ?=
mutation: $(VENV)/.installed
	$(BIN)/python -m tests.mutation $(MUTATION_ARGS)

demo: $(VENV)/.installed
	$(BIN)/python -m blip_lora_training.demo

bench: $(VENV)/.installed
	$(BIN)/python -m bench.run_all

gpu-bench:
	bash bench/gpu.sh

clean:
	rm -rf $(VENV) build ros2_ws/build ros2_ws/install ros2_ws/log .ros2 .mutation
