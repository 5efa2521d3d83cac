"""docs/performance.md's benchmark summary is the one bench/compare.py rendered from its recorded run."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def report_module(name: str = "_report") -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_performance_summary_is_the_recorded_run() -> None:
    """performance.md's peer summary is generated from the recorded run."""
    report = report_module("_docs")
    run = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    text = (ROOT / "docs" / "performance.md").read_text()
    start = text.index(report.SUMMARY_BEGIN) + len(report.SUMMARY_BEGIN)
    end = text.index(report.SUMMARY_END)
    assert text[start:end].strip() == report.performance_summary(run).strip()
    assert run["rounds"] >= 3 and not run["quick"]


def test_benchmarks_md_holds_the_recorded_tables() -> None:
    """benchmarks.md holds the recorded run's tables and its charts."""
    report = report_module()
    run = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert report.render(run) in text
    for image in ("bench_caller.png", "bench_exit.png"):
        assert f"]({image})" in text and (ROOT / "docs" / image).stat().st_size > 10_000
