"""Where a run's scalars go: TensorBoard (the default, nothing extra to install), Weights & Biases, MLflow.

Each backend is one small class with the same face: `scalars({tag: value}, step)`, `flush()`,
`close(outcome)` and `run_id` (None for TensorBoard). `pretrain.metrics` hands every scalar to every
backend under the same tag (`train/...`, `progress/...`, `eval/...`) and the global step; only rank 0 opens
backends. W&B and MLflow get the resolved config as the run's parameters.

**Checked at start** (`check`): the package imports, and a server the run will talk to answers (MLflow over
http(s), W&B online), or the local MLflow store opens. Rank 0 checks before the model is built and every
rank raises its verdict, so a missing package or an unreachable server is one line, exit 2, before any
compute.

**One run across restarts.** A run's ids are kept in two places: `<checkpoint.dir>/logging_runs.json`,
written (atomically) when a run is first opened, so a restart before the first checkpoint continues the
same W&B and MLflow runs; and every checkpoint's client state, which is what a resumed checkpoint says and
wins over the file. Deleting `checkpoint.dir` to start over starts new runs too.

**Repeated steps.** The steps between the last checkpoint and a kill are trained and logged again after the
resume, with the same step numbers (and, the resume being exact, the same values but for timings).
TensorBoard and MLflow keep both points. W&B drops a row whose step is below its last, so the global step
goes to W&B as the metric `global_step`, declared every scalar's x-axis (`define_metric`), and W&B's own
`_step` keeps counting rows.

**Credentials** in a tracking URI (`https://user:token@host`, `?token=...`) are used to connect and shown
nowhere: messages, console lines and parameters carry `pretrain.config.redact_uri`'s form (`https://***@host`),
library errors included.

**A backend that fails mid-run** (a server gone for longer than its client retries) is reported in one line
and left out for the rest of this invocation, with the count of steps it missed at the end: training goes
on, TensorBoard (if chosen) keeps every scalar, and the next invocation logs to the same run again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request

from formats.errors import UserError, one_line
from formats.files import atomic_write_bytes

from .config import LoggingConfig, redact_uri, redacted

RUNS_FILE = "logging_runs.json"  # in checkpoint.dir: {"wandb": id, "mlflow": id}
DEFAULT_PROJECT = "squeezebert-pretrain"
SERVER_TIMEOUT_S = 5.0
STEP_METRIC = "global_step"  # W&B's x-axis for every scalar (its own `_step` must only increase)
INSTALL = {"wandb": "pip install 'squeezebert-pretrain[wandb]'", "mlflow": "pip install 'squeezebert-pretrain[mlflow]'"}
MLFLOW_STATUS = {"complete": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}  # KILLED: to be resumed


class BackendError(UserError):
    """A logging backend that cannot be used; the message names it, the key and what to do."""


# -- the check at start ------------------------------------------------------------------------------------


def check(config: LoggingConfig) -> None:
    """Raises `BackendError` when a chosen backend cannot work here. Rank 0 only (it may talk to a server)."""
    for name in config.backends:
        if name == "tensorboard":
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # ImportError, or a broken install's own error at import
            raise BackendError(f"logging.backends: {name!r} needs the {name} package, which does not import here "
                               f"({redact_uri(one_line(error))}); {INSTALL[name]}, or take {name!r} out of "
                               "logging.backends") from None
        CHECKS[name](config)


def unreachable(url: str) -> str | None:
    """Why `url` does not answer within SERVER_TIMEOUT_S, or None when it answers (any HTTP status). The
    userinfo is left out of the request: urllib would take `user:token@host` for a host name, and any
    answer, a 401 included, says the server is there."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    try:
        urllib.request.urlopen(parts._replace(netloc=netloc).geturl(), timeout=SERVER_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # an answer, if not a happy one: the server is there
    except (urllib.error.URLError, OSError, ValueError) as error:
        return redact_uri(one_line(getattr(error, "reason", error)))
    return None


def check_wandb(config: LoggingConfig) -> None:
    import wandb

    settings = wandb.setup().settings  # WANDB_MODE, WANDB_BASE_URL and `wandb offline` resolved as wandb.init will
    if settings.mode in ("offline", "dryrun", "disabled"):
        return
    failure = unreachable(settings.base_url)
    if failure:
        raise BackendError(f"logging.backends: the W&B server {redact_uri(settings.base_url)} does not answer "
                           f"({failure}); "
                           "check the network or WANDB_BASE_URL, or set WANDB_MODE=offline and `wandb sync` later")


def mlflow_tracking_uri(config: LoggingConfig) -> tuple[str, str]:
    """The tracking URI and where it was stated (for error messages)."""
    if config.mlflow_tracking_uri:
        return config.mlflow_tracking_uri, "logging.mlflow_tracking_uri"
    import mlflow

    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else \
        "MLflow's default tracking URI (set logging.mlflow_tracking_uri)"
    return mlflow.get_tracking_uri(), source


def check_mlflow(config: LoggingConfig) -> None:
    uri, source = mlflow_tracking_uri(config)
    shown = redact_uri(uri)
    if uri.startswith(("http://", "https://")):
        # our own request with a short timeout: MLflow's client retries an unreachable server for minutes
        parts = urllib.parse.urlsplit(uri)
        failure = unreachable(parts._replace(path=parts.path.rstrip("/") + "/health").geturl())
        if failure:
            raise BackendError(f"{source} = {shown}: the MLflow server does not answer ({failure}); start it, or "
                               f"set {source.split(' (')[0]} to a server that answers")
        return
    from mlflow import MlflowClient

    try:  # a local store: open it (a sqlite file is created here)
        # sqlite first by itself: MLflow retries a database it cannot open for ~100 s before it gives up
        path = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            sqlite3.connect(path).close()
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        raise BackendError(f"{source} = {shown}: MLflow cannot open this store ({redact_uri(one_line(error, 300))}); "
                           "use a server (http://host:5000) or sqlite:///path/mlflow.db") from None


@contextlib.contextmanager
def credentials_masked():
    """A library error raised inside is raised again as a `BackendError` whose message has the URI's
    credentials masked: MLflow's errors quote the full URL it called."""
    try:
        yield
    except BackendError:
        raise
    except Exception as error:
        raise BackendError(redact_uri(one_line(error, 300))) from None


CHECKS = {"wandb": check_wandb, "mlflow": check_mlflow}


# -- the backends ------------------------------------------------------------------------------------------


class TensorBoard:
    name, run_id = "tensorboard", None

    def __init__(self, config: LoggingConfig, run_id: str | None, params: dict, line) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(config.dir)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


class WandB:
    name = "wandb"

    def __init__(self, config: LoggingConfig, run_id: str | None, params: dict, line) -> None:
        import wandb

        # resume="allow": the run with this id continues (or is made, when the server does not know it);
        # allow_val_change: a resumed run's config may differ in what a restart may change (max_steps_this_run)
        self.run = wandb.init(project=config.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                              name=config.run_name or None, id=run_id, resume="allow", config=params,
                              allow_val_change=True, settings=wandb.Settings(quiet=True))
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.run_id = self.run.id

    def scalars(self, values: dict, step: int) -> None:
        self.run.log({**values, STEP_METRIC: step})

    def flush(self) -> None:
        pass  # W&B's own process writes as the rows come

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=1 if outcome == "failed" else 0)


class MLflow:
    name = "mlflow"

    def __init__(self, config: LoggingConfig, run_id: str | None, params: dict, line) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri, _ = mlflow_tracking_uri(config)
        self.client = client = MlflowClient(uri)
        logged = {}
        if run_id:
            run = self.existing_run(run_id)
            if run:
                client.update_run(run_id, status="RUNNING")
                logged = run.data.params
            else:
                line(f"mlflow: run {run_id} (recorded by the earlier invocation) is not in {redact_uri(uri)}; "
                     "starting a new run")
                run_id = None
        if not run_id:
            name = config.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            run_id = client.create_run(experiment_id, run_name=config.run_name or None).info.run_id
        self.run_id = run_id
        # MLflow's parameters cannot change once logged: a resumed run logs the new ones and says which differ
        flat = flatten(params)
        new = [Param(key, value) for key, value in flat.items() if key not in logged]
        for start in range(0, len(new), 100):  # MLflow takes 100 parameters per request
            client.log_batch(run_id, params=new[start:start + 100])
        changed = [f"{key} {logged[key]} -> {value}" for key, value in flat.items()
                   if key in logged and logged[key] != value]
        if changed:
            line(f"mlflow: run {run_id} keeps the parameters it was started with; changed since: {'; '.join(changed)}")

    def existing_run(self, run_id: str):
        """The run, or None when this store does not have it (another tracking URI, or deleted)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return run if run.info.lifecycle_stage == "active" else None

    def scalars(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with credentials_masked():
            self.client.log_batch(self.run_id, metrics=[Metric(tag, float(value), now, step)
                                                        for tag, value in values.items()])

    def flush(self) -> None:
        pass  # each step's request has returned

    def close(self, outcome: str) -> None:
        with credentials_masked():
            self.client.set_terminated(self.run_id, status=MLFLOW_STATUS[outcome])


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    """{"phases": [{"steps": 3}]} -> {"phases.0.steps": "3"}: MLflow's parameters are flat strings."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            value = dict(enumerate(value))
        if isinstance(value, dict) and value:
            flat.update(flatten({str(k): v for k, v in value.items()}, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


# -- opening the runs --------------------------------------------------------------------------------------


def read_recorded_runs(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, RUNS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            runs = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: unreadable ({one_line(error)}); delete it to start new W&B/MLflow runs") \
            from None
    if not isinstance(runs, dict):
        raise BackendError(f"{path}: not a table of run ids; delete it to start new W&B/MLflow runs")
    return runs


def open_backends(config: LoggingConfig, params: dict, resumed: dict, checkpoint_dir: str, line) -> list:
    """Every chosen backend, open; W&B and MLflow continue the run the checkpoint (else `RUNS_FILE`) names.
    `params` (the resolved config) reach them with credentials masked. Rank 0 only. A backend that cannot
    open is a `BackendError`, the ones already open closed as failed."""
    params = redacted(params)  # RunConfig.to_dict has masked them already; any other caller's too
    recorded = read_recorded_runs(checkpoint_dir)
    backends = []
    try:
        for name in config.backends:
            run_id = resumed.get(name) or recorded.get(name)
            try:
                backends.append(BACKENDS[name](config, run_id, params, line))
            except BackendError:
                raise
            except Exception as error:
                raise BackendError(f"logging.backends: could not open the {name} run "
                                   f"({redact_uri(one_line(error, 300))})") from None
        runs = {**recorded, **{backend.name: backend.run_id for backend in backends if backend.run_id}}
        if runs != recorded:  # before the first step: a restart that finds no checkpoint continues these runs
            atomic_write_bytes(os.path.join(checkpoint_dir, RUNS_FILE), json.dumps(runs, indent=1).encode())
    except BaseException:
        for backend in backends:
            backend.close("failed")
        raise
    return backends
