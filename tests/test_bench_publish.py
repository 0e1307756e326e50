"""The publish benchmark at a tiny size: every keyspace size and both log modes are measured,
and its section of docs/benchmarks.md replaces itself. Numbers are checked for sense, never
against timing thresholds."""

from __future__ import annotations

import shutil
from pathlib import Path

from inbo.settings import Settings
from pipelines.offline.bench_publish import (
    DOC,
    STEPS,
    PublishParams,
    flatness_table,
    reads_table,
    run_publish_bench,
    write_doc,
)


def test_the_publish_bench_times_each_size_and_reads_with_the_log_on_and_off(
    tmp_path: Path,
) -> None:
    params = PublishParams(
        users=2_000, holding=(4_000, 10_000), shards=2, per_user=10, items=1_000, repeats=1
    )
    report = run_publish_bench(Settings(var_dir=tmp_path / "var"), params)

    measured = [(m.target, m.again) for m in report.publishes]
    assert measured == [(4_000, False), (10_000, False), (4_000, True)]
    for m in report.publishes:
        assert len(m.runs) == 1 and m.target <= m.runs[0].keys_held < m.target + 2 * params.users
        assert all(m.runs[0].seconds[step] > 0 for step in STEPS)
        assert 0 < m.runs[0].stage_redis_seconds < m.runs[0].seconds["stage"]
        assert m.runs[0].redis_cpu_seconds > 0
    first, larger, again = (m.runs[0].versions_held for m in report.publishes)
    assert first == again < larger
    assert [run.aof for run in report.reads] == [True, False]
    for run in report.reads:
        whole = run.phases["publish"]
        assert whole["requests"] > 0 and 0 < whole["p50_ms"] <= whole["p99_ms"] <= whole["max_ms"]
        assert run.misses == 0
        assert (run.fork_ms is not None and run.fork_ms > 0) == run.aof
    assert len(flatness_table(report)) == 2 + 3 and len(reads_table(report)) == 2 + 2
    assert report.payload_bytes > 0

    doc = tmp_path / "benchmarks.md"
    shutil.copy(DOC, doc)
    write_doc(report, doc)
    write_doc(report, doc)
    text = doc.read_text()
    assert text.count("<!-- publish-bench -->") == 1
    assert text.startswith(DOC.read_text().split("<!-- publish-bench -->")[0].rstrip("\n"))
