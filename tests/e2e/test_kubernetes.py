"""deploy/kubernetes/grade-job.yaml, kept in step with the CLI (issue #16). No cluster can run
here, so:

- the manifest, rendered as its header says, is an Indexed Job whose pods run
  `isolate-grade task RUN_DIR` with only options the binary has, and every command line its
  comments give names real subcommands and options;
- its pods' command, run on this machine as the pods would run it (two at once, each with its
  JOB_COMPLETION_INDEX, in the course directory), grades a course the instructor's
  `isolate-grade ASSIGNMENT --external-tasks` is waiting for: the same gradebook as a local run,
  the same report.
"""

import json
import os
import re
import string
import subprocess
import time
from typing import Dict, List

import pytest
import yaml

from conftest import BIN, NEEDS_ROOT, ROOT, grader_env, gradebook_at, small_course

MANIFEST = ROOT / "deploy" / "kubernetes" / "grade-job.yaml"


def render(values: Dict[str, str]) -> str:
    """The manifest with its ${NAMES} substituted (what `envsubst` does); every name given."""
    text = MANIFEST.read_text()
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert names <= set(values), f"the manifest needs {sorted(names - set(values))} (test_kubernetes.py renders it)"
    return string.Template(text).substitute(values)


def values(run_dir: str = "/srv/course/.isolate-grade/ps1/runs/1-2", course: str = "/srv/course") -> Dict[str, str]:
    return {"JOB_NAME": "ps1-run", "RUN_DIR": run_dir, "COURSE_DIR": course, "COURSE_PVC": "course-data",
            "TASKS": "2", "IMAGE": "registry.example/isolate-grade:1", "INSTRUCTOR_UID": "1000",
            "INSTRUCTOR_GID": "1000"}


def help_of(*subcommand: str) -> str:
    r = subprocess.run([str(BIN), *subcommand, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def options_of(help_text: str) -> List[str]:
    return re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", help_text)


def test_the_manifest_is_an_indexed_job_running_the_task_command_with_real_options():
    job = yaml.safe_load(render(values()))
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"][:3] == ["isolate-grade", "task", "/srv/course/.isolate-grade/ps1/runs/1-2"]
    task_options = options_of(help_of("task"))
    assert set(a for a in c["command"][3:] if a.startswith("--")) <= set(task_options), c["command"]
    assert c["workingDir"] == "/srv/course"
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/srv/course"]
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["privileged"] is True
    assert pod["automountServiceAccountToken"] is False
    # every environment variable it sets is one the binary reads
    for e in c.get("env", []):
        assert e["name"].startswith("ISOLATE_GRADE_") and e["name"] in help_of() + help_of("task"), e


def test_every_command_the_manifest_gives_names_real_options():
    grade_options = options_of(help_of("grade")) + options_of(help_of())
    task_options = options_of(help_of("task"))
    commands = [line.split("isolate-grade", 1)[1] for line in MANIFEST.read_text().splitlines()
                if line.lstrip().startswith("#") and "isolate-grade " in line and "--" in line]
    assert commands, "the manifest's header gives the instructor's command"
    for command in commands:
        known = task_options if command.split()[0] == "task" else grade_options
        for opt in re.findall(r"(--[a-z][a-z0-9-]*)", command):
            assert opt in known, f"{opt} in {command!r} is not an option of isolate-grade"


@pytest.mark.usefixtures("pg_cluster")
@NEEDS_ROOT
def test_the_pods_command_grades_what_external_tasks_waits_for(pg_cluster, tmp_path):
    want_url = pg_cluster.create_db("k8s_want")
    want, expected = small_course(tmp_path, "want", want_url, students=4)
    r = subprocess.run([str(BIN), "env1", "--course", str(want.root), "--jobs", "2"], env=grader_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    url = pg_cluster.create_db("k8s")
    c, _ = small_course(tmp_path, "course", url, students=4)
    report = c.root / "report.json"
    instructor = subprocess.Popen([str(BIN), "env1", "--course", str(c.root), "--external-tasks", "--report",
                                   str(report)], env=grader_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    pods = []
    try:
        runs = c.root / ".isolate-grade" / "env1" / "runs"
        t0 = time.monotonic()
        while not (runs.is_dir() and any(runs.glob("*/queue"))):
            assert instructor.poll() is None, instructor.communicate()
            assert time.monotonic() - t0 < 300, "no run directory"
            time.sleep(0.2)
        [run] = [p.parent for p in runs.glob("*/queue")]
        container = yaml.safe_load(render(values(str(run), str(c.root))))["spec"]["template"]["spec"]["containers"][0]
        command = [str(BIN) if a == "isolate-grade" else a for a in container["command"]]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        for index in range(int(values()["TASKS"])):
            pods.append(subprocess.Popen(command, cwd=container["workingDir"],
                                         env=grader_env(JOB_COMPLETION_INDEX=str(index), **env),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        out, err = instructor.communicate(timeout=600)
        assert instructor.returncode == 0, out + err
        assert "--external-tasks: start tasks that run `isolate-grade task " + str(run) in err, err
        for p in pods:
            p_out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, p_out
    finally:
        for p in [instructor, *pods]:
            if p.poll() is None:
                p.kill()
    assert gradebook_at(url, "env-course", "env1") == gradebook_at(want_url, "env-course", "env1")
    got = json.loads(report.read_text())
    assert {s["student"]: s["score"] for s in got["students"]} == expected
    logs = {p.name.split("-worker")[0] for p in (c.root / ".isolate-grade/env1/logs").glob("task-*-worker-*.log")}
    host = os.uname().nodename
    assert logs <= {f"task-{host}-0", f"task-{host}-1"} and logs, logs
