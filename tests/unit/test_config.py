"""tasks/core/config.py + tasks/core/params.py: params.yaml read strictly into frozen typed objects, and the
CLI's exit 2 on bad params."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from tasks.core.errors import DistilleryError
from tasks.core.params import Params, load_params

REPO_PARAMS = REPO_ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text())


def write_params(folder: Path, raw: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def set_dotted(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    return raw


def delete_dotted(raw: dict, dotted: str) -> dict:
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[last]
    return raw


def load_error(tmp_path: Path, raw) -> tuple[str, Path]:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(DistilleryError) as err:
        load_params(path)
    return str(err.value), path


# --------------------------------------------------------------------------- the repo's params


def test_repo_params_load_with_the_yaml_values(raw_params):
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert params.data.source == raw_params["data"]["source"]
    assert params.data.digits.keep_fractions == tuple(raw_params["data"]["digits"]["keep_fractions"])
    assert params.data.quickdraw.classes == tuple(raw_params["data"]["quickdraw"]["classes"])
    assert params.data.quickdraw.samples_per_class == raw_params["data"]["quickdraw"]["samples_per_class"]
    assert params.train.channels == tuple(raw_params["train"]["channels"])
    assert params.train.lr == raw_params["train"]["lr"]
    assert params.train.class_weighting == raw_params["train"]["class_weighting"]
    assert params.task.type == raw_params["task"]["type"]
    assert params.distill.temperature == raw_params["distill"]["temperature"]
    assert params.select.precisions == tuple(raw_params["select"]["precisions"])
    assert params.validate.suite == raw_params["validate"]["suite"]


def test_params_are_frozen():
    params = load_params(REPO_PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path, raw_params):
    path = write_params(tmp_path, set_dotted(raw_params, "train.lr", 1))
    lr = load_params(path).train.lr
    assert isinstance(lr, float) and lr == 1.0


@pytest.mark.parametrize("value", [None, "expectations/other.json"])
def test_an_optional_key_takes_null_or_its_type(tmp_path, raw_params, value):
    path = write_params(tmp_path, set_dotted(raw_params, "validate.suite", value))
    assert load_params(path).validate.suite == value


def test_an_optional_key_still_checks_its_type(tmp_path, raw_params):
    message, _ = load_error(tmp_path, set_dotted(raw_params, "validate.suite", 3))
    assert "'validate.suite'" in message and "str" in message


# --------------------------------------------------------------------------- rejected params


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("train.lrr", 0.002),
        ("data.digits.keep_fraction", [1.0] * 10),
        ("mlflow.uri", "sqlite:///x.db"),
    ],
)
def test_an_unknown_key_is_named_with_the_file(tmp_path, raw_params, dotted, value):
    message, path = load_error(tmp_path, set_dotted(raw_params, dotted, value))
    assert f"'{dotted}'" in message
    assert str(path) in message
    assert "unknown key" in message


def test_an_unknown_top_level_section_is_named(tmp_path, raw_params):
    message, path = load_error(tmp_path, {**raw_params, "trian": {"lr": 1.0}})
    assert "'trian'" in message and str(path) in message


@pytest.mark.parametrize(
    ("dotted", "value", "expected_type"),
    [
        ("train.lr", "abc", "float"),
        ("train.batch_size", True, "int"),
        ("train.batch_size", 64.0, "int"),
        ("train.batch_norm", 1, "bool"),
        ("train.batch_norm", "yes please", "bool"),
        ("distill.temperature", True, "float"),
        ("select.registered_model", 7, "str"),
        ("train.channels", "32", "list"),
        ("data.quickdraw", ["apple"], "mapping"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_file(tmp_path, raw_params, dotted, value, expected_type):
    message, path = load_error(tmp_path, set_dotted(raw_params, dotted, value))
    assert f"'{dotted}'" in message
    assert str(path) in message
    assert expected_type in message


def test_a_wrong_item_type_in_a_list_names_the_index(tmp_path, raw_params):
    message, _ = load_error(tmp_path, set_dotted(raw_params, "train.channels", [32, "x"]))
    assert "'train.channels[1]'" in message


def test_a_wrong_value_type_in_a_mapping_names_the_entry(tmp_path, raw_params):
    message, _ = load_error(tmp_path, set_dotted(raw_params, "data.quickdraw.samples_per_class.cat", "many"))
    assert "'data.quickdraw.samples_per_class.cat'" in message


@pytest.mark.parametrize("dotted", ["train.patience", "data.digits.keep_fractions", "select", "export.opset"])
def test_a_missing_key_is_named(tmp_path, raw_params, dotted):
    message, path = load_error(tmp_path, delete_dotted(raw_params, dotted))
    assert f"'{dotted}'" in message
    assert "missing key" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("dotted", "value", "allowed"),
    [
        ("data.source", "foo", "digits"),
        ("select.precisions", ["int8", "fp16"], "fp32"),
    ],
)
def test_a_literal_violation_lists_the_allowed_values(tmp_path, raw_params, dotted, value, allowed):
    message, path = load_error(tmp_path, set_dotted(raw_params, dotted, value))
    assert dotted.split(".")[0] in message and str(path) in message
    assert allowed in message
    assert "must be one of" in message


def test_a_literal_violation_in_a_list_names_the_index(tmp_path, raw_params):
    message, _ = load_error(tmp_path, set_dotted(raw_params, "select.precisions", ["int8", "fp16"]))
    assert "'select.precisions[1]'" in message
    assert "'fp16'" in message


@pytest.mark.parametrize(
    ("dotted", "value", "section", "rule"),
    [
        ("train.dropout", 1.5, "train", "dropout"),
        ("distill.dropout", -0.1, "distill", "dropout"),
        ("distill.alpha", 2, "distill", "alpha"),
        ("distill.temperature", 0, "distill", "temperature"),
        ("train.channels", [], "train", "channels"),
        ("train.lr", 0, "train", "lr"),
        ("train.patience", 0, "train", "patience"),
        ("select.precisions", [], "select", "precisions"),
        ("select.max_quality_drop", -0.1, "select", "max_quality_drop"),
        ("preprocess.val_fraction", 1.0, "preprocess", "val_fraction"),
        ("preprocess.val_fraction", 0.75, "preprocess", "at least 10% to train on"),
        ("data.digits.keep_fractions", [1.0] * 9, "data", "keep_fractions"),
        ("data.digits.keep_fractions", [0.0] + [1.0] * 9, "data", "keep_fractions"),
        ("data.quickdraw.samples_per_class", {"apple": 10, "banana": 10}, "data", "samples_per_class"),
        ("export.calibration_samples", 0, "export", "calibration_samples"),
        ("evaluate.ece_bins", 1, "evaluate", "ece_bins"),
    ],
)
def test_a_rule_violation_names_the_section_the_rule_and_the_file(tmp_path, raw_params, dotted, value, section, rule):
    message, path = load_error(tmp_path, set_dotted(raw_params, dotted, value))
    assert f"'{section}'" in message
    assert rule in message
    assert str(path) in message


def test_a_missing_params_file_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    with pytest.raises(DistilleryError, match="params file not found") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_invalid_yaml_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(DistilleryError, match="not valid YAML") as err:
        load_params(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", ["", "- a\n- b\n"])
def test_a_file_that_is_not_a_mapping_is_rejected_at_the_top_level(tmp_path, content):
    path = tmp_path / "params.yaml"
    path.write_text(content)
    with pytest.raises(DistilleryError, match="the top level") as err:
        load_params(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- the CLI


def test_stage_cli_exits_2_on_bad_params_without_a_traceback(tmp_path, raw_params):
    write_params(tmp_path, set_dotted(raw_params, "train.lrr", 0.002))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.ingest"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "'train.lrr'" in proc.stderr
    assert "params.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was ingested


# --------------------------------------------------------------------------- hints, many problems, stage views


def test_a_typo_of_a_key_is_refused_with_the_near_miss(tmp_path, raw_params):
    message, path = load_error(tmp_path, set_dotted(raw_params, "train.lrr", 0.002))
    assert f"{path}: 'train.lrr': unknown key; did you mean 'lr'?" in message


def test_a_bad_value_under_dvc_exp_run_says_it_stays_in_params_yaml(tmp_path, raw_params, monkeypatch):
    """`dvc exp run -S train.lr=abc` writes abc into params.yaml before the stages
    run, and DVC leaves it there when they fail: the error says so, and how back."""
    message, path = load_error(tmp_path, set_dotted(raw_params, "train.lr", "abc"))
    assert "dvc exp run" not in message  # a plain run: nothing to say about -S
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)  # what DVC sets for the stages of an experiment
    message, path = load_error(tmp_path, set_dotted(raw_params, "train.lr", "abc"))
    assert "'train.lr'" in message and "-S" in message and f"git checkout {path}" in message


def test_a_typo_of_a_choice_is_refused_with_the_near_miss(tmp_path, raw_params):
    message, _ = load_error(tmp_path, set_dotted(raw_params, "train.clip", "nrom"))
    assert "'train.clip'" in message and "did you mean 'norm'?" in message


def test_every_bad_key_of_a_section_is_reported_in_one_error(tmp_path, raw_params):
    raw = set_dotted(raw_params, "train.lrr", 0.002)
    raw = set_dotted(raw, "train.patiense", 3)
    raw = set_dotted(raw, "train.batch_size", "big")
    raw = delete_dotted(raw, "train.seed")
    message, path = load_error(tmp_path, raw)
    assert str(path) in message and "4 problems" in message
    assert "'train.lrr': unknown key; did you mean 'lr'?" in message
    assert "'train.patiense': unknown key; did you mean 'patience'?" in message
    assert "'train.batch_size': must be int" in message
    assert "'train.seed': missing key" in message


def test_bad_keys_in_several_sections_are_reported_in_one_error(tmp_path, raw_params):
    raw = set_dotted(raw_params, "train.lrr", 0.002)
    raw = set_dotted(raw, "export.opset", "17")
    message, _ = load_error(tmp_path, raw)
    assert "'train.lrr'" in message and "'export.opset'" in message


def test_a_stage_view_exposes_only_its_sections_and_mlflow(tmp_path, raw_params):
    full = load_params(REPO_PARAMS)
    view = load_params(REPO_PARAMS, ("data",))
    assert not isinstance(view, Params)
    assert view.data == full.data
    assert view.mlflow == full.mlflow  # tracking, read by every stage
    with pytest.raises(AttributeError) as err:
        view.train
    message = str(err.value)
    assert str(REPO_PARAMS) in message
    assert "'train'" in message and "SECTIONS" in message and "['data']" in message


def test_a_stage_view_still_checks_the_whole_file(tmp_path, raw_params):
    # A bad key anywhere stops any stage, not only the stage that reads it.
    path = write_params(tmp_path, set_dotted(raw_params, "train.lrr", 0.002))
    with pytest.raises(DistilleryError, match=r"'train\.lrr'"):
        load_params(path, ("data",))


def test_a_stage_view_of_an_unknown_section_is_refused():
    with pytest.raises(ValueError, match=r"no params section \['trian'\]"):
        load_params(REPO_PARAMS, ("data", "trian"))


# --------------------------------------------------------------------------- ML options: tasks/ml/checks.py


@pytest.mark.parametrize(
    ("dotted", "value", "key", "rule"),
    [
        ("train.loss_options", {"gamma": 2.0}, "train.loss_options.gamma", "not an option of loss 'ce'"),
        ("train.optimizer", "adamax", "train.optimizer", "adamax"),
        ("train.schedule_options", {"gamma": 2.0}, "train.schedule_options.gamma", "gamma"),
        ("distill.constraint", "max_nrom", "distill.constraint", "max_nrom"),
    ],
)
def test_ml_options_pass_the_parser_and_are_refused_by_the_training_checks(
    tmp_path, raw_params, dotted, value, key, rule
):
    from tasks.ml.checks import check_training_params

    raw = set_dotted(raw_params, dotted, value)
    if dotted == "train.loss_options":
        raw = set_dotted(raw, "train.loss", "ce")
    if dotted == "train.schedule_options":
        raw = set_dotted(raw, "train.schedule", "exponential")
    path = write_params(tmp_path, raw)
    params = load_params(path)  # the parser checks types; the options are the components'
    with pytest.raises(DistilleryError) as err:
        check_training_params(params, params.task.type, str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: '{key}': ")
    assert "params.yaml" in message and rule in message


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ("digits", "data/raw", "distillery-digits"),
        ("csv", "/home/me/credit.csv", "distillery-credit"),
        ("csv", "../My Data/Ames Housing.csv", "distillery-ames-housing"),
        ("quickdraw", "/srv/data/quickdraw", "distillery-quickdraw"),
        ("parquet", "data/raw/loans.parquet", "distillery-loans"),
    ],
)
def test_the_default_registered_model_is_named_after_the_data(source, path, expected):
    """One champion per dataset: experiments on other data never move this data's alias."""
    import dataclasses

    from tasks.core.params import load_params

    params = load_params(REPO_ROOT / "params.yaml")
    data = dataclasses.replace(
        params.data, source=source, path=path, target="y" if source in ("csv", "parquet") else None
    )
    assert dataclasses.replace(params, data=data).registered_model == expected
    named = dataclasses.replace(params, select=dataclasses.replace(params.select, registered_model="mine"))
    assert named.registered_model == "mine"


def test_declared_columns_can_be_set_as_users_type_them_in_dvc_exp_run(tmp_path):
    """`dvc exp run -S 'data.columns={age: numeric, city: categorical}'`: DVC applies the override
    with Hydra before any stage runs; from the shipped params.yaml it must apply, and parse."""
    import shutil

    from dvc.utils.hydra import apply_overrides

    from tasks.core.params import load_params

    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params_file)
    assert load_params(params_file).data.columns == {}  # none declared by default
    apply_overrides(str(params_file), ["data.columns={age: numeric, city: categorical}"])
    assert load_params(params_file).data.columns == {"age": "numeric", "city": "categorical"}
    # Every type the gate reads can be declared: yes/no and date columns too.
    shutil.copy(REPO_ROOT / "params.yaml", params_file)
    apply_overrides(str(params_file), ["data.columns={member: boolean, joined: datetime}"])
    assert load_params(params_file).data.columns == {"member": "boolean", "joined": "datetime"}
