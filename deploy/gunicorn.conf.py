"""gunicorn settings for running the app outside `appliance serve`:

    gunicorn -c deploy/gunicorn.conf.py 'appliance._internal.web.app:create_app()'

(then start `appliance worker` beside it for the embedded queue)."""

import os

bind = os.environ.get("APPLIANCE_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("APPLIANCE_HTTP_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("APPLIANCE_HTTP_THREADS", "8"))
timeout = 120
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app writes structured request logs itself
# gunicorn's control socket sits at one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl), shared
# by every instance on the host and able to stop or rescale any of them; nothing uses it
control_socket_disable = True
