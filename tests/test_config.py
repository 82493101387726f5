"""Config defaults, typed overrides, files, and the errors for bad keys and values."""
import pytest
import yaml

from seqrec.running.config import DEFAULT_PATH, load_config
from seqrec.running.errors import UserError


def test_defaults_hold_the_interface_keys():
    cfg = load_config()
    assert cfg.data.source == "synthetic" and cfg.pool.state_len == 0      # whole-session states (issue 11)
    for key in ("data.path", "data.min_session_len", "data.min_item_count", "data.purchase_events", "pool.dir", "train.chunk_len",
                "pool.horizon", "train.epochs", "train.gamma", "train.lam", "train.seed", "train.run_dir"):
        section, name = key.split(".")
        assert name in cfg.to_dict()[section], key


def test_every_default_has_a_comment():
    for line in DEFAULT_PATH.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and line.startswith("  "):
            assert "#" in line, f"config.yaml line without a comment: {line!r}"


def test_typed_overrides():
    cfg = load_config(overrides=["train.epochs=7", "train.gamma=1", "train.lam=0.25", "eval.exclude_seen=true",
                                 "data.purchase_events=[buy, order]", "train.run_dir=2024", "data.split=[0.6,0.2,0.2]"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.gamma, float) and cfg.train.gamma == 1.0
    assert cfg.train.lam == 0.25 and cfg.eval.exclude_seen is True
    assert cfg.data.purchase_events == ["buy", "order"]
    assert cfg.train.run_dir == "2024"          # a string key takes the text as it is
    assert cfg.data.split == [0.6, 0.2, 0.2]
    # YAML 1.1 reads 1e-4 (no dot) as a string; a number key takes it as the number it is
    cfg = load_config(overrides=["train.lr=1e-4", "train.weight_decay=2E-3"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 2e-3


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("nonsense.key=1", "unknown config key 'nonsense.key'"),
    ("train.epochs=three", "needs an integer"),
    ("train.epochs=2.5", "needs an integer"),
    ("train.gamma=high", "needs a number"),
    ("train.lr=nan", "needs a finite number"),
    ("eval.exclude_seen=3", "needs true or false"),
    ("data.source=orc", "unknown data.source 'orc'"),
    ("train.bootstrap=soft", "unknown train.bootstrap"),
    ("model.ssl_steps=5", "must not exceed pool.horizon"),
    ("data.split=[0.5,0.5]", "data.split needs three"),
    ("eval.select_metric=purchase/MAP@10", "eval.select_metric"),
    ("train.epochs", "expects dotted.key=value"),
    ("data.columns=3", "is a section"),
])
def test_bad_overrides(override, message):
    with pytest.raises(UserError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_partial_file_then_overrides(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 9, "lr": 0.01}, "data": {"columns": {"item_id": "sku"}}}))
    cfg = load_config(f, ["train.epochs=4"])
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.01 and cfg.data.columns.item_id == "sku"
    assert cfg.data.columns.session_id == "session_id"   # untouched keys keep their defaults


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(UserError, match="did you mean 'train.epochs'"):
        load_config(typo)


def test_config_is_read_only_and_round_trips():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train = None
    assert load_config(overrides=[]).to_dict() == yaml.safe_load(DEFAULT_PATH.read_text())


def test_a_saved_config_from_before_a_key_existed_keeps_its_old_behaviour():
    """Keys added later (ADDED) take the value that reproduces the old run, not today's default; a
    renamed key (train.value) loads under its new name."""
    saved = load_config().to_dict()
    del saved["model"]["q_head"], saved["train"]["q_negatives"]
    saved["train"]["value"] = saved["train"].pop("bootstrap")
    saved["train"]["value"] = "max"
    old = load_config(base=saved)
    assert old.model.q_head == "linear" and old.train.q_negatives == 0 and old.train.bootstrap == "max"


def test_cql_needs_negatives():
    with pytest.raises(UserError, match="train.cql_weight needs sampled items"):
        load_config(overrides=["train.q_negatives=0", "train.cql_weight=0.1"])


def test_sampling_every_step_and_only_the_auxiliary_steps_are_exclusive():
    with pytest.raises(UserError, match="train.negatives .4. already samples every self-supervised step"):
        load_config(overrides=["train.negatives=4", "train.ssl_negatives=8"])
    assert load_config(overrides=["train.ssl_negatives=8"]).train.ssl_negatives == 8


@pytest.mark.parametrize("other", ["train.q_negatives=0", "train.alpha=0.0"])
def test_advantage_weighting_needs_negatives_and_a_q_head(other):
    with pytest.raises(UserError, match="train.advantage_weighting compares Q"):
        load_config(overrides=["train.advantage_weighting=true", other])
    load_config(overrides=["train.advantage_weighting=true"])            # the defaults have both


def test_mix_reranks_at_least_one_item():
    with pytest.raises(UserError, match="eval.rerank_top must be at least 1"):
        load_config(overrides=["eval.head=mix", "eval.rerank_top=0"])


def test_selection_by_the_value_needs_a_trained_q_head():
    assert load_config(overrides=["eval.select_metric=value/rmse"]).eval.select_metric == "value/rmse"
    with pytest.raises(UserError, match="value/rmse scores the Q head, which train.alpha 0 does not train"):
        load_config(overrides=["eval.select_metric=value/rmse", "train.alpha=0"])
    with pytest.raises(UserError, match="is not value/rmse or one of"):
        load_config(overrides=["eval.select_metric=value/bias"])
