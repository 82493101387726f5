"""Property test: random malformed logs either load with the right count or fail with a UserError.

Missing values, duplicated rows, unsorted times, huge ids, unicode ids, mixed types, garbage times
and empty files. The expected count is computed independently from the rows the test wrote: every
row whose session, item and timestamp fields are non-empty.
"""
import csv
import os
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqrec.config import load_config
from seqrec.errors import UserError
from seqrec.loaders import load_events
from seqrec.preprocess import prepare

ids = st.one_of(
    st.integers(min_value=-5, max_value=50),
    st.integers(min_value=2 ** 62, max_value=2 ** 80),                         # huge
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6),  # unicode, any
    st.sampled_from(["", "NA", "None", "nan", "1e5", "007", " 3 "]),            # empty = missing
)
times = st.one_of(
    st.integers(min_value=0, max_value=10 ** 12),
    st.floats(min_value=-1e9, max_value=1e12, allow_nan=False),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(["", "yesterday", "2024-13-45", "NaT"]),
)
rows = st.lists(st.tuples(ids, ids, times, st.sampled_from(["click", "purchase", "view", ""])), max_size=25)


def as_csv(header: bool, table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(["session_id", "item_id", "timestamp", "event"])
    for row in table:
        writer.writerow(row)
    return out.getvalue()


@settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=rows, duplicate=st.booleans(), header=st.booleans())
def test_malformed_logs_load_with_the_right_count_or_fail_cleanly(tmp_path, table, duplicate, header):
    table = table + table[:3] if duplicate else table
    path = tmp_path / "log.csv"
    path.write_text(as_csv(header, table), encoding="utf-8")
    cfg = load_config(overrides=["data.source=csv", f"data.path={path}", "data.min_item_count=1",
                                 "data.min_session_len=1", "data.split=[1.0, 0.0, 0.0]"])
    expected = sum(1 for row in table if all(str(v).strip() != "" for v in row[:3]))
    try:
        events = load_events(cfg.data.to_dict(), cfg.sim.to_dict())
        prepared = prepare(events, cfg.data.to_dict())
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert header, "a file without the header row must not load"
    assert len(prepared.items) == expected
    assert prepared.items.min() >= 1 and prepared.items.max() == prepared.num_items
