"""Does SOLI's ONNX model give the same captions on aarch64 (ARM64) onnxruntime as on x86? Checked on this x86
machine with an aarch64 Python 3.11 under qemu-user (set up by scripts/setup_arm64.sh):

    scripts/setup_arm64.sh
    .venv/bin/python scripts/check_arm.py                       # int8 (arm64 target) 160 + fp32 20 dev images
    .venv/bin/python scripts/check_arm.py --onnx DIR --num-images 30 --cpu cortex-a72 --out /tmp/arm
    .venv/bin/python scripts/check_arm.py --onnx DIR --images a.jpg b.png
    .venv/bin/python scripts/check_arm.py --render-only         # check.md again from check.json

Writes check.json and check.md (default benchmarks/arm64/). Exit status: 0 all identical, 3 some caption differs,
1 an aarch64 run failed. The check itself is `soli_hf.bench.arm_check` (its docstring says what it runs), the
report's text `soli_hf.bench.arm_check_report` and its templates.
"""

import sys

from soli_hf.bench.arm_check import main

if __name__ == "__main__":
    sys.exit(main())
