"""horovodrun -np 2 with Gloo on localhost: allreduce and a wrapped optimizer step agree across ranks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "hvd_allreduce.py"


@pytest.mark.slow
def test_horovodrun_two_ranks_allreduce_and_identical_weights(tmp_path):
    horovodrun = Path(sys.executable).with_name("horovodrun")
    out = tmp_path / "result"
    proc = subprocess.run(
        [str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(SCRIPT), str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["size"] == 2 for r in results)
    for r in results:
        assert r["mean"] == [1.5, 1.5, 1.5]
        assert r["sum"] == [3.0, 3.0, 3.0]
    assert results[0]["weights"] == results[1]["weights"]
    # The broadcast made the initial weights identical, and the steps really moved them.
    assert results[0]["initial"] == results[1]["initial"]
    assert len(results[0]["weights"]) == 4 * 2 + 2
    assert results[0]["weights"] != results[0]["initial"]
