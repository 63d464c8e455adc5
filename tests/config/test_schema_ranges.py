"""Every numeric setting of the schema has a declared range, and one test holds the whole schema to it: boundary
values either compose to a meaning the range documents or are refused before any work, naming the key as written."""
from __future__ import annotations

import typing
from dataclasses import dataclass, fields, is_dataclass

import pytest
from hydra.errors import ConfigCompositionException

from recondec.checks import validate
from recondec.config import Config, ConfigError, Range, check_schema, count, numeric_fields

BOUNDARIES = (-1, 0, 10 ** 12, 1e-300, "abc")
# groups that exist only in some configurations, and the base that makes them exist
BASES = {"classifier.schedule": ["experiment=finetune_fmnist"]}
# numeric keys whose value only a layer above the schema can judge (checks.validate), with the override that shows it
ABOVE_THE_SCHEMA = {"backbone.image_size": 40}


def numeric_keys(cls: type = Config, at: str = "") -> list[tuple[str, object, type]]:
    """(key, field, number type) of every numeric setting under `cls`, nested groups included."""
    hints = typing.get_type_hints(cls)
    keys = [(f"{at}{name}", f, t) for name, (f, t) in numeric_fields(cls).items()]
    for f in fields(cls):
        t = hints[f.name]
        if typing.get_origin(t) is typing.Union:
            t = next(a for a in typing.get_args(t) if a is not type(None))
        if is_dataclass(t):
            keys += numeric_keys(t, f"{at}{f.name}.")
    return keys


KEYS = numeric_keys()


def test_every_numeric_setting_declares_its_range():
    missing = [key for key, f, _ in KEYS if not isinstance(f.metadata.get("range"), Range)]
    assert not missing, f"settings without a declared range (use config.ranged / count / positive / weight): {missing}"
    optional = [key for key, f, _ in KEYS if "Optional" in str(f.type) and f.metadata["range"].null is None]
    assert not optional, f"settings that may be null without saying what null means: {optional}"
    assert len(KEYS) >= 60, len(KEYS)  # every group is walked


def test_a_field_without_a_range_fails_the_schema_test():
    @dataclass
    class Unranged:
        ranged_one: int = count(1)
        forgotten: float = 0.5

    keys = [(name, f) for name, (f, _) in numeric_fields(Unranged).items()]
    assert [name for name, f in keys if "range" not in f.metadata] == ["forgotten"]


def _base(key: str) -> list[str]:
    return next((base for group, base in BASES.items() if key.startswith(group + ".")), [])


def _override(key: str, value, container: bool) -> str:
    if container:  # a list or dict of numbers: one bad element
        return f"{key}=[{value}]" if "list" in container else f"+{key}.x={value}"
    return f"{key}={value}"


@pytest.mark.parametrize("key, f, number", KEYS, ids=[k for k, _, _ in KEYS])
def test_boundary_values_are_refused_naming_the_key_or_have_a_documented_meaning(compose_cfg, key, f, number):
    rng: Range = f.metadata["range"]
    container = "list" if "list[" in str(f.type) else "dict" if "dict[" in str(f.type) else ""
    for value in BOUNDARIES:
        if number is int and isinstance(value, float):
            continue
        try:
            cfg = compose_cfg(*_base(key), _override(key, value, container))
        except ConfigCompositionException as e:  # a wrong type: refused while composing, the key named
            assert isinstance(value, str) or number is int, (key, value, e)
            assert key.split(".")[-1] in str(e) + str(e.__cause__), (key, value, e)
            continue
        try:
            check_schema(cfg)
        except ConfigError as e:  # by its range (naming the key first), or by a rule across keys that names it
            assert str(e).startswith(key) if not rng.admits(value) else key in str(e), (key, value, str(e))
            continue
        assert rng.admits(value), f"{key}={value!r} was accepted, but its range says {rng.describe()}"


@pytest.mark.parametrize("key, value", list(ABOVE_THE_SCHEMA.items()))
def test_rules_above_the_schema_refuse_too(compose_cfg, key, value):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose_cfg(f"{key}={value}"))


@pytest.mark.parametrize("override", ["data.train_limit=-5",
                                      pytest.param("trainer.log_every_n_steps=0", marks=pytest.mark.slow)])
def test_a_refusal_is_one_line_an_exit_status_and_no_run(tmp_path, override):
    import os
    import subprocess
    import sys

    from recondec.config import REPO_ROOT

    db = tmp_path / "jobs.db"
    cmd = [sys.executable, "src/main.py", override, f"logger.tracking_uri=sqlite:///{db}", f"hydra.run.dir={tmp_path}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    quiet = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
    key = override.split("=")[0]
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr + quiet.stdout
    (line,) = quiet.stderr.strip().splitlines()
    assert line.startswith(f"error: {override} is invalid: allowed an integer >= 1")
    assert not db.exists()  # refused before the MLflow run (or its store) exists
    loud = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "HYDRA_FULL_ERROR": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr and f"{key}=" in loud.stderr


def test_prepare_checks_every_split_before_writing_anything(tmp_path):
    import subprocess
    import sys

    from recondec.config import REPO_ROOT

    for name in ("a", "b"):
        (tmp_path / "tree" / "train" / name).mkdir(parents=True)
    out = tmp_path / "beton"
    cmd = [sys.executable, "src/prepare.py", "data=folder", f"data.root={tmp_path / 'tree'}",
           f"data.ffcv.beton_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]  # not multirun/ in the repo
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "val is not a folder" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()  # train.beton was not written first
