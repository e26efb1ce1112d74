"""The README walkthrough works when pasted: run its bash block against a live server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from support import ROOT, appliance_cmd, env_for, free_port, wait_http


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Walkthrough"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README has no bash walkthrough"
    return match.group(1)


def test_readme_walkthrough(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    env = env_for(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    server = subprocess.Popen(appliance_cmd("serve", "--port", str(port)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=server)
        script = _walkthrough().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "OK: report" in result.stdout
        assert "matches its signed manifest" in result.stdout
        assert (tmp_path / "demo" / "report.html").read_text().count("<img") >= 2
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
