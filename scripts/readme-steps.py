#!/usr/bin/env python3
"""Rewrite README.md's list of privileged steps from the comments in src/plan.rs.

The unit test `plan::tests::readme_lists_the_steps_of_the_code` fails when the two differ;
this script is how to bring the README back in line (same extraction rules as the test).
"""
import re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
src = (root / "src/plan.rs").read_text()
body = src[src.index("pub fn enter_sandbox"):src.index("/// rlimits for the program")]
steps, continuing = [], False
for line in (l.strip() for l in body.splitlines()):
    m = re.match(r"// (\d+)\. (.*)", line)
    if m:
        steps.append(f"{m.group(1)}. {m.group(2)}")
        continuing = True
    elif continuing and line.startswith("//    "):
        steps[-1] += " " + line[len("//    "):].strip()
    else:
        continuing = False
readme = (root / "README.md").read_text()
begin, end = "<!-- plan:begin -->\n", "\n<!-- plan:end -->"
a, b = readme.index(begin) + len(begin), readme.index(end)
(root / "README.md").write_text(readme[:a] + "\n".join(steps) + readme[b:])
print(f"README.md: {len(steps)} steps")
