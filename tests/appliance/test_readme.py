"""The README walkthrough works when pasted: run its bash block against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import ROOT, env_for, serve_appliance


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Walkthrough"):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README has no bash walkthrough"
    return match.group(1)


def test_readme_walkthrough(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = env_for(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with serve_appliance(env) as url:
        script = _walkthrough().replace("http://127.0.0.1:8080", url)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "OK: report" in result.stdout
        assert "matches its signed manifest" in result.stdout
        assert (tmp_path / "demo" / "report.html").read_text().count("<img") >= 2
