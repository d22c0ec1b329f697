"""The names of the external-evaluator folder layouts that :mod:`rewardflow.eval.layouts` writes, in a module that
imports nothing, so that the command line offers them without loading torch (see rewardflow/runtime.py)."""

LAYOUTS = ("plain", "geneval", "t2i-compbench", "vbench")
VIDEO_LAYOUTS = ("vbench",)
