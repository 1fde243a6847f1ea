"""The device install on ARM64 under qemu: tools/arm64/smoke.sh, minutes long, so only with EDGELEARN_ARM64=1.

It needs root (debootstrap), qemu-user-static and the network the first time (Debian packages, aarch64 wheels).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).parents[2] / "tools" / "arm64" / "smoke.sh"

pytestmark = [pytest.mark.arm64,
              pytest.mark.skipif(os.environ.get("EDGELEARN_ARM64") != "1", reason="set EDGELEARN_ARM64=1 to run")]


def test_the_device_install_learns_serves_and_shares_knowledge_on_arm64():
    done = subprocess.run(["bash", str(SMOKE)], env={**os.environ, "EDGELEARN_PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=3600)  # the first run builds the root file system

    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    assert "device: Python 3.11" in done.stdout and "on aarch64" in done.stdout
    for step in ("import torch fails", "edgelearn learn + predict from the bundle: blue",
                 "station taught 2 classes, predicted blue", "package imported on"):
        assert f"ok   {step}" in done.stdout, done.stdout
