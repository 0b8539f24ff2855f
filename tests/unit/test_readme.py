"""The README's quick start is what CI runs."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    quick_start = readme.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(quick_start) == 2
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert quick_start[1] in ci.splitlines()
