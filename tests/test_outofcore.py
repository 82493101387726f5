"""The out-of-core pool build (DuckDB: seqrec/data/outofcore.py, scan.py) against the in-memory reference
(loaders + preprocess.prepare + write_pool in pandas and NumPy): the same files, byte for byte, for
every source's fixtures, CSV and Parquet, and the same error for bad input."""
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from replay_buffer import Pool, build_pool, write_pool
from seqrec.data.loaders import load_events
from seqrec.data.preprocess import SPLITS, prepare, split_events
from seqrec.running.config import WORLDS, load_config
from seqrec.running.errors import UserError

SMALL = ["data.min_item_count=1", "data.min_session_len=1", "data.split=[1.0,0.0,0.0]"]


def reference_pool(cfg, folder: Path) -> Path:
    """The pool as the in-memory code writes it (meta.json aside)."""
    data = cfg.data.to_dict()
    world = cfg[WORLDS[data["source"]]].to_dict() if data["source"] in WORLDS else None
    write_pool(prepare(load_events(data, world), data), {}, folder)
    return folder


def assert_same_pool(built: Pool, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir() if p.name != "meta.json")
    assert sorted(p.name for p in built.dir.iterdir() if p.name != "meta.json") == names
    for name in names:
        assert (built.dir / name).read_bytes() == (reference / name).read_bytes(), name
    offsets, purchase = np.load(reference / "offsets.npy"), np.load(reference / "purchase.npy")
    for split in SPLITS:                     # meta.json's counts against the events of each split, one by one
        events = split_events(offsets, built.meta["splits_sessions"], built.split_mode, split)
        sessions = np.unique(np.searchsorted(offsets, events, side="right") - 1)
        assert built.meta["splits"][split] == {"sessions": len(sessions), "events": len(events),
                                               "purchases": int(purchase[events].sum())}, split


def built_and_reference(tmp_path, overrides):
    cfg = load_config(overrides=overrides + [f"pool.dir={tmp_path / 'pool'}"])
    return build_pool(cfg), reference_pool(cfg, tmp_path / "reference")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# Each CSV fixture of tests/test_loaders.py (and a few more), read by DuckDB and by pandas.
CSV_LOGS = {
    "events and numeric times": ("session_id,item_id,timestamp,event\n1,10,100,click\n1,11,101,purchase\n"
                                 "2,10,50,view\n", []),
    "renamed columns, ISO times": ("user,product,when,kind\nu1,apple,2024-01-01T10:00:00Z,seen\n"
                                   "u1,pear,2024-01-01T10:00:30Z,bought\n",
                                   ["data.columns.session_id=user", "data.columns.item_id=product",
                                    "data.columns.timestamp=when", "data.columns.event=kind",
                                    "data.purchase_events=[bought]"]),
    "reward column": ("session_id,item_id,timestamp,reward\n1,10,1,4.2\n1,11,2,0.5\n1,12,3,3.9\n", []),
    "all clicks": ("session_id,item_id,timestamp\n1,1,1\n1,2,2\n", []),
    "missing ids": ("session_id,item_id,timestamp\n1,1,1\n1,,2\n,3,3\n2,4,4\n", []),
    "NaN ids": ("session_id,item_id,timestamp\n1,10,1\n1,NaN,2\n2,11,3\nnan,12,4\n", []),
    "leading zeros": ("session_id,item_id,timestamp\n1,007,1\n1,x,2\n", []),
    "far years": ("session_id,item_id,timestamp\n1,1,0001-01-01T00:00:00Z\n1,2,2263-01-01T00:00:00Z\n"
                  "1,3,2024-01-01T00:00:30.5Z\n", []),
    "epoch and ISO mixed": ("session_id,item_id,timestamp\n1,10,1709287200\n1,11,2024-03-01T10:01:00\n", []),
    "duplicates dropped": ("session_id,item_id,timestamp,event\n1,10,1,click\n1,10,1,click\n1,10,1,purchase\n"
                           "1,11,2,click\n1,10,1,click\n", []),
    "duplicates kept": ("session_id,item_id,timestamp,event\n1,10,1,click\n1,10,1,click\n1,11,2,click\n",
                        ["data.drop_duplicates=false"]),
    "dropped events": ("session_id,item_id,timestamp,event\n1,10,1,view\n1,11,2,transaction\n2,10,3,addtocart\n",
                       ["data.purchase_events=[addtocart]", "data.drop_events=[transaction]"]),
    "slates": ("session_id,item_id,timestamp,shown_0,shown_1,shown_2,slate_logp\n"
               "1,10,1,10,11,12,-1.5\n1,11,2,11,10,,-2.0\n2,12,1,99,12,10,-1.0\n", []),
    "text slates": ("session_id,item_id,timestamp,shown_0,shown_1,slate_logp\nu,a,1,a,zz,-1\nu,b,2,b,a,-1\n", []),
    "quoted text ids": ('session_id,item_id,timestamp\n"s,1","a ""b""",1\n"s,1",c,2\n', []),
    "padded ids and events": ('session_id,item_id,timestamp,event\n a ,x ,1, purchase\n"\ta",x,2,click\n'
                              'a, NaN ,3,click\n a, 7,4 ,click\nb,7,5,click\n', []),
    "padded integer ids": ("session_id,item_id,timestamp\n 1,2,1\n1 , 3,2\n", []),
    "same times keep the file's order": ("session_id,item_id,timestamp\n2,5,1\n1,7,1\n1,6,1\n2,4,1\n", []),
}


@pytest.mark.parametrize("name", sorted(CSV_LOGS))
def test_csv_builds_the_reference_pool(tmp_path, name):
    text, overrides = CSV_LOGS[name]
    f = write(tmp_path / "log.csv", text)
    built, reference = built_and_reference(tmp_path, ["data.source=csv", f"data.path={f}", *SMALL, *overrides])
    assert_same_pool(built, reference)


def random_log(n: int, seed: int, text_ids: bool) -> pd.DataFrame:
    """A log with what practitioners' have: interleaved sessions, ties in time, repeats, rare items,
    missing cells, string (hash) ids, slates."""
    rng = np.random.default_rng(seed)
    session = rng.integers(0, n // 6, n)
    item = rng.zipf(1.5, n) % 300
    frame = pd.DataFrame({"session_id": session, "item_id": item, "timestamp": rng.integers(0, n // 3, n),
                          "event": rng.choice(["click", "click", "click", "purchase", "view"], n)})
    if text_ids:
        frame["session_id"] = [f"{s * 2654435761 % 2**32:08x}" for s in session]
        frame["item_id"] = [f"sku-{i:05d}" for i in item]
    frame.loc[rng.random(n) < 0.01, "item_id"] = None
    frame = pd.concat([frame, frame.iloc[rng.integers(0, n, n // 50)]], ignore_index=True)   # exact repeats
    frame["shown_0"], frame["shown_1"] = frame["item_id"], frame["item_id"].sample(frac=1, random_state=seed).values
    frame["slate_logp"] = -rng.random(len(frame))
    return frame


@pytest.mark.parametrize("text_ids", [False, True])
@pytest.mark.parametrize("split", [
    "data.split_mode=random", "data.split_mode=temporal", "data.split_mode=loo",
    "data.max_sessions=150", "data.min_item_count=5",
])
def test_a_larger_log_builds_the_reference_pool_in_every_split_and_filter(tmp_path, split, text_ids):
    f = tmp_path / "log.csv"
    random_log(3000, seed=len(split), text_ids=text_ids).to_csv(f, index=False)
    built, reference = built_and_reference(tmp_path, ["data.source=csv", f"data.path={f}", split])
    assert_same_pool(built, reference)
    assert built.meta["num_events"] > 500


def to_parquet(csv: Path, target: Path, parts: int = 1) -> None:
    """The CSV log as Parquet (DuckDB writes it: pandas has no Parquet engine here), in `parts` files."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{csv}', all_varchar = true)")
    if parts == 1:
        con.execute(f"COPY t TO '{target}' (FORMAT parquet)")
        return
    target.mkdir()
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    for k in range(parts):
        con.execute(f"COPY (SELECT * FROM t LIMIT {-(-rows // parts)} OFFSET {k * -(-rows // parts)}) "
                    f"TO '{target / f'part-{k}.parquet'}' (FORMAT parquet)")


@pytest.mark.parametrize("how", ["data.source=parquet", "data.source=csv"])
@pytest.mark.parametrize("parts", [1, 3])
def test_parquet_file_or_folder_of_parts_builds_the_csv_pool(tmp_path, how, parts):
    """A Parquet log (by data.source, or by its extension) gives the pool its CSV gives."""
    f = tmp_path / "log.csv"
    random_log(2000, seed=parts, text_ids=True).to_csv(f, index=False)
    target = tmp_path / ("parts" if parts > 1 else "log.parquet")
    to_parquet(f, target, parts)
    built = build_pool(load_config(overrides=[how, f"data.path={target}", f"pool.dir={tmp_path / 'pool'}"]))
    reference = reference_pool(load_config(overrides=["data.source=csv", f"data.path={f}"]), tmp_path / "reference")
    assert_same_pool(built, reference)


@pytest.mark.parametrize("overrides", [
    ["sim.num_sessions=300", "sim.num_items=60"],
    ["data.source=recsim", "recsim.num_sessions=60", "recsim.num_items=40", "data.min_item_count=1"],
])
def test_worlds_build_the_reference_pool(tmp_path, overrides):
    built, reference = built_and_reference(tmp_path, overrides)
    assert_same_pool(built, reference)


def test_every_other_source_builds_the_reference_pool(tmp_path):
    rr = write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
               "1433221332117,257597,view,355908,\n1433224214164,992329,view,248676,\n"
               "1433221999827,257597,addtocart,355908,\n1433222276276,257597,transaction,355908,4000\n")
    yc = tmp_path / "yc"
    yc.mkdir()
    write(yc / "yoochoose-clicks.dat", "1,2014-04-07T10:51:09.277Z,214536502,0\n"
          "1,2014-04-07T10:54:09.868Z,214536500,0\n2,2014-04-07T13:56:37.614Z,214662742,S\n")
    write(yc / "yoochoose-buys.dat", "1,2014-04-07T10:55:00.000Z,214536500,12462,1\n")
    ml = write(tmp_path / "u.data", "1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t50\n")
    rb = write(tmp_path / "d.inter", "session_id:token\titem_id:token\ttimestamp:float\n1\ta\t5\n1\tb\t6\n2\ta\t1\n")
    for k, (source, path) in enumerate([("retailrocket", rr), ("yoochoose", yc), ("movielens", ml), ("recbole", rb)]):
        folder = tmp_path / source
        folder.mkdir()
        built, reference = built_and_reference(folder, [f"data.source={source}", f"data.path={path}", *SMALL])
        assert_same_pool(built, reference)


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("session_id,item,timestamp\n1,2,3\n", "no column 'item_id'"),
    ("session_id,item_id,timestamp\n", "has no events"),
    ("session_id,item_id,timestamp\n1,2,yesterday\n", "neither a number nor an ISO-8601 time"),
    ("session_id,item_id,timestamp,reward\n1,2,3,lots\n", "column 'reward' has a value that is not a number"),
    ("session_id,item_id,timestamp\n,,1\n", "every row lacks"),
    ("session_id,item_id,timestamp,shown_0,slate_logp\n1,10,1,ten,-1\n", "holds 'ten', which is not an item id"),
    ("session_id,item_id,timestamp,shown_0,slate_logp\nu,a,1,x,-1\n", "names no item of the log"),
    ("session_id,item_id,timestamp,shown_0,slate_logp\n1,10,1,10,often\n", "holds 'often', which is not a number"),
])
def test_bad_input_gives_the_reference_error(tmp_path, content, message):
    f = write(tmp_path / "log.csv", content)
    cfg = load_config(overrides=["data.source=csv", f"data.path={f}", f"pool.dir={tmp_path / 'pool'}", *SMALL])
    with pytest.raises(UserError, match=message) as built:
        build_pool(cfg)
    with pytest.raises(UserError) as reference:
        reference_pool(cfg, tmp_path / "reference")
    assert str(built.value) == str(reference.value)
    assert not (tmp_path / "pool").exists()


def test_a_missing_file_or_an_empty_folder_is_a_clear_error(tmp_path):
    for path, message in ((tmp_path / "nope.csv", "not found"), (tmp_path, "holds no .parquet files")):
        with pytest.raises(UserError, match=message):
            build_pool(load_config(overrides=["data.source=parquet", f"data.path={path}",
                                              f"pool.dir={tmp_path / 'pool'}"]))


def test_a_corrupt_parquet_file_is_one_clear_error(tmp_path):
    f = write(tmp_path / "log.parquet", "this is not parquet\n")
    with pytest.raises(UserError, match=r"log.parquet could not be read as Parquet \(.*\); check the file's format"):
        build_pool(load_config(overrides=["data.source=parquet", f"data.path={f}", f"pool.dir={tmp_path / 'pool'}"]))
    assert not (tmp_path / "pool").exists()


def test_a_new_part_file_makes_the_pool_stale(tmp_path):
    from replay_buffer import stale_reason
    f = tmp_path / "log.csv"
    random_log(600, seed=0, text_ids=False).to_csv(f, index=False)
    to_parquet(f, tmp_path / "parts", parts=2)
    cfg = load_config(overrides=["data.source=parquet", f"data.path={tmp_path / 'parts'}", f"pool.dir={tmp_path / 'pool'}"])
    build_pool(cfg)
    assert stale_reason(cfg) is None
    to_parquet(f, tmp_path / "more.parquet")
    (tmp_path / "more.parquet").rename(tmp_path / "parts" / "part-9.parquet")
    assert stale_reason(cfg) == "data config or input files changed"
