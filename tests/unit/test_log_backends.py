"""Logging backends in one process: MLflow's parameters, an unknown run id, the runs file, a backend that
fails mid-run, a server that is down and one that takes the connection and never answers. Real MLflow (a sqlite
store in a temporary folder)."""

import dataclasses
import http.server
import json
import socket
import threading

import pytest

from pretrain.config import LoggingConfig, RunConfig, redact_uri
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


@pytest.fixture
def silent_server():
    """A port where connections are taken (the kernel's backlog) and no byte ever comes back, as from a server
    that hangs. After 60 s it hangs up, so a probe without its timeout fails on the reason, not by hanging."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    hang_up = threading.Timer(60.0, listening.close)
    hang_up.start()
    yield listening.getsockname()[1]
    hang_up.cancel()
    listening.close()


def test_a_server_that_takes_the_connection_and_never_answers_is_given_up_at_the_timeout(silent_server):
    """The probe's own timeout (SERVER_TIMEOUT_S) ends the wait: the reason is a timeout, not a refusal."""
    reason = unreachable(f"http://127.0.0.1:{silent_server}/health")
    assert reason == "timed out", reason
    config = LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=f"http://127.0.0.1:{silent_server}")
    with pytest.raises(BackendError, match=r"the MLflow server does not answer \(timed out\)"):
        check(config)
    check(LoggingConfig())  # TensorBoard alone: nothing to check


def test_a_port_where_nothing_listens_is_unreachable_at_once():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    assert "refused" in unreachable(f"http://127.0.0.1:{port}/health")


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("uri, shown", [
    ("https://alice:s3cr3t@mlflow.example.com/api", "https://***@mlflow.example.com/api"),
    ("https://ghp_T0KEN@host:5000", "https://***@host:5000"),  # a token in the user's place
    ("http://bob:p@ss:w0rd@127.0.0.1:5000/", "http://***@127.0.0.1:5000/"),  # an unescaped @ in the password
    ("https://host/mlflow?token=abc123&experiment=7&api_key=k", "https://host/mlflow?token=***&experiment=7&api_key=***"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("API request to http://u:pw@h:1/api/2.0 failed; mail a@b.org",
     "API request to http://***@h:1/api/2.0 failed; mail a@b.org"),
])
def test_redact_uri_masks_the_userinfo_and_secret_query_values(uri, shown):
    assert redact_uri(uri) == shown


SECRET = "s3cr3t-T0KEN"


def test_the_resolved_config_and_the_logged_parameters_hold_no_credentials(mlflow_uri, tmp_path):
    """`RunConfig.to_dict` (the `resolved config` line, the parameters, every checkpoint) masks them while the
    field keeps the real URI to connect with; `open_backends` masks what any other caller hands it."""
    secret_uri = f"https://alice:{SECRET}@mlflow.example.com/?token={SECRET}"
    config = RunConfig(logging=LoggingConfig(mlflow_tracking_uri=secret_uri))
    assert SECRET not in json.dumps(config.to_dict()) and config.logging.mlflow_tracking_uri == secret_uri
    assert config.to_dict()["logging"]["mlflow_tracking_uri"] == "https://***@mlflow.example.com/?token=***"
    store = LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=mlflow_uri)
    (backend,) = open_backends(store, dataclasses.asdict(config), {}, str(tmp_path), print)  # unmasked in
    backend.close("complete")
    params = backend.client.get_run(backend.run_id).data.params
    assert params["logging.mlflow_tracking_uri"] == "https://***@mlflow.example.com/?token=***"
    assert not [key for key, value in params.items() if SECRET in value]


def test_credentials_in_a_tracking_uri_reach_no_message_or_console_line(mlflow_uri, tmp_path, monkeypatch, capfd):
    """A server that is down (nothing listens on its port), at start and mid-run: the check's message, MLflow's
    own error (which quotes the URL it called) and the console lines name the server with `***` for its
    credentials."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's client retries for minutes otherwise
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    secret_uri = f"http://alice:{SECRET}@127.0.0.1:{closed_port()}"
    config = LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=secret_uri)
    messages = []
    for attempt in (lambda: check(config), lambda: open_backends(config, {}, {}, str(tmp_path), print)):
        with pytest.raises(BackendError) as raised:
            attempt()
        messages.append(str(raised.value))
    assert "the MLflow server does not answer" in messages[0] and "could not open the mlflow run" in messages[1]
    assert all("http://***@127.0.0.1:" in message and SECRET not in message for message in messages), messages
    # a run that lost its server: Metrics' lines say why, without the credentials
    backend = MLflow(LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=mlflow_uri), None, {}, print)
    from mlflow import MlflowClient

    backend.client = MlflowClient(secret_uri)  # the server the run talks to, gone
    metrics = Metrics(config, ModelConfig.preset("squeezebert-tiny"), rank=0, world_size=1)
    metrics.backends = [backend]
    metrics.evaluation(4, 2.0, None)
    metrics.close("failed")
    console = capfd.readouterr()
    assert "mlflow: could not log step 4 (API request to http://***@127.0.0.1:" in console.err
    assert SECRET not in console.out + console.err


def test_a_server_behind_credentials_is_checked_without_them_in_the_request():
    """urllib would read `alice:token@127.0.0.1` as a host name: the probe leaves the userinfo out."""
    paths = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            paths.append(self.path)
            self.send_response(401)  # an MLflow behind basic auth: an answer all the same
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check(LoggingConfig(backends=["mlflow"],
                            mlflow_tracking_uri=f"http://alice:{SECRET}@127.0.0.1:{server.server_port}/"))
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/health"]


@pytest.mark.parametrize("kind", ["sqlite file that is a folder", "file store under a regular file"])
def test_an_mlflow_store_that_will_not_open_is_one_line_naming_the_uri_before_compute(kind, tmp_path):
    """README: a local MLflow store that cannot be opened stops the run at the check, in one line naming the
    tracking URI and the way out. Both stores are real paths MLflow cannot use: a sqlite "file" that is a
    folder, and a file store whose root lies under a regular file."""
    if kind.startswith("sqlite"):
        (tmp_path / "mlflow.db").mkdir()
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    else:
        (tmp_path / "plain").write_text("not a folder")
        uri = f"file://{tmp_path}/plain/mlruns"
    with pytest.raises(BackendError) as raised:
        check(LoggingConfig(backends=["mlflow"], mlflow_tracking_uri=uri))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"logging.mlflow_tracking_uri = {uri}: MLflow cannot open this store (")
    assert message.endswith("use a server (http://host:5000) or sqlite:///path/mlflow.db")
