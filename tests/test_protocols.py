"""Reference-protocol presets: fields set, explicit flags win, name recorded, validation."""

import json
import os

import pytest

from fedjax_pfl import cli, protocols
from fedjax_pfl import config as config_lib
from fedjax_pfl.errors import ConfigError


def _build(*argv):
  args = cli.make_parser().parse_args(["run", "--algorithm", "fedavg", *argv])
  return cli.build_config(args, args.algorithm)


def test_presets_set_their_fields():
  c = _build("--protocol", "flbench", "--dataset", "fashion_mnist", "--set", "data.seed=7")
  assert c.protocol == "flbench"
  assert (c.data.partition, c.data.normalization, c.train.client_stream) == (
      "flbench", "flbench", "flbench")
  assert (c.data.test_ratio, c.data.min_samples_per_client) == (0.25, 10)
  assert c.data.seed == 7 and protocols.protocol_overrides(c) == {"data.seed": (42, 7)}
  c = _build("--protocol", "fling", "--dataset", "fashion_mnist")
  assert (c.protocol, c.data.partition, c.data.normalization, c.model.bn_running_var) == (
      "fling", "fling", "none", "unbiased")
  assert protocols.protocol_overrides(c) == {}


def test_explicit_flags_and_set_win_over_the_preset():
  c = _build("--protocol", "flbench", "--dataset", "fashion_mnist", "--partition", "dirichlet",
             "--set", "data.normalization=none", "--set", "train.client_stream=uniform")
  assert c.protocol == "flbench"
  assert (c.data.partition, c.data.normalization, c.train.client_stream) == (
      "dirichlet", "none", "uniform")
  assert set(protocols.protocol_overrides(c)) == {
      "data.partition", "data.normalization", "train.client_stream"}


def test_defaults_unchanged_without_a_protocol():
  c = _build()
  d = config_lib.ExperimentConfig(algorithm="fedavg")
  assert c == d and c.protocol == "none"
  assert (d.data.partition, d.data.normalization, d.data.seed) == ("dirichlet", "train_stats", 42)
  assert (d.train.client_stream, d.model.bn_running_var) == ("uniform", "biased")
  assert protocols.apply_protocol(d, None) is d and protocols.apply_protocol(d, "none") is d


def test_protocol_is_part_of_the_serialized_config():
  c = _build("--protocol", "fling", "--dataset", "fashion_mnist")
  d = json.loads(config_lib.dumps(c))
  assert d["protocol"] == "fling" and d["model"]["bn_running_var"] == "unbiased"
  assert config_lib.from_dict(d) == c
  del d["protocol"]                        # config.json written before protocols existed
  assert config_lib.from_dict(d).protocol == "none"


@pytest.mark.parametrize("overrides,needle", [
    (["data.normalization=zscore"], "data.normalization='zscore'"),
    (["train.client_stream=random"], "train.client_stream='random'"),
    (["model.bn_running_var=torch"], "model.bn_running_var='torch'"),
    (["data.partition=flbench2"], "data.partition='flbench2'"),
    (["data.normalization=flbench"], "flbench only for"),        # digits has no constants
    (["protocol=flbench"], "use --protocol"),
])
def test_validation(overrides, needle):
  with pytest.raises(ConfigError, match=r"allowed|use --protocol") as e:
    _build(*[a for o in overrides for a in ("--set", o)])
  assert needle in str(e.value)
  with pytest.raises(ConfigError, match="protocol='x' is invalid; allowed: none, flbench"):
    protocols.apply_protocol(config_lib.ExperimentConfig(), "x")
  with pytest.raises(ConfigError, match="protocol='x' is invalid"):
    config_lib.validate(config_lib.ExperimentConfig(protocol="x"))


def test_cli_run_records_the_protocol(tmp_path):
  """Two rounds on digits through the CLI with the Fling protocol's normalization
  and BN option (digits has no official test split, so the split is overridden)."""
  workdir = str(tmp_path / "run")
  assert cli.main(["run", "--algorithm", "fedavg", "--protocol", "fling", "--dataset", "digits",
                   "--partition", "flbench", "--clients", "4", "--rounds", "1",
                   "--local-epochs", "1", "--no-progress", "--workdir", workdir]) == 0
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["protocol"] == "fling" and config["data"]["partition"] == "flbench"
  assert config["data"]["normalization"] == "none"


def test_experiment_passes_normalization_and_bn_option(monkeypatch):
  from fedjax_pfl import experiment
  fd = experiment.load_data(config_lib.DataConfig(num_clients=4, normalization="none"))
  assert fd.x.min() == 0.0 and fd.x.max() == 1.0
  seen = []
  real = experiment.get_model
  monkeypatch.setattr(experiment, "get_model",
                      lambda *a, **k: seen.append(a[4:] + tuple(k.values())) or real(*a, **k))
  config = config_lib.ExperimentConfig(
      algorithm="fedavg", data=config_lib.DataConfig(num_clients=4),
      model=config_lib.ModelConfig(bn_running_var="unbiased"))
  experiment.build_simulation(config, fd)
  assert seen == [("unbiased", "auto")]  # (bn_running_var, pool)
