"""Save ~20 MB checkpoints in a loop until killed; print "writing N" before and "saved N" after each."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from training.checkpoint import save_checkpoint  # noqa: E402

directory = Path(sys.argv[1])
torch.set_num_threads(1)
step = 0
while True:
    step += 1
    # Every element equals the step, so a reader can tell an intact file from a mixed or torn one.
    state = {"step": step, "payload": torch.full((5_000_000,), float(step))}
    print(f"writing {step}", flush=True)
    save_checkpoint(directory, state, step, keep=3)
    print(f"saved {step}", flush=True)
