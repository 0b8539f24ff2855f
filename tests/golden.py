"""Golden files: values a silent change would alter (masks, sample order, first losses), pinned in
tests/assets/golden/ and compared exactly (losses: to the last few bits a CPU's kernels may differ by).

A test builds the values it pins as a JSON-able dict and calls `check_golden(name, values, command)`. With
REGENERATE_GOLDEN=1 in the environment the file is rewritten instead and the test is reported as skipped, so a
regeneration never passes for a check: review the diff of tests/assets/golden/ and commit it with the change
that made it."""

import json
import os
import re

import pytest

from tests.conftest import ASSETS, ROOT

GOLDEN = os.path.join(ASSETS, "golden")
REGENERATE = "REGENERATE_GOLDEN"


def differences(expected, got, where="", tolerance=0.0):
    """Paths (`masks.seq128.whole_words[2].positions`) where `got` differs from `expected`, with both values."""
    if isinstance(expected, dict) and isinstance(got, dict):
        found = []
        for key in sorted(set(expected) | set(got)):
            if key not in got or key not in expected:
                found.append(f"{where}.{key}: {'missing now' if key not in got else 'new'}")
            else:
                found += differences(expected[key], got[key], f"{where}.{key}", tolerance)
        return found
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got) and not all(
            isinstance(value, (int, float)) for value in expected):
        return [d for index, (e, g) in enumerate(zip(expected, got)) for d in
                differences(e, g, f"{where}[{index}]", tolerance)]
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got) and tolerance:
        if all(abs(e - g) <= tolerance * abs(e) for e, g in zip(expected, got)):
            return []
    elif isinstance(expected, float) and isinstance(got, float) and tolerance:
        if abs(expected - got) <= tolerance * abs(expected):
            return []
    if expected == got:
        return []
    return [f"{where}: pinned {short(expected)}, now {short(got)}"]


def readable_json(values):
    """Indented JSON with every list of numbers on one line, so a diff shows which sample changed."""
    text = json.dumps(values, indent=1, sort_keys=True)
    numbers = r"\[\s*([-+0-9.eE,\s]*?)\s*\]"
    return re.sub(numbers, lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text)


def short(value, limit=300):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_golden(name, values, meaning, command, tolerance=0.0):
    """Compares `values` with tests/assets/golden/<name>.json; `meaning` says what a difference means for a
    user, `command` regenerates the file. Numbers compare exactly unless `tolerance` (relative) is given."""
    path = os.path.join(GOLDEN, f"{name}.json")
    values = json.loads(json.dumps(values))  # what the file would hold: tuples as lists, keys as strings
    if os.environ.get(REGENERATE) == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(readable_json({"regenerate": command, **values}) + "\n")
        pytest.skip(f"{REGENERATE}=1: rewrote {os.path.relpath(path, ROOT)}; review its diff and commit it")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: make it with `{command}`")
    with open(path, encoding="utf-8") as handle:
        pinned = json.load(handle)
    pinned.pop("regenerate", None)
    found = differences(pinned, values, name, tolerance)
    if found:
        shown = "\n  ".join(found[:8]) + (f"\n  … and {len(found) - 8} more" if len(found) > 8 else "")
        pytest.fail(f"{name}: values pinned in tests/assets/golden/{name}.json changed:\n  {shown}\n{meaning}\n"
                    f"If the change is deliberate, regenerate the file with `{command}`, review its diff and say "
                    "in the commit (and README's upgrade notes) that runs resumed across it see other values.",
                    pytrace=False)
