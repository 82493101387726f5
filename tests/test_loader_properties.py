"""Property tests of the CSV loader, derandomized (the same examples on every run).

Valid logs (integer or unicode ids, numeric or ISO times, mixed, duplicated rows) must load, with one
event per distinct row. Malformed ones (missing values, huge ids, mixed types, garbage times, empty
files) load with the right count or fail with a one-line UserError. Expected counts are computed
independently from the rows the test wrote.
"""
import csv
import io
import os
from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqrec.running.config import load_config
from seqrec.running.errors import UserError
from seqrec.data.loaders import load_events
from seqrec.data.preprocess import prepare

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


EXAMPLES = settings(max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LOOSE = ["data.min_item_count=1", "data.min_session_len=1", "data.split=[1.0, 0.0, 0.0]"]

good_ids = st.one_of(st.integers(min_value=-5, max_value=2 ** 62),
                     st.text(alphabet=st.characters(categories=("L",)), min_size=1, max_size=5)
                     .filter(lambda t: t.strip() == t and t.lower() != "nan"))
good_times = st.one_of(st.integers(min_value=0, max_value=2 * 10 ** 9),
                       st.datetimes(min_value=datetime(1971, 1, 1)).map(lambda d: d.isoformat() + "Z"))
good_rows = st.lists(st.tuples(good_ids, good_ids, good_times, st.sampled_from(["click", "purchase", "view"])),
                     min_size=1, max_size=25)


@EXAMPLES
@given(table=good_rows, repeats=st.lists(st.integers(min_value=0, max_value=24), max_size=5))
def test_valid_logs_load_one_event_per_distinct_row(tmp_path, table, repeats):
    table = table + [table[i % len(table)] for i in repeats]                # exact duplicates, anywhere
    path = tmp_path / "log.csv"
    path.write_text(as_csv(True, table), encoding="utf-8")
    cfg = load_config(overrides=["data.source=csv", f"data.path={path}"] + LOOSE)
    prepared = prepare(load_events(cfg.data.to_dict(), cfg.sim.to_dict()), cfg.data.to_dict())
    assert len(prepared.items) == len(set(table))
    assert len(prepared.session_ids) == len({row[0] for row in table})
    assert prepared.num_items == len({row[1] for row in table})


@EXAMPLES
@given(table=rows, duplicate=st.booleans(), header=st.booleans())
def test_malformed_logs_load_with_the_right_count_or_fail_cleanly(tmp_path, table, duplicate, header):
    table = table + table[:3] if duplicate else table
    path = tmp_path / "log.csv"
    path.write_text(as_csv(header, table), encoding="utf-8")
    cfg = load_config(overrides=["data.source=csv", f"data.path={path}", "data.drop_duplicates=false"] + LOOSE)
    expected = sum(1 for row in table if all(str(v).strip().lower() not in ("", "nan") for v in row[:3]))
    try:
        events = load_events(cfg.data.to_dict(), cfg.sim.to_dict())
        prepared = prepare(events, cfg.data.to_dict())
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert header, "a file without the header row must not load"
    assert len(prepared.items) == expected
    assert prepared.items.min() >= 1 and prepared.items.max() == prepared.num_items
