"""A real Dagster stack for tests and benchmarks: `dagster dev` (webserver, code server and
every daemon: run queue, backfills, schedules, sensors) in its own DAGSTER_HOME, driven
over GraphQL/HTTP like the UI drives it.

`dagster dev` is started in its own session and stopped by signalling the process group:
started as a background job of a non-interactive shell it ignores SIGINT and its children
would outlive it.

    with dagster_stack(tmp_path / "h", "dagster.yaml", "agent_reports.definitions") as s:
        run_id = s.launch_run("market_job", partition="2024-03-01")
        s.wait_for_runs([run_id])
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_reports_tests.conftest import free_port, start_process, stop_process

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

RUN_FIELDS = "runId jobName status creationTime startTime endTime tags { key value }"
LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename
    ... on RepositoryLocation { repositories { name } }
    ... on PythonError { message } } } } } }"""
LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } }
  ... on Error { message } ... on RunConfigValidationInvalid { errors { message } } } }"""
LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on Error { message } } }"""
RUNS = f"""query($filter: RunsFilter, $limit: Int) {{ runsOrError(filter: $filter, limit: $limit) {{
  __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} ... on Error {{ message }} }} }}"""
POOL = """query($pool: String) { instance { concurrencyLimit(concurrencyKey: $pool) {
  limit usingDefaultLimit } } }"""
MATERIALIZATIONS = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
  __typename ... on Asset { assetMaterializations { partition runId } } } }"""


class GraphQLError(RuntimeError):
    """The webserver answered with errors, or a mutation returned an error type."""


@dataclass(frozen=True)
class Run:
    """A run record as the webserver reports it (times in epoch seconds, None until set)."""

    run_id: str
    job_name: str
    status: str
    creation_time: float
    start_time: float | None
    end_time: float | None
    tags: dict[str, str]

    @classmethod
    def from_graphql(cls, data: Mapping[str, Any]) -> Run:
        return cls(
            run_id=data["runId"],
            job_name=data["jobName"],
            status=data["status"],
            creation_time=data["creationTime"],
            start_time=data["startTime"],
            end_time=data["endTime"],
            tags={t["key"]: t["value"] for t in data["tags"]},
        )

    @property
    def partitions(self) -> tuple[str, ...]:
        """The partition key, or the (start, end) of a range run's partitions."""
        if PARTITION_TAG in self.tags:
            return (self.tags[PARTITION_TAG],)
        if RANGE_START_TAG in self.tags:
            return (self.tags[RANGE_START_TAG], self.tags[RANGE_END_TAG])
        return ()


@dataclass
class DagsterStack:
    """A running `dagster dev`: its URL, home and code location, and GraphQL helpers."""

    url: str
    home: Path
    process: subprocess.Popen
    location: str = ""
    repository: str = "__repository__"

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    def _ok(self, result: Mapping[str, Any], success: str) -> Mapping[str, Any]:
        if result["__typename"] != success:
            raise GraphQLError(json.dumps(result)[:2000])
        return result

    def launch_run(
        self, job: str, partition: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Submit a run of `job` (for one partition) as the UI's launchpad does; it queues."""
        all_tags = {**(tags or {}), **({PARTITION_TAG: partition} if partition else {})}
        params = {
            "selector": {
                "repositoryLocationName": self.location,
                "repositoryName": self.repository,
                "jobName": job,
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in all_tags.items()]},
        }
        result = self.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        return self._ok(result, "LaunchRunSuccess")["run"]["runId"]

    def launch_backfill(self, assets: Iterable[str], partitions: Iterable[str]) -> str:
        """Submit an asset backfill of `partitions`; the backfill daemon creates its runs."""
        params = {
            "assetSelection": [{"path": key.split("/")} for key in assets],
            "partitionNames": list(partitions),
        }
        result = self.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        return self._ok(result, "LaunchBackfillSuccess")["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        return self._ok(result, "PartitionBackfill")["status"]

    def runs(self, **filter: Any) -> list[Run]:
        """Run records, newest first; `filter` is a GraphQL RunsFilter, e.g. runIds=[...],
        tags=[{"key": "dagster/backfill", "value": id}], statuses=["QUEUED"]."""
        result = self.graphql(RUNS, {"filter": filter, "limit": 10_000})["runsOrError"]
        return [Run.from_graphql(r) for r in self._ok(result, "Runs")["results"]]

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        return self.runs(tags=[{"key": "dagster/backfill", "value": backfill_id}])

    def wait_until(
        self, condition: Callable[[], Any], timeout: float = 300, interval: float = 0.5
    ) -> Any:
        """Poll `condition` until it returns something truthy, which is returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}")
            if value := condition():
                return value
            time.sleep(interval)
        raise TimeoutError(f"not reached within {timeout}s: {condition}")

    def wait_for_runs(self, run_ids: Iterable[str], timeout: float = 300) -> list[Run]:
        """The runs, once every one of them has reached a terminal status."""
        ids = list(run_ids)

        def done() -> list[Run] | None:
            runs = self.runs(runIds=ids)
            finished = len(runs) == len(ids) and all(r.status in TERMINAL for r in runs)
            return runs if finished else None

        return self.wait_until(done, timeout)

    def wait_for_backfill(self, backfill_id: str, timeout: float = 300) -> list[Run]:
        """The backfill's runs, once the backfill is done and all its runs have ended."""
        self.wait_until(lambda: self.backfill_status(backfill_id) in BACKFILL_DONE, timeout)
        return self.wait_for_runs([r.run_id for r in self.backfill_runs(backfill_id)], timeout)

    def materializations(self, asset: str) -> dict[str, list[str]]:
        """{partition: [run ids that materialised it]} for an asset key like "a/b"."""
        key = {"path": asset.split("/")}
        result = self.graphql(MATERIALIZATIONS, {"key": key})["assetOrError"]
        counts: dict[str, list[str]] = {}
        if result["__typename"] == "Asset":
            for event in result["assetMaterializations"]:
                counts.setdefault(event["partition"], []).append(event["runId"])
        return counts

    def pool_limit(self, pool: str) -> dict[str, Any]:
        """{"limit": n or None, "usingDefaultLimit": bool} of a pool, as the UI shows it."""
        return self.graphql(POOL, {"pool": pool})["instance"]["concurrencyLimit"]

    def set_pool_limit(self, pool: str, limit: int) -> None:
        """Set a pool's limit explicitly, as Deployment → Concurrency in the UI does."""
        mutation = (
            "mutation($p: String!, $n: Int!) { setConcurrencyLimit(concurrencyKey: $p, limit: $n) }"
        )
        self.graphql(mutation, {"p": pool, "n": limit})

    def set_nux_seen(self) -> None:
        """Switch off the UI's "Join the Dagster community" pop-up for this instance."""
        self.graphql("mutation { setNuxSeen }")

    def load_location(self, timeout: float) -> None:
        """Wait until the webserver answers and the (single) code location has loaded."""

        def loaded() -> bool:
            try:
                entries = self.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
            except (OSError, urllib.error.URLError):
                return False
            for entry in entries:
                state = entry["locationOrLoadError"] or {}
                if state.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location {entry['name']}: {state['message']}")
                if entry["loadStatus"] == "LOADED" and state.get("repositories"):
                    self.location = entry["name"]
                    self.repository = state["repositories"][0]["name"]
                    return True
            return False

        self.wait_until(loaded, timeout, interval=1)


@contextmanager
def dagster_stack(
    home: Path,
    instance_yaml: Path | str,
    module: str,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 180,
) -> Iterator[DagsterStack]:
    """`dagster dev -m module` with `instance_yaml` as $DAGSTER_HOME/dagster.yaml.

    The process gets this process' environment plus `env` (e.g. DAGSTER_PG_* or the
    AGENT_REPORTS_* folders) and runs in `home`, so nothing is written to the repo.
    """
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / instance_yaml, home / "dagster.yaml")
    port = port or free_port()
    environment = {**os.environ, **(env or {}), "DAGSTER_HOME": str(home)}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    args = [str(BIN / "dagster"), "dev", "-m", module, "-h", "127.0.0.1", "-p", str(port)]
    process = start_process(args, home / "dagster_dev.log", env=environment, cwd=home)
    stack = DagsterStack(f"http://127.0.0.1:{port}", home, process)
    try:
        stack.load_location(timeout)
        yield stack
    except BaseException:
        log = (home / "dagster_dev.log").read_text(errors="replace")
        print(f"--- dagster dev log (tail) ---\n{log[-6000:]}", file=sys.stderr)
        raise
    finally:
        stop_process(process, timeout=30)


def overlaps(a: Run, b: Run) -> bool:
    """Whether two ended runs were executing at the same moment."""
    return a.start_time < b.end_time and b.start_time < a.end_time
