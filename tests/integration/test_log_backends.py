"""TensorBoard, W&B (offline) and MLflow (a local sqlite store) side by side in real training runs: the same
scalars at the same steps, one W&B run and one MLflow run across restarts, and the one-line errors at start.
Each backend's data is read back with its own reader (TensorBoard's EventAccumulator, MlflowClient, W&B's
record format)."""

import glob
import json
import os
import socket
import struct
import subprocess

import numpy as np
import pytest
import torch

from tests.integration.test_trainer import all_scalars, train_command

# the tiny config, shorter: 3 + 2 steps, an evaluation at global step 4, checkpoints at 3 and 5
SMALL = ("phases.0.steps=3", "phases.1.steps=2", "phases.0.global_batch=8", "phases.1.global_batch=4")
ALL = 'logging.backends=["tensorboard", "wandb", "mlflow"]'
WANDB_META = ("global_step", "_step", "_runtime", "_timestamp")
SECRET = "s3cr3t-T0KEN"


def backend_env(tmp_path, **extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "MLFLOW_"))}
    return {**env, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), **extra}


def train(shard_root, workdir, *overrides, env):
    command = train_command(shard_root, *SMALL, ALL, f'logging.mlflow_tracking_uri="sqlite:///{workdir}/mlflow.db"',
                            *overrides)
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)


def wandb_records(path):
    """The records of a `.wandb` file: W&B's log format (LevelDB's: 32 KiB blocks of chunks, each with a
    7-byte header crc32/length/type) holding `wandb_internal_pb2.Record` protobufs, read with W&B's own
    protobuf classes."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    position, pending, block = 7, b"", 32768
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def key(item):
    return item.key or ".".join(item.nested_key)  # W&B writes a key either way


def wandb_runs(tmp_path):
    """Per invocation (the offline folders in start order): its run id, config and history rows."""
    runs = []
    for folder in sorted(glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*"))):
        (path,) = glob.glob(os.path.join(folder, "*.wandb"))
        run = {"rows": [], "step_metrics": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
                run["config"] = {key(item): json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                run["rows"].append({key(item): json.loads(item.value_json) for item in record.history.item})
            elif kind == "metric":
                run["step_metrics"][record.metric.glob_name or record.metric.name] = record.metric.step_metric
        runs.append(run)
    return runs


def float32(value):
    return float(np.float32(value))  # TensorBoard stores a scalar as float32


def test_scalars_reach_every_backend_and_restarts_continue_one_run(shard_root, tmp_path):
    env = backend_env(tmp_path)
    # 1. two steps, then stopped by the step budget (checkpoint at step 2)
    first = train(shard_root, tmp_path, "max_steps_this_run=2", env=env)
    assert first.returncode == 75, first.stderr[-3000:]
    runs_file = tmp_path / "checkpoints" / "logging_runs.json"
    ids = json.loads(runs_file.read_text())
    assert set(ids) == {"wandb", "mlflow"}
    # 2. what a kill before the first checkpoint leaves: the runs file, no checkpoint. The rerun starts from
    # step 1 and logs steps 1-2 again, to the same runs.
    for path in glob.glob(str(tmp_path / "checkpoints" / "step-*")) + [str(tmp_path / "checkpoints" / "latest")]:
        subprocess.run(["rm", "-r", path], check=True)
    second = train(shard_root, tmp_path, "max_steps_this_run=3", env=env)
    assert second.returncode == 75 and "resumed from" not in second.stderr, second.stderr[-3000:]
    assert "changed since: max_steps_this_run 2 -> 3" in second.stderr  # MLflow keeps a run's first parameters
    # 3. without the runs file, the checkpoint (step 3) names the runs to continue
    runs_file.unlink()
    third = train(shard_root, tmp_path, env=env)
    assert third.returncode == 0 and "resumed from checkpoints/step-00000003" in third.stderr, third.stderr[-3000:]
    assert json.loads(runs_file.read_text()) == ids
    state = tmp_path / "checkpoints" / "step-00000005" / "state" / "mp_rank_00_model_states.pt"
    assert torch.load(state, map_location="cpu", weights_only=True)["logging_runs"] == ids

    tensorboard = all_scalars(str(tmp_path))
    assert sorted(tensorboard["train/loss"]) == [1, 2, 3, 4, 5]
    assert [len(tensorboard["train/loss"][step]) for step in range(1, 6)] == [2, 2, 1, 1, 1]  # 1-2 logged twice
    assert sorted(tensorboard["eval/mlm_loss"]) == [4] and "progress/mfu" in tensorboard

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [ids["mlflow"]]  # one run, not three
    (run,) = runs
    assert run.info.status == "FINISHED" and set(run.data.metrics) == set(tensorboard)
    assert run.data.params["model"] == "squeezebert-tiny" and run.data.params["phases.1.global_batch"] == "4"
    for tag, expected in tensorboard.items():
        history = {}
        for metric in sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.timestamp):
            history.setdefault(metric.step, []).append(float32(metric.value))
        assert history == expected, tag

    invocations = wandb_runs(tmp_path)
    assert [invocation["id"] for invocation in invocations] == [ids["wandb"]] * 3  # one run, three invocations
    assert invocations[0]["config"]["model"] == "squeezebert-tiny"
    assert invocations[0]["config"]["phases"][0]["steps"] == 3
    # the global step is every scalar's x-axis, so steps logged again after a restart are kept, not dropped
    assert invocations[0]["step_metrics"]["*"] == "global_step"
    history = {}
    for row in (row for invocation in invocations for row in invocation["rows"]):
        for tag, value in row.items():
            if tag not in WANDB_META:
                history.setdefault(tag, {}).setdefault(row["global_step"], []).append(float32(value))
    assert history == tensorboard


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


@pytest.mark.parametrize("case", ["wandb_missing", "mlflow_server_down"])
def test_a_backend_that_cannot_work_is_one_line_before_compute(shard_root, tmp_path, case):
    if case == "wandb_missing":  # a real failing import: a stand-in package first on the path
        (tmp_path / "stand_in" / "wandb").mkdir(parents=True)
        (tmp_path / "stand_in" / "wandb" / "__init__.py").write_text(
            "raise ImportError(\"No module named 'wandb'\")\n")
        path = os.pathsep.join(filter(None, [str(tmp_path / "stand_in"), os.environ.get("PYTHONPATH")]))
        env = backend_env(tmp_path, PYTHONPATH=path)
        overrides = ('logging.backends=["tensorboard", "wandb"]',)
        fragment = ("logging.backends: 'wandb' needs the wandb package, which does not import here (No module named "
                    "'wandb'); pip install 'squeezebert-pretrain[wandb]', or take 'wandb' out of logging.backends")
    else:  # credentials in the URI: used, never shown (the line has *** in their place)
        port = closed_port()
        uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
        env = backend_env(tmp_path)
        overrides = ('logging.backends=["mlflow"]', f'logging.mlflow_tracking_uri="{uri}"')
        fragment = f"logging.mlflow_tracking_uri = http://***@127.0.0.1:{port}: the MLflow server does not answer ("
    result = subprocess.run(train_command(shard_root, *overrides), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pretrain: error: ") and fragment in last, last
    assert "resolved config" not in result.stderr and not (tmp_path / "checkpoints").exists()  # before any compute
    assert SECRET not in result.stdout + result.stderr


def test_the_resolved_config_line_and_the_checkpoints_hold_no_credentials(shard_root, tmp_path):
    """A URI with credentials in the config (MLflow not chosen, so nothing connects): the `resolved config`
    line and the checkpoint's saved config show it with `***`; the secret is in no output and no file."""
    uri = f"https://alice:{SECRET}@mlflow.example.com/?token={SECRET}"
    result = subprocess.run(train_command(shard_root, "phases.0.steps=1", "phases.1.steps=1",
                                          "phases.0.global_batch=4", "phases.1.global_batch=4",
                                          f'logging.mlflow_tracking_uri="{uri}"'),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=backend_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "resolved config" in line]
    assert '"mlflow_tracking_uri": "https://***@mlflow.example.com/?token=***"' in line
    assert SECRET not in result.stdout + result.stderr
    files = [path for path in glob.glob(str(tmp_path / "**"), recursive=True) if os.path.isfile(path)]
    assert files and not [path for path in files if SECRET.encode() in open(path, "rb").read()]
