"""The hash-pinned lock (on stdin) as it applies to one Python version (argv[1]): the
requirements whose markers that version meets, markers dropped, hashes kept (stdout).

`pip download` judges markers by the Python it runs on; an image's Python may differ from
the host's (Debian's 3.11.2 needs async-timeout, a 3.11.7 host does not)."""

import re
import sys

from packaging.markers import Marker, default_environment

version = sys.argv[1]
environment = default_environment()
environment.update(python_full_version=version, python_version=".".join(version.split(".")[:2]))
# One block per requirement: a `name==version ; marker \` line, then its hashes.
for block in re.split(r"\n(?=\S)", sys.stdin.read().strip()):
    head, _, rest = block.partition("\n")
    requirement, _, marker = head.rstrip(" \\").partition(" ; ")
    if marker and not Marker(marker).evaluate(environment):
        continue
    print(f"{requirement} \\\n{rest}" if rest else requirement)
