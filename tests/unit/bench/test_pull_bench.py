"""`ollamamax bench pull` runs end to end on a tiny blob (its figures are not asserted)."""

import pytest

from ollamamax.bench import pull as bench


@pytest.mark.slow
def test_bench_pull_times_every_part_count(tmp_path):
    result = bench.run(bench.Options(size_mb=1, parts=(1, 4), repeat=1, work_dir=str(tmp_path)),
                       progress=lambda _line: None)
    assert result["size_bytes"] == 1_000_000
    assert [r["parts"] for r in result["runs"]] == [1, 4]
    assert all(len(r["seconds"]) == 1 for r in result["runs"])
    assert list(tmp_path.iterdir()) == []  # the stores are removed
