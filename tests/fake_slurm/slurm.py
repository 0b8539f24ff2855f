"""The fake SLURM's commands and its controller (see the package docstring for what it does and why).

    python tests/fake_slurm/slurm.py {sbatch,srun,scontrol,squeue} ARGS...   (the bin/ shims call these)
    python tests/fake_slurm/slurm.py controller STATE_DIR                    (started by sbatch)

Run as a file, not a module, so that nothing is added to the jobs' PYTHONPATH.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import psutil

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
POLL_S = 0.02


def fail(command: str, message: str, code: int = 1):
    print(f"{command}: error: {message}", file=sys.stderr)
    sys.exit(code)


def state_dir() -> str:
    folder = os.environ.get("FAKE_SLURM_DIR")
    if not folder:
        fail("fake slurm", "FAKE_SLURM_DIR is not set")
    os.makedirs(os.path.join(folder, "jobs"), exist_ok=True)
    return folder


def job_path(folder: str, job_id: int, suffix: str = ".json") -> str:
    return os.path.join(folder, "jobs", f"{job_id}{suffix}")


def read_job(folder: str, job_id: int) -> dict | None:
    try:
        with open(job_path(folder, job_id)) as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def write_job(folder: str, record: dict) -> None:
    temporary = job_path(folder, record["id"], ".json.tmp")
    with open(temporary, "w") as file:
        json.dump(record, file, indent=1)
    os.replace(temporary, job_path(folder, record["id"]))


def all_jobs(folder: str) -> list[dict]:
    names = [name for name in os.listdir(os.path.join(folder, "jobs")) if name.endswith(".json")]
    return sorted((read_job(folder, int(name[:-5])) for name in names), key=lambda record: record["id"])


def history(record: dict, event: str) -> None:
    record["history"].append({"run": record["restart_count"], "event": event})


# -- formats -------------------------------------------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """`gpu[01-03,07],login1` -> gpu01 gpu02 gpu03 gpu07 login1 (zero padding kept)."""
    hosts, depth, start = [], 0, 0
    items = []
    for position, character in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            items.append(hostlist[start:position])
            start = position + 1
    for item in filter(None, items):
        match = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            for number in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{number:0{len(low)}d}{suffix}")
    return hosts


def parse_duration(text: str) -> int:
    """SLURM's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; seconds."""
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
        fields = [int(field) for field in text.split(":")] + [0] * (3 - len(text.split(":")))
        hours, minutes, seconds = fields
    else:
        fields = [int(field) for field in text.split(":")]
        hours, minutes, seconds = {1: (0, fields[0], 0), 2: (0, *fields), 3: tuple(fields)}[len(fields)]
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_signal(text: str) -> dict:
    """--signal=[{R|B}:]SIG[@SECONDS] (default 60 s)."""
    batch = text.startswith("B:")
    text = text.split(":", 1)[1] if text[:2] in ("B:", "R:") else text
    name, _, seconds = text.partition("@")
    number = int(name) if name.isdigit() else int(getattr(signal, "SIG" + name.removeprefix("SIG")))
    return {"signal": number, "seconds": int(seconds or 60), "batch": batch}


def apply_export(spec: str | None, base: dict) -> dict:
    """--export: ALL (the default) or NONE, then VAR=value or VAR (taken from `base`) entries."""
    entries = (spec or "ALL").split(",")
    env = dict(base) if entries[0] in ("ALL", "") else {}
    for entry in entries[1:] if entries[0] in ("ALL", "NONE", "") else entries:
        name, equals, value = entry.partition("=")
        if equals:
            env[name] = value
        elif name in base:
            env[name] = base[name]
    return env


# -- sbatch ----------------------------------------------------------------------------------------------

SBATCH_OPTIONS = {  # option -> (key, takes a value)
    "-N": ("nodes", True), "--nodes": ("nodes", True), "-J": ("job_name", True), "--job-name": ("job_name", True),
    "-t": ("time", True), "--time": ("time", True), "--signal": ("signal", True), "-o": ("output", True),
    "--output": ("output", True), "-e": ("error", True), "--error": ("error", True),
    "--open-mode": ("open_mode", True), "-a": ("array", True), "--array": ("array", True),
    "-d": ("dependency", True), "--dependency": ("dependency", True), "--export": ("export", True),
    "-c": ("cpus_per_task", True), "--cpus-per-task": ("cpus_per_task", True),
    "--ntasks-per-node": ("ntasks_per_node", True), "-n": ("ntasks", True), "--ntasks": ("ntasks", True),
    "--gpus-per-node": ("gpus_per_node", True), "-p": ("partition", True), "--partition": ("partition", True),
    "--requeue": ("requeue", False), "--no-requeue": ("no_requeue", False), "--parsable": ("parsable", False),
}


def parse_options(arguments: list[str], command: str) -> tuple[dict, list[str]]:
    """Options up to the first argument that is not one; returns them and the rest."""
    options, index = {}, 0
    while index < len(arguments) and arguments[index].startswith("-"):
        name, equals, value = arguments[index].partition("=")
        if name not in SBATCH_OPTIONS:
            fail(command, f"unrecognized option '{name}'")
        key, takes_value = SBATCH_OPTIONS[name]
        if takes_value and not equals:
            index += 1
            value = arguments[index]
        options[key] = value if takes_value else True
        index += 1
    return options, arguments[index:]


def script_options(script_text: str) -> dict:
    """#SBATCH lines, read until the first command, as SLURM does."""
    arguments = []
    for line in script_text.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            arguments += shlex.split(stripped[len("#SBATCH"):], comments=True)
        elif stripped and not stripped.startswith("#"):
            break
    return parse_options(arguments, "sbatch")[0]


def array_tasks(spec: str) -> list[int]:
    spec = spec.split("%")[0]  # a limit on simultaneous tasks: they run one at a time here anyway
    tasks = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        tasks += list(range(int(low), int(high or low) + 1))
    return tasks


def next_job_ids(folder: str, count: int) -> tuple[int, int]:
    """`count` consecutive job ids and the index of the first among all jobs submitted here."""
    with open(os.path.join(folder, "lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = os.path.join(folder, "counter.json")
        state = json.load(open(counter)) if os.path.exists(counter) else {
            "next_id": int(os.environ.get("FAKE_SLURM_FIRST_JOB_ID", 1000 + os.getpid() % 18000)), "submitted": 0}
        first, index = state["next_id"], state["submitted"]
        state = {"next_id": first + count, "submitted": index + count}
        json.dump(state, open(counter, "w"))
    return first, index


def sbatch(arguments: list[str]) -> None:
    folder = state_dir()
    options, rest = parse_options(arguments, "sbatch")
    if not rest:
        fail("sbatch", "a batch script is required")
    script, script_arguments = rest[0], rest[1:]
    try:
        script_text = open(script).read()
    except OSError as error:
        fail("sbatch", f"Unable to open file {script}: {error.strerror}")
    options = {**script_options(script_text), **options}  # the command line wins
    dependency = []
    for item in filter(None, (options.get("dependency") or "").split(",")):
        kind, *ids = item.split(":")
        dependency += [[kind, int(job_id)] for job_id in ids]
    tasks = array_tasks(options["array"]) if "array" in options else [None]
    first_id, first_index = next_job_ids(folder, len(tasks))
    environment = apply_export(options.get("export"), dict(os.environ))
    for offset, task in enumerate(tasks):
        record = {
            "id": first_id + offset, "index": first_index + offset, "name": options.get("job_name")
            or os.path.basename(script), "script": script_text, "args": script_arguments, "cwd": os.getcwd(),
            "env": environment, "nodes": int(options.get("nodes", 1)),
            "time_limit": parse_duration(options["time"]) if "time" in options else None,
            "signal": parse_signal(options["signal"]) if "signal" in options else None,
            "requeue": "no" if options.get("no_requeue") else "yes" if options.get("requeue") else "default",
            "output": options.get("output", "slurm-%A_%a.out" if task is not None else "slurm-%j.out"),
            "open_mode": options.get("open_mode", "truncate"), "cpus_per_task": options.get("cpus_per_task"),
            "dependency": dependency, "state": "PENDING", "restart_count": 0, "exit_code": None,
            "array": None if task is None else {"job_id": first_id, "task_id": task, "count": len(tasks),
                                                "min": min(tasks), "max": max(tasks)},
            "history": [],
        }
        write_job(folder, record)
    start_controller(folder)
    print(first_id if options.get("parsable") else f"Submitted batch job {first_id}")


def start_controller(folder: str) -> None:
    with open(os.path.join(folder, "controller.log"), "a") as log:
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "controller", folder], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


# -- the controller ----------------------------------------------------------------------------------------


def controller(folder: str) -> None:
    """Runs queued jobs one at a time while any is pending; one controller per state folder."""
    lock = open(os.path.join(folder, "controller.lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another controller runs the queue
    while True:
        records = all_jobs(folder)
        by_id = {record["id"]: record for record in records}
        runnable = None
        for record in (r for r in records if r["state"] == "PENDING"):
            met = dependency_state(record, by_id)
            if met == "never":
                record["state"], record["reason"] = "CANCELLED", "DependencyNeverSatisfied"
                history(record, "cancelled: dependency never satisfied")
                write_job(folder, record)
            elif met == "met":
                runnable = record
                break
        if runnable:
            run_job(folder, runnable)
            continue
        if not any(r["state"] == "PENDING" for r in all_jobs(folder)):
            fcntl.flock(lock, fcntl.LOCK_UN)
            # a job submitted while this controller was deciding to end: take it on after all
            if any(r["state"] == "PENDING" for r in all_jobs(folder)):
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    continue
                except BlockingIOError:
                    return
            return
        time.sleep(0.1)  # pending jobs wait on dependencies that are themselves pending: not possible here


def dependency_state(record: dict, by_id: dict) -> str:
    for kind, job_id in record["dependency"]:
        other = by_id.get(job_id)
        if other is None:
            return "never"
        if other["state"] not in TERMINAL:
            return "waiting"
        if kind == "afterok" and other["state"] != "COMPLETED":
            return "never"
    return "met"


def expand_output(pattern: str, record: dict) -> str:
    array = record["array"] or {}
    values = {"%j": str(record["id"]), "%x": record["name"], "%A": str(array.get("job_id", record["id"])),
              "%a": str(array.get("task_id", 4294967294)), "%%": "%"}
    path = re.sub(r"%[jxAa%]", lambda match: values[match.group(0)], pattern)
    return os.path.join(record["cwd"], path)


def job_environment(record: dict) -> dict:
    hosts = [f"127.0.0.{node + 1}" for node in range(record["nodes"])]
    nodelist = hosts[0] if len(hosts) == 1 else f"127.0.0.[1-{len(hosts)}]"
    env = {**record["env"], "SLURM_JOB_ID": str(record["id"]), "SLURM_JOBID": str(record["id"]),
           "SLURM_JOB_NAME": record["name"], "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
           "SLURM_JOB_NUM_NODES": str(record["nodes"]), "SLURM_NNODES": str(record["nodes"]),
           "SLURM_SUBMIT_DIR": record["cwd"], "SLURM_NODEID": "0", "SLURMD_NODENAME": hosts[0],
           "SLURM_RESTART_COUNT": str(record["restart_count"])}
    if record["cpus_per_task"]:
        env["SLURM_CPUS_PER_TASK"] = str(record["cpus_per_task"])
    if record["array"]:
        array = record["array"]
        env.update(SLURM_ARRAY_JOB_ID=str(array["job_id"]), SLURM_ARRAY_TASK_ID=str(array["task_id"]),
                   SLURM_ARRAY_TASK_COUNT=str(array["count"]), SLURM_ARRAY_TASK_MIN=str(array["min"]),
                   SLURM_ARRAY_TASK_MAX=str(array["max"]))
    return env


def tasks_of(folder: str, job_id: int) -> list[dict]:
    """The tasks `srun` started for this job: {"step", "node", "pid"}."""
    try:
        with open(job_path(folder, job_id, ".tasks")) as file:
            return [json.loads(line) for line in file if line.strip()]
    except FileNotFoundError:
        return []


def processes_below(leaders: list[int]) -> list[psutil.Process]:
    """The session leaders (the batch shell, srun's tasks), all their descendants, and everything still in
    their sessions (orphans included), as a job's cgroup holds them on a real node."""
    found, sessions = {}, set(leaders)
    for pid in leaders:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
        except psutil.NoSuchProcess:
            continue
    for process in psutil.process_iter():
        try:
            if process.pid not in found and os.getsid(process.pid) in sessions:
                found[process.pid] = process
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return list(found.values())


def send(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def load_events(record: dict) -> list[dict]:
    events = json.loads(record["env"].get("FAKE_SLURM_EVENTS", "[]"))
    return [event for event in events if event["job"] == record["index"] and event["run"] == record["restart_count"]]


def run_job(folder: str, record: dict) -> None:
    output = expand_output(record["output"], record)
    if not os.path.isdir(os.path.dirname(output)):
        record.update(state="FAILED", exit_code=1, reason=f"could not open output file {output}")
        history(record, f"failed: could not open output file {output}: No such file or directory")
        write_job(folder, record)
        return
    script = job_path(folder, record["id"], ".script")
    with open(script, "w") as file:
        file.write(record["script"])
    os.chmod(script, 0o755)
    open(job_path(folder, record["id"], ".tasks"), "w").close()  # this run's tasks
    append = record["open_mode"] == "append" or record["restart_count"] > 0
    with open(output, "a" if append else "w") as log:
        batch = subprocess.Popen([script, *record["args"]], cwd=record["cwd"], env=job_environment(record),
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    record["state"] = "RUNNING"
    history(record, "started")
    write_job(folder, record)
    ending, code = supervise(folder, record, batch)
    send(processes_below([batch.pid] + [task["pid"] for task in tasks_of(folder, record["id"])]), signal.SIGKILL)
    requeue_flag = job_path(folder, record["id"], ".requeue")
    if os.path.exists(requeue_flag):
        os.remove(requeue_flag)
        ending = "REQUEUE"
    record["exit_code"] = code
    history(record, f"batch script exited {code}" + (f" ({ending.lower()})" if ending else ""))
    if ending == "REQUEUE" or (ending == "NODE_FAIL" and record["requeue"] == "yes"):
        record["state"] = "PENDING"
        history(record, "requeued")
        record["restart_count"] += 1
    else:
        record["state"] = ending or ("COMPLETED" if code == 0 else "FAILED")
    write_job(folder, record)


def supervise(folder: str, record: dict, batch: subprocess.Popen) -> tuple[str | None, int]:
    """Until the batch script exits: the clock, the warning signal, the time limit, requeue requests and the
    test's events. Returns how the job ended (None, TIMEOUT, REQUEUE, NODE_FAIL) and the script's code."""
    kill_wait = float(record["env"].get("FAKE_SLURM_KILL_WAIT", "30"))
    limit, warning = record["time_limit"], record["signal"]
    started, jump = time.monotonic(), 0.0
    warned, ending, terminated_at = False, None, None
    events, fired = load_events(record), set()

    def everything():
        return processes_below([batch.pid] + [task["pid"] for task in tasks_of(folder, record["id"])])

    def terminate(reason):
        nonlocal ending, terminated_at
        ending, terminated_at = reason, time.monotonic()
        history(record, f"{reason.lower()}: SIGTERM to every process of the job")
        send(everything(), signal.SIGTERM)

    while batch.poll() is None:
        now = time.monotonic()
        for number, event in enumerate(events):
            if number in fired or not os.path.exists(os.path.join(record["cwd"], event["when"])):
                continue
            fired.add(number)
            if event["do"] == "warn":
                jump = max(jump, limit - warning["seconds"] - (now - started))
            elif event["do"] == "time-limit":
                jump = max(jump, limit - (now - started))
            elif event["do"] == "kill-node":
                node = event["node"]
                pids = [task["pid"] for task in tasks_of(folder, record["id"]) if task["node"] == node]
                history(record, f"node {node} lost: SIGKILL to its processes")
                send(processes_below(pids + ([batch.pid] if node == 0 else [])), signal.SIGKILL)
                if node == 0:
                    ending = "NODE_FAIL"
            write_job(folder, record)
        elapsed = now - started + jump
        if warning and not warned and limit is not None and elapsed >= limit - warning["seconds"]:
            warned = True
            name = signal.Signals(warning["signal"]).name
            if warning["batch"]:
                history(record, f"{name} to the batch shell")
                batch.send_signal(warning["signal"])
            else:
                history(record, f"{name} to the tasks")
                for task in tasks_of(folder, record["id"]):
                    try:
                        os.kill(task["pid"], warning["signal"])
                    except ProcessLookupError:
                        pass
            write_job(folder, record)
        if ending is None and limit is not None and elapsed >= limit:
            terminate("TIMEOUT")
            write_job(folder, record)
        if ending is None and os.path.exists(job_path(folder, record["id"], ".requeue")):
            terminate("REQUEUE")
            write_job(folder, record)
        if terminated_at is not None and now - terminated_at >= kill_wait:
            history(record, "KillWait over: SIGKILL to every process of the job")
            send(everything(), signal.SIGKILL)
            terminated_at = None
            write_job(folder, record)
        time.sleep(POLL_S)
    code = batch.returncode
    return ending, code if code >= 0 else 128 - code


# -- srun ------------------------------------------------------------------------------------------------


def srun(arguments: list[str]) -> None:
    folder = state_dir()
    job_id = int(os.environ.get("SLURM_JOB_ID") or fail("srun", "not inside a job (SLURM_JOB_ID is unset)"))
    kill_on_bad_exit, export, index = False, None, 0
    while index < len(arguments) and arguments[index].startswith("-"):
        name, equals, value = arguments[index].partition("=")
        if name in ("-K", "--kill-on-bad-exit"):
            kill_on_bad_exit = value != "0"
        elif name == "--export":
            export = value
        elif not equals and name in ("-N", "--nodes", "-n", "--ntasks", "--ntasks-per-node"):
            index += 1
        index += 1
    command = arguments[index:]
    if not command:
        fail("srun", "no command given")
    hosts = expand_hostlist(os.environ["SLURM_JOB_NODELIST"])
    step = len({task["step"] for task in tasks_of(folder, job_id)})
    base = apply_export(export, dict(os.environ))
    tasks = []
    for node, host in enumerate(hosts):
        env = {**base, "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), "SLURM_LOCALID": "0",
               "SLURMD_NODENAME": host, "SLURM_STEP_ID": str(step), "SLURM_STEP_NUM_NODES": str(len(hosts)),
               "SLURM_STEP_NUM_TASKS": str(len(hosts)), "SLURM_NTASKS": str(len(hosts))}
        task = subprocess.Popen(command, env=env, start_new_session=True)  # a node: its own session
        tasks.append(task)
        with open(job_path(folder, job_id, ".tasks"), "a") as file:
            file.write(json.dumps({"step": step, "node": node, "pid": task.pid}) + "\n")

    def forward(signum, frame):
        for task in tasks:
            if task.poll() is None:
                task.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    kill_wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "30"))
    terminated_at, codes = None, {}
    while len(codes) < len(tasks):
        for node, task in enumerate(tasks):
            if node in codes or task.poll() is None:
                continue
            code = task.returncode
            codes[node] = code if code >= 0 else 128 - code
            if code:
                how = f"Exited with exit code {code}" if code > 0 else signal.Signals(-code).name
                print(f"srun: error: {hosts[node]}: task {node}: {how}", file=sys.stderr)
                if kill_on_bad_exit and terminated_at is None:
                    print(f"srun: error: Terminating StepId={job_id}.{step}", file=sys.stderr)
                    terminated_at = time.monotonic()
                    send(processes_below([t.pid for t in tasks if t.poll() is None]), signal.SIGTERM)
        if terminated_at is not None and time.monotonic() - terminated_at >= kill_wait:
            send(processes_below([t.pid for t in tasks if t.poll() is None]), signal.SIGKILL)
            terminated_at = float("inf")
        time.sleep(POLL_S)
    sys.exit(max(codes.values()))


# -- scontrol, squeue ------------------------------------------------------------------------------------------


def scontrol(arguments: list[str]) -> None:
    if arguments[:2] == ["show", "hostnames"]:
        hostlist = arguments[2] if len(arguments) > 2 else os.environ.get("SLURM_JOB_NODELIST")
        if not hostlist:
            fail("scontrol", "no hostlist given and SLURM_JOB_NODELIST is unset")
        print("\n".join(expand_hostlist(hostlist)))
        return
    folder = state_dir()
    if arguments[:1] == ["requeue"] and len(arguments) == 2:
        for job_id in map(int, arguments[1].split(",")):
            record = read_job(folder, job_id) or fail("scontrol", f"Invalid job id specified for job {job_id}")
            if record["requeue"] == "no":
                fail("scontrol", f"Requested operation is presently disabled for job {job_id}")
            if record["state"] == "RUNNING":
                open(job_path(folder, job_id, ".requeue"), "w").close()
            elif record["state"] in TERMINAL:
                record["state"] = "PENDING"
                history(record, "requeued")
                record["restart_count"] += 1
                write_job(folder, record)
                start_controller(folder)
        return
    if arguments[:2] == ["show", "job"] and len(arguments) == 3:
        record = read_job(folder, int(arguments[2])) or fail("scontrol", "Invalid job id specified")
        print(f"JobId={record['id']} JobName={record['name']} JobState={record['state']} "
              f"Restarts={record['restart_count']} ExitCode={record['exit_code'] or 0}:0 NumNodes={record['nodes']}")
        return
    fail("scontrol", f"this stand-in does not do: {' '.join(arguments)}")


def squeue(arguments: list[str]) -> None:
    folder = state_dir()
    header, wanted, fmt, index = True, None, "%i %j %T %r", 0
    while index < len(arguments):
        name, equals, value = arguments[index].partition("=")
        if name in ("-h", "--noheader"):
            header = False
        elif name in ("-j", "--jobs", "-o", "--format", "-u", "--user"):
            if not equals:
                index += 1
                value = arguments[index]
            if name in ("-j", "--jobs"):
                wanted = {int(job_id) for job_id in value.split(",")}
            elif name in ("-o", "--format"):
                fmt = value
        index += 1
    fields = {"%i": lambda r: str(r["id"]), "%j": lambda r: r["name"], "%T": lambda r: r["state"],
              "%r": lambda r: r.get("reason") or "None",
              "%A": lambda r: str(r["array"]["job_id"] if r["array"] else r["id"])}
    if header:
        print(re.sub(r"%[ijTrA]", lambda m: {"%i": "JOBID", "%j": "NAME", "%T": "STATE", "%r": "REASON",
                                              "%A": "ARRAY_JOB_ID"}[m.group(0)], fmt))
    for record in all_jobs(folder):
        if record["state"] in ("PENDING", "RUNNING") and (wanted is None or record["id"] in wanted):
            print(re.sub(r"%[ijTrA]", lambda m: fields[m.group(0)](record), fmt))


def main() -> None:
    command, arguments = sys.argv[1], sys.argv[2:]
    if command == "controller":
        controller(arguments[0])
    else:
        {"sbatch": sbatch, "srun": srun, "scontrol": scontrol, "squeue": squeue}[command](arguments)


if __name__ == "__main__":
    main()
