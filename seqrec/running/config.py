"""Configuration: `config.yaml` holds every default; a user file and `--set key=value` override it.

Every value is checked against the type of its default, every key must exist in the defaults, and a
few keys must take one of a fixed set of values. The result is a read-only `Config` with attribute
access (`cfg.train.gamma`) that turns back into a plain dict for saving and hashing.
"""
from __future__ import annotations

import argparse
import difflib
import math
from pathlib import Path
from typing import Any, Iterable

import yaml

from seqrec.running.atomic import atomic_write_text
from seqrec.running.errors import UserError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config.yaml"

# The sources a world of ours generates, and the config section that describes that world.
WORLDS = {"synthetic": "sim", "recsim": "recsim"}

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.source": ("synthetic", "recsim", "csv", "parquet", "retailrocket", "yoochoose", "movielens", "recbole"),
    "data.movielens": ("100k", "1m"),
    "model.encoder": ("gru", "sasrec"),
    "model.q_head": ("shared", "linear", "dueling"),
    "data.split_mode": ("random", "temporal", "loo"),
    "train.td_loss": ("mse", "huber"),
    "train.bootstrap": ("double", "max", "logged", "swap", "expectile"),
    "train.negatives_from": ("uniform", "exposures"),
    "train.ssl_softmax": ("items", "shown"),
    "train.target_update": ("polyak", "hard"),
    "eval.head": ("ssl", "q", "mix"),
    "recommend.unknown_items": ("error", "skip"),
}


class Config:
    """Read-only nested view of a config dict: `cfg.train.lr`, `cfg["train"]["lr"]`, `cfg.to_dict()`."""

    def __init__(self, tree: dict):
        object.__setattr__(self, "_tree", tree)

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._tree[name]
        except KeyError:
            raise AttributeError(name) from None
        return Config(value) if isinstance(value, dict) else value

    __getitem__ = __getattr__

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; build a new one with load_config(overrides=...)")

    def to_dict(self) -> dict:
        return _deep_copy(self._tree)

    def __repr__(self) -> str:
        return f"Config({self._tree!r})"


# Keys renamed since runs were saved: old name -> new name (a saved config or file still loads).
RENAMED = {"train.value": "train.bootstrap"}
# Keys added since runs were saved, with the value that reproduces what a run made before them did:
# a saved config that lacks one gets this value, not today's default.
ADDED = {"model.q_head": "linear", "train.q_negatives": 0, "train.reward_negative": 0.0, "train.cql_weight": 0.0,
         "eval.value_events": 0, "train.ssl_negatives": 0}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), base: dict | None = None) -> Config:
    """Defaults, then `base` (a saved run's config, if any), then the file at `path`, then each
    `dotted.key=value` override."""
    tree = _read_yaml(DEFAULT_PATH)
    if base is not None:
        _merge(tree, tree, _with_added(_renamed(base)), prefix="", source="the checkpoint's config")
    if path:
        user = _read_yaml(Path(path))
        if not isinstance(user, dict):
            raise UserError(f"config file {path} must hold a mapping of sections, e.g. 'train: {{epochs: 3}}'")
        _merge(tree, tree, _renamed(user), prefix="", source=str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects dotted.key=value, got '{item}'")
        key = RENAMED.get(key.strip(), key)
        default = _lookup(tree, key.strip())
        value = text if isinstance(default, str) else _parse_value(key, text)
        _assign(tree, key.strip(), _check_type(key.strip(), value, default))
    _validate(tree)
    return Config(tree)


def check_trained_here(name: str, ckpt: dict, cfg: Config) -> None:
    """A UserError unless the checkpoint `name` was trained on the data of the world `cfg` describes."""
    trained_on = load_config(base=ckpt["config"])            # keys added since the checkpoint count at their defaults
    world = WORLDS[cfg.data.source]
    if trained_on.data.source != cfg.data.source or trained_on[world].to_dict() != cfg[world].to_dict():
        raise UserError(f"{name} was trained on other data than this world's; evaluate it with its own config")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The two options every entry script takes."""
    parser.add_argument("--config", metavar="PATH", help="YAML file with overrides of config.yaml")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override one key, e.g. --set train.epochs=3 (repeatable)")


def save_config(cfg: Config, path: Path, header: str = "") -> None:
    """The whole config as YAML (loadable with --config), after an optional comment `header`."""
    atomic_write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing file to --config")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix its syntax") from None


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--set {key}={text}: the value is not valid YAML (quote lists as '[a, b]')") from None


def _renamed(user: dict) -> dict:
    """A copy of a config mapping with the keys of RENAMED under their new names."""
    user = _deep_copy(user)
    for old, new in RENAMED.items():
        (section, old_name), (_, new_name) = old.split("."), new.split(".")
        part = user.get(section)
        if isinstance(part, dict) and old_name in part:
            part.setdefault(new_name, part.pop(old_name))
    return user


def _with_added(saved: dict) -> dict:
    """A saved config with each key of ADDED it lacks set to its old behaviour."""
    for key, old_value in ADDED.items():
        section, name = key.split(".")
        if isinstance(saved.get(section), dict) and name not in saved[section]:
            saved[section][name] = old_value
    return saved


def _lookup(tree: dict, key: str) -> Any:
    node: Any = tree
    parts = key.split(".")
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            _unknown_key(tree, key)
        node = node[part]
    return node


def _assign(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def _all_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        full = f"{prefix}{name}"
        keys += _all_keys(value, full + ".") if isinstance(value, dict) else [full]
    return keys


def _unknown_key(tree: dict, key: str):
    close = difflib.get_close_matches(key, _all_keys(tree), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else "; see config.yaml for the keys"
    raise UserError(f"unknown config key '{key}'{hint}")


def _merge(root: dict, node: dict, user: dict, prefix: str, source: str) -> None:
    """Copy `user` into `node` (the section of `root` at `prefix`), checking keys and types."""
    for name, value in user.items():
        key = f"{prefix}{name}"
        if name not in node:
            _unknown_key(root, key)
        if isinstance(node[name], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{key}' is a section and needs a mapping, got {value!r}")
            _merge(root, node[name], value, key + ".", source)
        else:
            node[name] = _check_type(key, value, node[name])


def _check_type(key: str, value: Any, default: Any) -> Any:
    """`value` converted to the type of `default`, or a UserError that names both."""
    def bad(expected: str):
        raise UserError(f"config key '{key}' needs {expected}, got {value!r}")

    if isinstance(default, bool):
        return value if isinstance(value, bool) else bad("true or false")
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else bad("an integer")
    if isinstance(default, float):
        if isinstance(value, str):             # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return bad("a number")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else bad("a finite number")
        return bad("a number")
    if isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else bad("a string")
    if isinstance(default, list):
        if not isinstance(value, list):
            return bad("a list, e.g. [a, b]")
        if default:
            return [_check_type(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)]
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return bad("a list of names")
        return [str(v) for v in value]
    if isinstance(default, dict):
        raise UserError(f"'{key}' is a section; set one of its keys, e.g. {key}.{next(iter(default))}=...")
    return value


# Numeric keys and the range each must lie in: (lowest, highest, whether the lowest is allowed).
AT_LEAST_1 = (1, None, True)
AT_LEAST_0 = (0, None, True)
ABOVE_0 = (0, None, False)
SHARE = (0, 1, True)
RANGES = {
    **{key: AT_LEAST_1 for key in (
        "pool.horizon", "model.hidden", "model.ssl_steps", "model.max_len", "model.layers",
        "model.heads", "train.epochs", "train.batch_size", "train.chunk_len",
        "train.target_every", "eval.batch_size", "data.min_session_len", "data.min_item_count", "online.sessions",
        "online.round_sessions", "online.round_epochs", "recommend.k", "sim.num_sessions", "sim.num_items",
        "sim.num_categories", "sim.dim", "sim.slate_size", "sim.max_session_len", "eval.rerank_top")},
    **{key: AT_LEAST_0 for key in (
        "pool.state_len", "train.weight_decay", "train.grad_clip", "train.alpha", "train.negatives", "train.ssl_negatives", "train.threads",
        "train.q_negatives", "train.cql_weight", "train.negative_weight", "eval.value_rollouts", "eval.value_events",
        "train.checkpoint_every", "train.max_steps", "train.patience", "data.max_sessions", "online.rounds", "train.advantage_warmup",
        "eval.beta",
        "sim.logging_temperature")},
    **{key: SHARE for key in (
        "train.gamma", "train.lam", "online.explore", "eval.value_observed", "sim.exit_prob", "sim.exit_prob_after_purchase", "sim.clickbait_exit",
        "sim.interest_decay")},
    "train.lr": ABOVE_0, "train.advantage_clip": ABOVE_0, "train.tau": (0, 1, False), "model.dropout": (0, 1, True),
    "train.expectile": (0, 1, False),
}


def _validate(tree: dict) -> None:
    for key, allowed in CHOICES.items():
        value = _lookup(tree, key)
        if value not in allowed:
            raise UserError(f"unknown {key} '{value}'; choose one of: {', '.join(allowed)}")
    for key, (low, high, low_ok) in RANGES.items():
        value = _lookup(tree, key)
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            where = (f"in [{low}, {high}]" if high is not None and low_ok else f"in ({low}, {high}]" if high is not None
                     else f"at least {low}" if low_ok else f"above {low}")
            raise UserError(f"{key} must be {where}, got {value}")
    data, pool, model, train, ev = tree["data"], tree["pool"], tree["model"], tree["train"], tree["eval"]
    split = data["split"]
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
        raise UserError(f"data.split needs three non-negative shares summing to 1 (train > 0), got {split}")
    if model["dropout"] >= 1:
        raise UserError(f"model.dropout must be below 1 (1 drops everything), got {model['dropout']}")
    if model["hidden"] % model["heads"]:
        raise UserError(f"model.heads ({model['heads']}) must divide model.hidden ({model['hidden']})")
    if model["ssl_steps"] > pool["horizon"]:
        raise UserError(f"model.ssl_steps ({model['ssl_steps']}) must not exceed pool.horizon ({pool['horizon']})")
    if len(train["ssl_weights"]) < model["ssl_steps"]:
        raise UserError(f"train.ssl_weights needs at least {model['ssl_steps']} weights (one per model.ssl_steps), "
                        f"got {len(train['ssl_weights'])}")
    if (train["bootstrap"] == "expectile") != model["v_head"]:
        raise UserError("train.bootstrap=expectile (IQL) bootstraps from the value head, and only it trains one: "
                        f"set both or neither (train.bootstrap {train['bootstrap']}, model.v_head {model['v_head']})")
    if train["expectile"] >= 1:
        raise UserError(f"train.expectile must be below 1 (1 is the maximum, which IQL avoids), got {train['expectile']}")
    if train["negatives"] and train["ssl_negatives"]:
        raise UserError(f"train.negatives ({train['negatives']}) already samples every self-supervised step; "
                        f"set train.ssl_negatives ({train['ssl_negatives']}) to 0, or train.negatives to 0 to sample "
                        "only the steps after the next item")
    if train["cql_weight"] > 0 and train["q_negatives"] == 0:
        raise UserError("train.cql_weight needs sampled items to compare the taken one with; set train.q_negatives, e.g. 10")
    if train["advantage_weighting"] and (train["q_negatives"] == 0 or train["alpha"] == 0):
        raise UserError("train.advantage_weighting compares Q of the taken item with sampled ones; it needs "
                        "train.q_negatives (e.g. 10) and train.alpha > 0")
    if tree["sim"]["slate_size"] > tree["sim"]["num_items"]:
        raise UserError(f"sim.slate_size ({tree['sim']['slate_size']}) must not exceed sim.num_items "
                        f"({tree['sim']['num_items']})")
    if not ev["ks"] or min(ev["ks"]) < 1:
        raise UserError(f"eval.ks needs cut-offs of at least 1, e.g. [5, 10, 20]; got {ev['ks']}")
    metric = ev["select_metric"]
    kind, _, name = metric.partition("/")
    valid_names = {f"{m}@{k}" for m in ("HR", "NDCG") for k in ev["ks"]} | {"MRR"}
    if metric != "value/rmse" and (kind not in ("all", "click", "purchase") or name not in valid_names):
        raise UserError(f"eval.select_metric '{metric}' is not value/rmse or one of all|click|purchase / "
                        f"{'|'.join(sorted(valid_names))}")
    if metric == "value/rmse" and train["alpha"] == 0:
        raise UserError("eval.select_metric value/rmse scores the Q head, which train.alpha 0 does not train; "
                        "pick a ranking metric, e.g. purchase/NDCG@10")


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree
