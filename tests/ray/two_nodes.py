"""Run inside a network namespace of its own (``unshare -n``, loopback up): a Ray head and a
second node, both on 127.0.0.1, 1 CPU each; a 2-worker Pool; print the dashboard's rows as
JSON. Only there can two raylets share 127.0.0.1 (see ../shared/recipes/cluster.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ray_head import ray_env, start_ray_head, stop_ray_head


def main() -> None:
    head = start_ray_head(num_cpus=1, multi_node=True)  # (this namespace has loopback only)
    node = None
    try:
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        log = open(os.path.join(head.tmp, "node.log"), "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [ray_bin, "start", "--block", f"--address={head.address}",
             "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
            env={**os.environ, **ray_env(head.tmp, multi_node=True)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        print("head up, node starting", file=sys.stderr, flush=True)
        import ray

        ray.init(address=head.address, log_to_driver=False, configure_logging=False)
        deadline = time.monotonic() + 90
        while ray.cluster_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        print("cluster CPUs", ray.cluster_resources().get("CPU"), file=sys.stderr, flush=True)
        if ray.cluster_resources().get("CPU", 0) < 2:
            with open(os.path.join(head.tmp, "node.log"), "rb") as fh:
                sys.stderr.write(fh.read().decode()[-4000:])
            raise SystemExit("the second node did not join")
        import nbpool
        from nbpool._progress import JobProgress

        with nbpool.Pool(2, ray_address=head.address, progress=False) as pool:
            assert pool.map(abs, range(-10, 0)) == list(range(10, 0, -1))
            while len(pool._engine.worker_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            view = JobProgress(True, "text", None, "pool")
            rows = pool._engine._snapshot(None, time.monotonic(), "running", view)["workers"]
        print(json.dumps(rows), flush=True)
        ray.shutdown()
    finally:
        if node is not None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(10)
        stop_ray_head(head)


if __name__ == "__main__":
    main()
