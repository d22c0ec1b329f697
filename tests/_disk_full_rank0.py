"""``python tests/_disk_full_rank0.py CONFIG``: ``rewardflow train CONFIG`` where process 0's disk is "full" when it
writes the checkpoint of step 2 (``safetensors.torch.save_file`` raises ENOSPC); used by
tests/test_distributed.py::test_a_failed_checkpoint_write_stops_every_process."""

import errno
import os
import sys

import safetensors.torch

from rewardflow.cli import main

_save = safetensors.torch.save_file


def _full_at_step_2(tensors, filename, *a, **k):
    if os.environ.get("RANK") == "0" and ".tmp_step_0000002" in str(filename):
        raise OSError(errno.ENOSPC, "No space left on device")
    return _save(tensors, filename, *a, **k)


safetensors.torch.save_file = _full_at_step_2
sys.exit(main(["train", sys.argv[1]]))
