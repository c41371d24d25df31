# cortex-nb: `make all` regenerates the paper's tables and figures for PROFILE (toy by default),
# `make test` runs the unit tests and validates every notebook with nbval (smoke profile).
# Both create the virtual environment first when it is missing.
PROFILE ?= toy
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.cortex-installed
EXEC    := results/$(PROFILE)/executed
SRC     := $(wildcard cortex_nb/*.py cortex_nb/*/*.py)
DEPS    := results/$(PROFILE)/deps
NBS     := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
OUTS    := $(patsubst notebooks/%.ipynb,$(EXEC)/%.ipynb,$(NBS))
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONHASHSEED := 0
# Small models on few cores: busy-waiting OpenMP threads cost 4-8x when the machine is shared.
export OMP_WAIT_POLICY := PASSIVE
# glibc's malloc hands every tensor over ~32 MB back to the kernel when it is freed and faults its pages in again at
# the next one (PyTorch's CPU tuning guide advises another allocator for this). Keeping them (every profile but
# imagenet and paper-dry, which hold many GB a stage): over the toy make all system time 96 -> 23 s, page faults
# 31.7 M -> 4.1 M, user time 880 -> 761 s, peak memory +0-29 % a stage (Zen 4 as AVX2); the numbers, byte for byte, the same.
ifeq ($(filter imagenet paper-dry,$(PROFILE)),)
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 17179869184
export MALLOC_TOP_PAD_ := 536870912
endif
# The toy VQGM ships pretrained (cortex_nb/artifacts, SHA-256 registry); FROM_SCRATCH=1 retrains it.
FROM_SCRATCH ?=
export CORTEX_FROM_SCRATCH := $(FROM_SCRATCH)

.PHONY: setup all verify seeds test test-slow unit nbval lab bench atlas book bias-control gpu-check clean help

help:
	@echo "make setup | all [PROFILE=toy|smoke|imagenet] [JOBS=2] [CELL_TIMEOUT=seconds] [FROM_SCRATCH=1] | verify | seeds | test | test-slow | lab | atlas | book | bias-control | gpu-check | bench | clean"

setup: $(STAMP)

# torch/torchvision are pinned to the pair that installs from this machine's disk (see README);
# everything else comes from pyproject.toml, the one list of dependencies. One pip call (one resolution). The
# installed modules are then byte-compiled on every core (pip would compile them one at a time, ~60 s): with
# PYTHONDONTWRITEBYTECODE set, as on these machines, nothing else would, and every notebook kernel would compile
# torch's modules again (+8-11 s each, measured). compileall's exit status and warnings are not shown: like pip, it
# skips the few files of third-party packages that are not valid Python 3.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1 -e ".[test,book]"
	$(PY) -W ignore -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

# GNU time records each stage's wall seconds and peak resident memory (KiB, the largest process:
# the notebook's kernel) in results/<profile>/timings/<stage>.txt as "stage seconds maxrss_kib".
TIME    ?= /usr/bin/time

# papermill's --execution-timeout limits each CELL, not the notebook. imagenet's dataset generation
# and extractor training are single cells of many hours on one GPU, so there is no limit for
# imagenet (those stages resume where they stopped and show progress); toy and smoke keep 2 h,
# which catches a hung kernel. Set CELL_TIMEOUT=<seconds> to impose one, CELL_TIMEOUT= for none.
CELL_TIMEOUT ?= $(if $(filter imagenet,$(PROFILE)),,7200)

# Each executed notebook depends on its notebook, the profile, the previous stage and the
# cortex_nb modules its kernel imported the last time it ran (recorded in $(DEPS)/<stage>.mk by
# cortex_nb.io.deps; before a stage has run once, every module counts), so `make all` reruns exactly
# the stages whose inputs changed, and the stages after them.
stage_src = $(if $(wildcard $(DEPS)/$(1).mk),,$(SRC))
-include $(wildcard $(DEPS)/*.mk)
.SECONDEXPANSION:
# After the notebooks: the toy world's science gates, the claims ledger (tables/ledger, the one verdict table: only
# now are all the tables it reads written), the two families side by side
# (toy-maskgit), README's headline and docs/results.md (toy) and, last, results/<profile>/MANIFEST.json over every table and figure (`make verify` checks it). A failed
# gate still gets its ledger and manifest written; `make all` then exits with the gates' status.
all: | $(STAMP)
	@$(MAKE) --no-print-directory --output-sync=line -j$(JOBS) notebooks
	@rc=0; \
	case "$(PROFILE)" in toy|toy-maskgit) $(PY) -m cortex_nb gates --profile $(PROFILE) || rc=$$?;; esac; \
	$(PY) -m cortex_nb ledger --profile $(PROFILE) || exit $$?; \
	if [ "$(PROFILE)" = toy-maskgit ] && [ -f results/toy/tables/ledger.csv ]; then \
	  $(PY) -m cortex_nb families --profile $(PROFILE) > /dev/null || exit $$?; fi; \
	if [ "$(PROFILE)" = toy ]; then $(PY) tools/readme.py toy || exit $$?; fi; \
	$(PY) -m cortex_nb manifest --profile $(PROFILE) || exit $$?; \
	exit $$rc
	@echo "done: tables in results/$(PROFILE)/tables, figures in figures/$(PROFILE), results/$(PROFILE)/MANIFEST.json"

# The robustness reports (profile key `robustness`; off in the toy profile's `make all`): notebooks 03, 04 and 07 run
# again with CORTEX_ROBUSTNESS=1, adding Fig. 3 / Table 2 / the faithfulness areas under every other fill and Fig. 3 in
# the scripts' masking mode (their cached parts are read back), then the ledger and the manifest as after `make all`.
.PHONY: robustness
robustness: all
	rm -f $(call stage,03) $(call stage,04) $(call stage,07)
	CORTEX_ROBUSTNESS=1 $(MAKE) --no-print-directory --output-sync=line -j$(JOBS) $(call stage,03) $(call stage,04) $(call stage,07)
	@touch -c $(call stage,06)   # 06 reads 04's concept sets, which the reports leave as they were: no rerun
	$(PY) -m cortex_nb ledger --profile $(PROFILE)
	@if [ "$(PROFILE)" = toy ]; then $(PY) tools/readme.py toy; fi
	$(PY) -m cortex_nb manifest --profile $(PROFILE)

# Recompute every hash of results/<profile>/MANIFEST.json and evaluate the claims ledger again: exit status 1
# naming each table or figure that does not match and each claim recorded as holding that no longer holds.
verify: $(STAMP)
	$(PY) -m cortex_nb verify --profile $(PROFILE)

# The notebook is executed by papermill (cortex_nb.pipeline.notebook: its cell log; a failure that is the project's own
# error -- a bad profile value, a damaged file, a full disk -- told as its message and fix, not as a traceback) into a
# temporary file named by the recipe shell's PID ($$$$), moved into
# place on success and removed on failure or interruption (Ctrl-C), so two `make all` on one
# checkout never write the same file. Paths that $(abspath) makes absolute are quoted: the
# checkout's path may contain spaces (GNU make itself cannot take spaces in target names; ours
# are relative, results/...).
$(EXEC)/%.ipynb: notebooks/%.ipynb cortex_nb/profiles/_base.yaml cortex_nb/profiles/$(PROFILE).yaml $(wildcard cortex_nb/artifacts/registry.json) $$(call stage_src,$$*) | $(STAMP)
	@mkdir -p $(EXEC) results/$(PROFILE)/timings $(DEPS)
	@echo "== $* ($(PROFILE))"
	@tmp="$@.$$$$.tmp.ipynb"; trap 'rm -f "$$tmp"; exit 130' INT TERM HUP; \
	$(STAGE_ENV) CORTEX_STAGE_DEPS="$(abspath $(DEPS))/$*.mk:$@" $(TIME) -f "$* %e %M" -o results/$(PROFILE)/timings/$*.txt \
	  "$(PY)" -m cortex_nb.pipeline.notebook $< "$$tmp" -p profile $(PROFILE) --cwd notebooks \
	    --kernel python3 $(if $(CELL_TIMEOUT),--execution-timeout $(CELL_TIMEOUT)) \
	  && mv "$$tmp" $@ \
	  && awk '{printf "   %s took %.0f s, peak memory %.0f MiB\n", $$1, $$2, $$3 / 1024}' results/$(PROFILE)/timings/$*.txt \
	  || { rc=$$?; rm -f "$$tmp"; exit $$rc; }

# The stage graph, not a chain: 01 samples from the VQGM (building or installing it) and 02 trains on 01's stores; 08
# reads only the VQGM and 01's stores (its scene models are its own); after 02, 03, 05 and 07 read only the caches of
# 01 and 02 (each builds what else it needs: 05 and 07 their own TSVs of the test split if 03 has not written them
# yet), 04 reuses 03's TSVs of the train split and 06 04's concept sets. `make all` runs the stages JOBS at a time (default 2), all
# but 01 and 02 with CORTEX_THREADS=1 (01 runs alone, 02 nearly: they keep the profile's threads): on the 2-core CPU
# two single-thread processes do ~1.4x the work of one two-thread process on these small models (optimize.py's
# measurement). A stage's numbers depend on its own thread count only, never on what runs beside it; JOBS=1 runs
# every stage alone on the profile's threads, the default for imagenet (one GPU: two stages would share its memory)
# and paper-dry (12.5 GB a stage on a 24 GB machine).
JOBS    ?= $(if $(filter imagenet paper-dry,$(PROFILE)),1,2)
stage    = $(filter $(EXEC)/$(1)_%,$(OUTS))
AFTER_02 = $(foreach s,03 04 05 06 07 08,$(call stage,$(s)))
ifneq ($(JOBS),1)
$(AFTER_02): STAGE_ENV := CORTEX_THREADS=1
endif
$(call stage,02): $(call stage,01)
$(call stage,08): $(call stage,01)
$(call stage,03) $(call stage,05) $(call stage,07): $(call stage,02)
$(call stage,04): $(call stage,03)
$(call stage,06): $(call stage,04)

# Two lanes after 02 (order-only prerequisites: an order, not a dependency), of about the same CPU time, so that
# with JOBS=2 neither core idles while the other works: 05 (the longest; its Gumbel runs are two processes of their
# own), 08, 06; and 03, 04, 07. Measured (toy, AVX2 AMD EPYC Zen 5, wall seconds with the other lane beside): 05 + 08
# + 06 = 259 + 56 + 10, 03 + 04 + 07 = 117 + 112 + 99. With 06 after 04 in the other lane that lane ended 23 s
# after this one; with 08 beside 02, 05 ended ~75 s before the other lane; without any order 04 once ran last,
# alone on one thread (~200 s of one idle core).
ifneq ($(JOBS),1)
$(call stage,08): | $(call stage,05)
$(call stage,06): | $(call stage,08)
$(call stage,07): | $(call stage,04)
endif

# 00 reports on the VQGM and the evaluators; 01 builds (or installs the shipped) VQGM and evaluators as well, the same
# way on the same threads, and needs nothing else of 00's. So with JOBS=2, 01 runs first, alone on the profile's
# threads, and 00 (one thread) beside 02: 02 keeps two cores ~1.2x busy (user / wall seconds), 00 takes the rest.
# Nothing builds a model twice, or two at once (00 finds what 01 built), and every number is what 00 gave before
# (its tables are the same on one thread as on two; so are its figures on the toy profile, while toy-maskgit's
# reconstruction figure differs in float rounding of some pixels). JOBS=1: 00, 01, 02.
ifneq ($(JOBS),1)
$(call stage,00): | $(call stage,01)
$(call stage,00): STAGE_ENV := CORTEX_THREADS=1
else
$(call stage,01): $(call stage,00)
endif

# the notebooks alone (`make all` runs this with -j)
.PHONY: notebooks
notebooks: $(foreach s,01 02 00 05 03 04 06 07 08,$(call stage,$(s)))

# The seed replicates every verdict rests on (replicates 1 .. replicates - 1: retrained extractors,
# redrawn noise; results/<profile>/seeds/r<r>/tables), then the claims ledger over them and the README block.
# Needs `make all` first (replicate 0 is its run); cached and resumable like it.
seeds: $(OUTS)
	$(PY) -m cortex_nb seeds --profile $(PROFILE)
	@if [ "$(PROFILE)" = toy ]; then $(PY) tools/readme.py toy; fi
	$(PY) -m cortex_nb manifest --profile $(PROFILE)

# `make test`: the unit tests but the slow ones, in two single-thread processes (pytest-xdist; a test module stays in
# one process, so its module fixtures are built once), and nbval beside them (the unit tests write only under
# their own temporary directories, nbval under results/smoke and figures/smoke: the two never share a file; each
# prints its report when it ends). `make test-slow`: the tests marked slow (the paper-dry slice at the real shapes:
# ~6 min, 12.5 GB); CI (.ci/run) runs both.
test: $(STAMP)
	@$(MAKE) --no-print-directory --output-sync=target -j2 unit nbval

# CORTEX_STRICT_FIGURES: a figure with text over text or a wide empty band fails the test that saves it (cortex_nb.io.figures)
unit: $(STAMP)
	CORTEX_STRICT_FIGURES=1 CORTEX_PROFILE=smoke $(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile tests

# the slow tests, and the property tests (tests/test_properties.py) with Hypothesis's thorough profile: 2000 examples
# each instead of make test's 25
test-slow: $(STAMP)
	CORTEX_STRICT_FIGURES=1 CORTEX_PROFILE=smoke HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -m "slow or property" tests

nbval: $(STAMP)
	CORTEX_STRICT_FIGURES=1 CORTEX_PROFILE=smoke $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --current-env $(NBS)

# JupyterLab rooted at the checkout (so results/ and figures/ are in its file browser), opening notebooks/.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks

clean:
	rm -rf results/*/cache results/*/executed results/*/book results/*/timings results/*/deps results/smoke figures/smoke

bench: $(STAMP)
	@start=$$(date +%s); \
	for b in benchmarks/bench_*.py benchmarks/widgets_redraw.py benchmarks/paper_scale.py; do \
	  echo "== $$b"; $(PY) $$b $(BENCH_ARGS) || exit 1; \
	done; \
	$(PY) benchmarks/report.py || exit 1; \
	echo "make bench took $$(( $$(date +%s) - start )) s (results/benchmarks.md)"

# The token atlas: a static HTML site of the concept tokens (results/<profile>/atlas/index.html; opens
# from file://, offline). Needs `make all` first (its caches); takes about a minute on the toy profile.
atlas: $(STAMP)
	$(PY) -m cortex_nb atlas --profile $(PROFILE)

# The companion as a static site (Jupyter Book) from the executed notebooks of `make all` (nothing runs again), the
# docs pages, the claims ledger and, when `make atlas` wrote it, the token atlas: results/<profile>/book/html/index.html
# (opens from file://, no network request at view time).
book: $(STAMP)
	$(PY) -m cortex_nb book --profile $(PROFILE)

# The GPU check (issue #17): on a CUDA machine with nothing downloaded, the paper's models at their real shapes with
# random weights (cortex_nb.vqgm.paper_dry) -- sampling with the KV cache, masked evaluation at 224 px, CE / RE training,
# TSV and Gumbel selection at larger counts -> results/benchmarks/gpu.{json,md}. Made to take <= 8 min on one GPU.
gpu-check: $(STAMP)
	$(PY) benchmarks/paper_dry.py --gpu

# Notebook 08's opt-in control: the prior retrained on an unbiased world (scene_bias 0.25) and its samples
# tested like the generator's (minutes of prior training, cached and resumable); writes bias_summary_generator_control
# and bias_generator_control beside `make all`'s tables. Toy world only.
bias-control: $(STAMP)
	$(PY) -m cortex_nb bias --profile $(PROFILE) --set bias.generator_control=true
	$(PY) -m cortex_nb manifest --profile $(PROFILE)

# Real-browser test of the token browser (notebook 06 in headless Chromium via Voilà + Playwright,
# tests/browser). Installs Chromium from apt only when /usr/bin/chromium is missing (Playwright's
# own browser download is not used) and the `browser` extra only when it is not importable.
CHROMIUM ?= /usr/bin/chromium
.PHONY: browser-setup browser-test
browser-setup: $(STAMP)
	@test -x $(CHROMIUM) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }
	@$(PY) -c "import playwright.sync_api, voila" 2>/dev/null || $(PY) -m pip install -q -e ".[test,browser]"

browser-test: browser-setup
	CORTEX_BROWSER_TEST=1 CORTEX_PROFILE=smoke CORTEX_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q tests/browser
