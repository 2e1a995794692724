# The two commands of the README. Both set up .venv first (seconds when it is already complete).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-det demo-rcnn demo-multi test test-fast docs bench rehearsal clean-output

setup:
	@bash tools/setup_env.sh

## Main job: teacher -> students distillation on the embedded synthetic data, with a report.
demo: setup
	$(PY) tools/demo.py

## Detection demo: RetinaNet X50-tiny -> RetinaNet MobileNetV2 x0.5 on the synthetic scenes (no KD, LAD, MGD).
demo-det: setup
	$(PY) tools/demo.py --task det

## Two-stage demo: Mask R-CNN X50-tiny -> Mask R-CNN MobileNetV2 x0.5 (no KD, LAD on P2-P6).
demo-rcnn: setup
	$(PY) tools/demo.py --task rcnn

## Multi-teacher demo: two teachers, each trained on half the classes -> the student under each
## alone and under both (MODEL.DISTILL.TEACHERS); one run at a time on one thread.
demo-multi: setup
	$(PY) tools/demo.py --task multi

## Tests (CPU), one pytest worker per core, one thread each (the subprocess trainings the tests
## start inherit OMP_NUM_THREADS=1, so the workers do not oversubscribe the cores).
## pytest's exit code 5 (nothing collected) counts as a failure.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -n auto

test: setup
	@$(PYTEST) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

## The fast unit suite only (no subprocess trainings or full-size builds: tests marked slow).
test-fast: setup
	@$(PYTEST) tests -m "not slow"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

## The documentation site (Sphinx + MyST) into docs/_build/html, warnings as errors, as
## tests/test_docs.py builds it in make test. Open docs/_build/html/index.html.
docs: setup
	OMP_NUM_THREADS=1 $(PY) -m sphinx -W --keep-going -n -b html docs docs/_build/html

bench: setup
	$(PY) bench/bench_losses.py

## Full-size rehearsal on CPU (not part of make test): one distillation config per family of the
## index (Cityscapes/VOC/ADE20K segmentation, Table 7 RetinaNet, Faster/Mask R-CNN) on fabricated
## data at the config's real size, 2 training iterations + one evaluation each, through the
## documented train command; writes output/rehearsal/rehearsal.md (build, step, peak memory, eval,
## step / floor). REHEARSAL_ARGS: e.g. --families cityscapes, --reduced, --memory-limit-gib 12.
rehearsal: setup
	$(PY) tools/rehearsal.py --out output/rehearsal $(REHEARSAL_ARGS)

clean-output:
	rm -rf output
