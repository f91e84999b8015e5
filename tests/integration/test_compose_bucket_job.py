"""compose.yaml's `seaweedfs-bucket` job, its script run for real against SeaweedFS.

The relays start only after this job exits 0 (`service_completed_successfully`), and
`docker compose up` runs it again on every later `up` (an upgrade, a changed .env), when the
bucket already exists: a job that fails then keeps both relays from starting.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.seaweedfs import SeaweedServer, weed_executable
from tests.unit.test_deploy_files import compose

# compose.yaml's job names the stack's SeaweedFS by its service name.
COMPOSE_MASTER = "-master=seaweedfs:9333"


def job_script(server: SeaweedServer) -> str:
    """The job's `sh -c` script, pointed at ``server``'s master (port and its gRPC port)."""
    spec = compose()["services"]["seaweedfs-bucket"]
    assert spec["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = spec["command"]
    assert COMPOSE_MASTER in script, script
    ports = server._ports  # the ports this test server was started on
    master = f"-master={server.host}:{ports['master.port']}.{ports['master.port.grpc']}"
    return str(script).replace(COMPOSE_MASTER, master)


def run_job(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    weed_dir = str(Path(weed_executable()).parent)
    env = {"PATH": f"{weed_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return subprocess.run(
        ["sh", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def bucket_listing(server: SeaweedServer, cwd: Path) -> str:
    ports = server._ports
    master = f"-master={server.host}:{ports['master.port']}.{ports['master.port.grpc']}"
    return subprocess.run(
        [weed_executable(), "shell", master],
        input="s3.bucket.list\n",
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_the_bucket_job_succeeds_on_a_new_store_and_again_when_the_bucket_exists(
    seaweedfs: SeaweedServer, tmp_path: Path
) -> None:
    script = job_script(seaweedfs)
    first = run_job(script, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert any(
        line.split()[:1] == ["recordings"]
        for line in bucket_listing(seaweedfs, tmp_path).splitlines()
    )
    # The next `docker compose up` runs the job again on the same store.
    again = run_job(script, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "bucket recordings: ready" in again.stdout
