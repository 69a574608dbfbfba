"""Audit the installed dependencies with pip-audit; fail on any known vulnerability.

pip-audit asks PyPI's per-release JSON API for advisories. Where that API cannot be reached
(a registry mirror that serves only the simple index answers 404), pip-audit skips every
package and reports "No known vulnerabilities found", which would be a green check that
audited nothing. This wrapper tells the two apart: it fails on vulnerabilities, fails on
packages that were skipped while others were audited, and when nothing at all could be
audited it says so loudly and fails only if AGENT_REPORTS_REQUIRE_AUDIT=1 (set it where
PyPI is reachable).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def run_pip_audit() -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "audit.json"
        args = [str(BIN / "pip-audit"), "--skip-editable", "--progress-spinner", "off"]
        subprocess.run([*args, "-f", "json", "-o", str(report)], check=False, timeout=600)
        return json.loads(report.read_text())["dependencies"]


def main() -> int:
    dependencies = run_pip_audit()
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if "skip_reason" in d and "editable" not in d["skip_reason"]]
    audited = [d for d in dependencies if "skip_reason" not in d]
    for dependency in vulnerable:
        ids = ", ".join(v["id"] for v in dependency["vulns"])
        fixes = sorted({f for v in dependency["vulns"] for f in v.get("fix_versions", [])})
        print(f"VULNERABLE {dependency['name']} {dependency['version']}: {ids}; fixed in {fixes}")
    if vulnerable:
        return 1
    if not audited:
        print(
            f"pip-audit could not audit any of {len(skipped)} packages: no vulnerability "
            "database is reachable from here (PyPI's per-release JSON API). Nothing was "
            "audited.",
            file=sys.stderr,
        )
        return 1 if os.environ.get("AGENT_REPORTS_REQUIRE_AUDIT") == "1" else 0
    for dependency in skipped:
        print(f"NOT AUDITED {dependency['name']}: {dependency['skip_reason']}", file=sys.stderr)
    print(f"pip-audit: {len(audited)} packages audited, no known vulnerabilities")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
