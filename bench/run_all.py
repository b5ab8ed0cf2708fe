"""`make bench`: runs every benchmark one after the other and writes bench/RESULTS.md.

Benchmarks share the 2 cores, so they never run at the same time. Each script is also runnable alone and
prints its own section.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# Each entry: a script and its arguments; one section of RESULTS.md each.
BENCHES = (("data_pipeline.py",), ("segmentation.py",), ("segmentation.py", "--levers"), ("detection.py",),
           ("two_stage.py",))

HEADER = """# tfvision benchmarks

Produced by `make bench` (`bench/run_all.py`); each section says its machine, versions and protocol.
Figures are medians; the machines are shared, so compare figures from the same run.

"""


def main() -> int:
    sections = []
    for name, *arguments in BENCHES:
        with tempfile.NamedTemporaryFile("r", suffix=".md", delete=False) as out:
            path = out.name
        print(f"== {' '.join([name, *arguments])}", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, name), *arguments, "--out", path], check=True)
        with open(path, encoding="utf-8") as f:
            sections.append(f.read())
        os.remove(path)
    target = os.path.join(HERE, "RESULTS.md")
    with open(target + ".tmp", "w", encoding="utf-8") as f:
        f.write(HEADER + "\n\n".join(sections))
    os.replace(target + ".tmp", target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
