"""Logging backends in one process: MLflow's parameters, an unknown run id, the runs file, a backend that
fails mid-run, and a server that does not answer. Real MLflow (a sqlite store in a temporary folder)."""

import json
import socket

import pytest

from pretrain.config import LoggingConfig
from pretrain.log_backends import RUNS_FILE, BackendError, MLflow, check, flatten, open_backends, unreachable
from pretrain.metrics import Metrics
from pretrain.model import ModelConfig


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One sqlite store for the module: making one runs MLflow's migrations (a second or two)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_flatten_gives_mlflow_one_string_per_leaf():
    config = {"seed": 1, "phases": [{"steps": 3}, {"steps": 2}], "model_overrides": {}, "logging": {"backends": ["x"]}}
    assert flatten(config) == {"seed": "1", "phases.0.steps": "3", "phases.1.steps": "2", "model_overrides": "{}",
                               "logging.backends": "['x']"}


def test_mlflow_continues_a_run_keeps_its_parameters_and_starts_anew_when_the_store_lacks_it(mlflow_uri):
    config = LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=mlflow_uri, run_name="r1")
    lines = []
    first = MLflow(config, "0" * 32, {"seed": 1, "max_steps_this_run": 2}, lines.append)
    assert first.run_id != "0" * 32 and "is not in" in lines[0] and "starting a new run" in lines[0]
    first.scalars({"train/loss": 2.5}, 1)
    first.close("preempted")
    again = MLflow(config, first.run_id, {"seed": 1, "max_steps_this_run": 0, "new_key": "x"}, lines.append)
    assert again.run_id == first.run_id
    assert lines[1].endswith("changed since: max_steps_this_run 2 -> 0")
    again.scalars({"train/loss": 2.0}, 2)
    again.close("complete")
    run = again.client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params == {"seed": "1", "max_steps_this_run": "2", "new_key": "x"}
    history = again.client.get_metric_history(first.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 2.0)]


def test_the_runs_file_names_the_run_and_the_checkpoint_wins(tmp_path, mlflow_uri):
    config = LoggingConfig(backends=["tensorboard", "mlflow"], dir=str(tmp_path / "runs"),
                           mlflow_tracking_uri=mlflow_uri)
    backends = open_backends(config, {"seed": 1}, {}, str(tmp_path), print)
    first_id = backends[1].run_id
    for backend in backends:
        backend.close("preempted")
    assert json.loads((tmp_path / RUNS_FILE).read_text()) == {"mlflow": first_id}
    again = open_backends(config, {"seed": 1}, {}, str(tmp_path), print)  # no checkpoint: the file says
    assert again[1].run_id == first_id
    other = MLflow(config, None, {}, print).run_id
    resumed = open_backends(config, {"seed": 1}, {"mlflow": other}, str(tmp_path), print)  # a checkpoint says
    assert resumed[1].run_id == other and json.loads((tmp_path / RUNS_FILE).read_text()) == {"mlflow": other}
    (tmp_path / RUNS_FILE).write_text("{not json")
    with pytest.raises(BackendError, match=f"{RUNS_FILE}: unreadable"):
        open_backends(config, {}, {}, str(tmp_path), print)


class Recording:
    name, run_id = "recording", None

    def __init__(self, fail=False):
        self.fail, self.got, self.outcome = fail, [], None

    def scalars(self, values, step):
        if self.fail:
            raise ConnectionError("the server went away")
        self.got.append((step, values))

    def close(self, outcome):
        self.outcome = outcome


def test_a_backend_that_fails_mid_run_is_left_out_with_a_line(capsys):
    metrics = Metrics(LoggingConfig(), ModelConfig.preset("squeezebert-tiny"), rank=0, world_size=1)
    failing, working = Recording(fail=True), Recording()
    failing.name = "failing"
    metrics.backends = [failing, working]
    metrics.evaluation(4, 2.0, None)
    metrics.evaluation(8, 1.5, 0.6)
    metrics.close("complete")
    assert working.got == [(4, {"eval/mlm_loss": 2.0}), (8, {"eval/mlm_loss": 1.5, "eval/sop_loss": 0.6})]
    assert working.outcome == "complete" and failing.outcome is None
    err = capsys.readouterr().err
    assert "failing: could not log step 4 (the server went away); leaving it out" in err
    assert "failing: 2 writes of this invocation did not reach it" in err  # the failed one too


def test_a_server_that_does_not_answer_is_found_fast():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert unreachable(f"http://127.0.0.1:{port}/health")
    config = LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError, match="the MLflow server does not answer"):
        check(config)
    check(LoggingConfig())  # TensorBoard alone: nothing to check
