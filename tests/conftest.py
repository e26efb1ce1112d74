"""Shared fixtures: a temporary appliance home, the Flask app over it, tenants with tokens."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the SDK's caches (the exported ONNX text encoder) and client key stores stay out of $HOME:
# one folder per test session, shared with the subprocesses the tests start
os.environ.setdefault("APPLIANCE_CACHE_DIR", tempfile.mkdtemp(prefix="appliance-test-cache-"))
os.environ.setdefault("APPLIANCE_KEYS_DIR", tempfile.mkdtemp(prefix="appliance-test-keys-"))
logging.getLogger("werkzeug").setLevel(logging.ERROR)


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from appliance._internal.config import Settings

    return Settings(home=tmp_path / "home", rate_limit="100000 per minute",
                    job_lease_seconds=5.0, log_level="WARNING")


class InlineQueue:
    """Runs each job in a background thread through the real worker code (LocalSink)."""

    def __init__(self, settings: Any) -> None:
        from appliance._internal.jobs.events import LocalSink
        from appliance._internal.jobs.runner import execute_job
        from appliance._internal.jobs.worker import LocalBlobs

        self.settings = settings
        self.threads: list[threading.Thread] = []
        self._execute = execute_job
        self._sink = LocalSink(settings)
        self._blobs = LocalBlobs(self._sink.store)

    def __call__(self, message: dict[str, Any]) -> None:
        thread = threading.Thread(
            target=self._execute, args=(self.settings, message),
            kwargs={"sink": self._sink, "blobs": self._blobs}, daemon=True,
        )
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float = 120.0) -> None:
        for thread in self.threads:
            thread.join(timeout)


@pytest.fixture
def app(settings: Any) -> Iterator[Any]:
    from appliance._internal.web.app import create_app

    application = create_app(settings, {"TESTING": True})
    queue = InlineQueue(settings)
    application.extensions["appliance.enqueue"] = queue
    application.extensions["test.queue"] = queue
    yield application
    queue.join()
    application.extensions["appliance.inference_cache"].clear()  # stops an evaluator process


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


from support import make_token  # noqa: E402


@pytest.fixture
def token_a(settings: Any, app: Any) -> str:
    return make_token(settings, "tenant-a")


@pytest.fixture
def token_b(settings: Any, app: Any) -> str:
    return make_token(settings, "tenant-b")



#: The unlearning subjects every unlearning test folder shares: 8 people (40 facts) each in the
#: forget and holdout sets, as the audits test by person and 8 against 8 people is the least
#: that survives the Holm correction; 32 retain people, since with 16 the gold and reference
#: models differ enough that patching depth flags the gold model (p = 0.0015 by person).
UNLEARNING_TEST_SIZES = {"n_forget": 40, "n_retain": 160, "n_holdout": 40}


@pytest.fixture(scope="session")
def unlearning_subjects(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The full, gold and reference subjects, trained once per session under pytest's tmp dir
    (never a cache from an earlier run, never inside the repository).

    Under pytest-xdist the session's workers share one folder beside their own tmp dirs: the
    first to get its lock trains, the others wait and load the same weights.

    The unlearning tests run on one torch thread: the subjects train on one whatever is set, and
    the algorithms and audits then take the same numbers whether a folder runs alone or in the
    whole suite (where modules set one thread at import)."""
    import torch
    from filelock import FileLock

    from models.unlearning.subjects import make_subjects

    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / "unlearning-subjects"
    with FileLock(str(folder) + ".lock"):
        return make_subjects(seed=0, cache_dir=folder, **UNLEARNING_TEST_SIZES)


@pytest.fixture
def live_url(app: Any) -> Iterator[str]:
    """The ``app`` fixture served over real HTTP on 127.0.0.1 (a thread; jobs run through the
    inline queue), for the SDK and the CLI."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
