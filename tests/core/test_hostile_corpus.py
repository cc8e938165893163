"""The hostile-XML corpus through the real CLI, one forked process per document.

Bounds per case (issue 14): no traceback, never exit 70 (internal error), no hang over
10 s, peak memory under 256 MiB.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("hostile_corpus", Path(__file__).with_name("hostile_corpus.py"))
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
corpus = _module.corpus

MIN_CASES = 189
MAX_SECONDS = 10.0
MAX_RSS_KIB = 256 * 1024


def test_corpus_is_large_enough() -> None:
    assert len(corpus()) >= MIN_CASES


def test_every_hostile_document_is_a_clean_refusal(tmp_path: Path) -> None:
    docs = corpus()
    for name, data in docs.items():
        (tmp_path / f"{name}.xml").write_bytes(data)
    runner = Path(__file__).with_name("hostile_corpus.py")
    proc = subprocess.run([sys.executable, str(runner), str(tmp_path)], capture_output=True, text=True,
                          timeout=len(docs) * MAX_SECONDS)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(docs)
    bad = [r for r in results if r["traceback"] or r["exit"] not in (0, 2) or r["seconds"] > MAX_SECONDS
           or r["max_rss_kib"] > MAX_RSS_KIB]
    assert not bad, json.dumps(bad, indent=1)
    refused = [r for r in results if r["exit"] == 2]
    assert all(r["stderr"].startswith("hotluks: error: ") for r in refused)
    # everything but a few mutations that still form a valid disk is refused
    accepted = sorted(r["case"] for r in results if r["exit"] == 0)
    assert all(name.startswith("mutation-") for name in accepted), accepted
