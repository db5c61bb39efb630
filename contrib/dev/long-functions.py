#!/usr/bin/env python3
"""The longest functions in src/, outside `mod tests`: lines from `fn` to its closing
brace. `contrib/dev/long-functions.py [N]`, run from the top of a checkout, prints the
N longest (default 10) of that checkout's src/.

A reading aid for the code's seams, not a lint: it counts braces in the text, so a brace
inside a string or a comment can throw one count off."""

import pathlib
import re
import sys

FN = re.compile(r"\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(async\s+)?fn\s+(\w+)")


def lengths(path):
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if re.match(r"\s*mod tests\b", line):
            return
        match = FN.match(line)
        if not match:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            text = lines[j]
            if not opened and ";" in text and "{" not in text:
                break  # a declaration without a body
            depth += text.count("{") - text.count("}")
            opened = opened or "{" in text
            if opened and depth <= 0:
                yield j - i + 1, match.group(5)
                break


def main():
    most = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    root = pathlib.Path("src")
    found = [
        (n, str(path), name)
        for path in sorted(root.rglob("*.rs"))
        for n, name in lengths(path)
    ]
    for n, path, name in sorted(found, reverse=True)[:most]:
        print(f"{n:5} {path} {name}")


if __name__ == "__main__":
    main()
