"""benchmarks/gpu.sh, the one-call GPU run, with a fake python: every step runs in order,
the kernel tests select the CUDA cases, and what it leaves under OUT fits what the device tool
brings back (at most 8 files, at most two folders down). The real run needs a GPU machine."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  *benchmarks.run*)
    out=$(echo "$*" | sed -E 's/.*--out ([^ ]+).*/\1/')
    mkdir -p "$out"
    for f in results.json summary.md table.md speedup.png memory.png e2e.png; do
      echo x > "$out/$f"; done ;;
  *benchmarks.tune*)
    out=$(echo "$*" | sed -E 's/.*--out ([^ ]+).*/\1/')
    echo '{}' > "$out" ;;
  *get_device_capability*) echo 9.0 ;;
esac
exit 0
"""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_gpu_script_runs_every_step(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out, calls = tmp_path / "out", tmp_path / "calls.log"
    env = dict(os.environ, OUT=str(out), PYTHON=str(fake), CALLS=str(calls), TOTAL_S="300")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = calls.read_text().splitlines()

    def step(word: str) -> int:
        return next(i for i, line in enumerate(lines) if word in line)

    order = [step("pip install"), step("-m pytest"), step("benchmarks.run"),
             step("benchmarks.step"), step("benchmarks.tune")]
    assert order == sorted(order), lines
    tests = lines[step("-m pytest")]
    assert "tests/test_accumulate.py" in tests and "tests/test_project_grads.py" in tests
    assert "cuda or triton or test_dispatch" in tests
    assert "--device cuda" in lines[step("benchmarks.run")]

    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert all(len(f.parts) <= 3 for f in files), files
    assert {"gpu.log", "tuned-cuda.json"} <= {str(f) for f in files}
    assert "done in" in (out / "gpu.log").read_text()
