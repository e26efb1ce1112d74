"""`appliance provenance ...` against a live server (`appliance serve` on loopback), as the README
has it: the demo data, a generator registered as ONNX and as safetensors of a registered
architecture (config from a file), bad registrations refused with a message and nothing stored,
and an audit of the safetensors generator."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import appliance_cmd, cli_token, env_for, serve_appliance

SMALL = ("shadows=3", "n_shadow=40", "n_val=40", "batches=10", "shadow_epochs=12")


def _cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(appliance_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_generators_register_as_onnx_or_safetensors_and_bad_ones_leave_nothing(tmp_path: Path) -> None:
    env = env_for(tmp_path / "home")
    with serve_appliance(env) as url:
        env = {**env, "APPLIANCE_URL": url, "APPLIANCE_TOKEN": cli_token(env, "acme")}
        out = _cli(env, "provenance", "demo-data", "--out", "prov", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "architecture linear_gaussian" in out.stdout

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return _cli(env, *args, cwd=tmp_path)

        onnx = run("provenance", "register", "prov/generator.onnx", "--name", "pca-onnx", "--num-classes", "10")
        assert onnx.returncode == 0, onnx.stderr
        assert json.loads(onnx.stdout)["format"] == "onnx"
        plain = run("models", "upload", "prov/generator.onnx", "--name", "pca-models", "--kind", "generator",
                    "--config", '{"num_classes": 10}')
        assert plain.returncode == 0 and json.loads(plain.stdout)["kind"] == "generator", plain.stderr
        st = run("provenance", "register", "prov/generator.safetensors", "--name", "pca-st", "--num-classes", "10",
                 "--architecture", "linear_gaussian", "--config", "@prov/generator.config.json")
        assert st.returncode == 0, st.stderr
        record = json.loads(st.stdout)
        assert (record["kind"], record["format"], record["architecture"]) == ("generator", "safetensors",
                                                                              "linear_gaussian")

        # refused before or by the server: a message and a hint, no traceback, nothing stored
        bare = run("provenance", "register", "prov/generator.safetensors", "--name", "x", "--num-classes", "10")
        assert bare.returncode == 1 and "architecture" in bare.stderr and "Traceback" not in bare.stderr
        wrong = run("provenance", "register", "prov/generator.safetensors", "--name", "x", "--num-classes", "10",
                    "--architecture", "conditional_mlp", "--config", "@prov/generator.config.json")
        assert wrong.returncode == 1 and "HTTP 422" in wrong.stderr and "Traceback" not in wrong.stderr
        junk = run("provenance", "register", "prov/generator.safetensors", "--name", "x", "--num-classes", "10",
                   "--architecture", "linear_gaussian", "--config", "{not json")
        assert junk.returncode == 1 and "not JSON" in junk.stderr
        missing = run("provenance", "register", "prov/generator.safetensors", "--name", "x", "--num-classes", "10",
                      "--architecture", "linear_gaussian", "--config", "@prov/nowhere.json")
        assert missing.returncode == 1 and "cannot read" in missing.stderr
        onnx_config = run("provenance", "register", "prov/generator.onnx", "--name", "x", "--num-classes", "10",
                          "--config", "@prov/generator.config.json")
        assert onnx_config.returncode == 1 and "carries its own" in onnx_config.stderr
        listed = run("models", "list", "--json")
        assert sorted(m["name"] for m in json.loads(listed.stdout)) == ["pca-models", "pca-onnx", "pca-st"]

        suspect = run("models", "upload", "prov/suspect-own.safetensors", "--name", "own", "--architecture", "mlp",
                      "--config", '{"in_features": 64, "hidden": 64, "num_classes": 10}', "--id-only")
        assert suspect.returncode == 0, suspect.stderr
        params = [a for p in SMALL for a in ("--param", p)]
        audit = run("provenance", "audit", "--generator", record["id"], "--suspect", suspect.stdout.strip(), *params)
        assert audit.returncode == 0, audit.stderr
        answer = json.loads(audit.stdout)
        # suspect-own was trained on this generator's samples (the ONNX twin's README audit says the same)
        assert answer["verdict"] == "consistent_with_generator_data" and answer["queries"] > 0, answer
        unknown = run("provenance", "audit", "--generator", "mdl_nope", "--suspect", suspect.stdout.strip(), *params)
        assert unknown.returncode == 1 and "HTTP 4" in unknown.stderr and "Traceback" not in unknown.stderr
