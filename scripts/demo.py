"""The main job, offline: caption redistributable sample photos (shipped inside scikit-image's wheel) with the
shipped default model. `make demo` runs it; the photos are written to outputs/demo/ and made low-resolution by
the model's processor, and outputs/demo.html shows each LR input with its caption.

    python scripts/demo.py [--model DIR] [extra `soli caption` flags, e.g. --num-beams 1]
"""

import sys
from pathlib import Path

from soli_hf.bench.sample_photos import load_sample_photos
from soli_hf.cli import main

OUTPUT = Path("outputs")

if __name__ == "__main__":
    folder = OUTPUT / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in load_sample_photos().items():
        photo.save(folder / f"{name}.png")
    sys.exit(main(["caption", str(folder), "--html", str(OUTPUT / "demo.html"), *sys.argv[1:]]))
