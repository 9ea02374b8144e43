"""gunicorn settings shared by the three services; each is told its port by env.

MG_SERVICE names the service (auth, inference, crypto) and so the app gunicorn runs;
MG_<SERVICE>_PORT, MG_WORKERS and MG_FORWARDED_ALLOW_IPS tune it.
"""

import os

_service = os.environ["MG_SERVICE"]
_port = os.environ.get(f"MG_{_service.upper()}_PORT", "8000")

wsgi_app = f"modelgate_{_service}.main:create_app()"

bind = [f"{os.environ.get('MG_SERVICE_BIND', '127.0.0.1')}:{_port}"]
# The native stack adds a Unix socket in a folder only its user may enter (0700): nginx
# proxies there, and only there are nginx's X-Forwarded-For headers believed (see
# modelgate_common._worker). The TCP port serves health checks and metrics; a client on
# it is known by its own address, whatever headers it sends.
_socket_dir = os.environ.get("MG_SOCKET_DIR")
if _socket_dir:
    bind.append(f"unix:{_socket_dir}/{_service}.sock")
workers = int(os.environ.get("MG_WORKERS", "2"))
# Drains keep-alive connections before stopping (see modelgate_common._worker).
worker_class = "modelgate_common.DrainingUvicornWorker"
proc_name = f"modelgate-{_service}"
# Import the app once in the master and fork: workers share its pages (less
# memory) and start faster. Lifespan (Redis clients, models) still runs per worker.
preload_app = True
# gunicorn's control socket (gunicornc) is unused here, and its default path is one per
# user (~/.gunicorn/gunicorn.ctl), which every stack of that user would fight over.
control_socket_disable = True
# TCP peers whose X-Forwarded-For is believed: nginx's address (compose), its subnet (Swarm)
# or its pods' network (Kubernetes); never "*". Unset (the native stack): none, nginx comes
# through the Unix socket instead.
forwarded_allow_ips = os.environ.get("MG_FORWARDED_ALLOW_IPS", "")
proxy_allow_ips = forwarded_allow_ips
# Longer than nginx's upstream keepalive, so nginx closes idle connections first.
keepalive = 75
timeout = 30
graceful_timeout = int(os.environ.get("MG_GRACEFUL_TIMEOUT", "20"))
# The request id middleware writes the access log as JSON.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("MG_LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "modelgate_common._logging.JsonFormatter",
            "service": f"{_service}-gunicorn",
        }
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}

# Prometheus multiprocess mode: one folder of metric files per service, emptied
# when the master starts, a dead worker's live gauges dropped when it exits.
_metrics_dir = os.path.join(os.environ.get("MG_VAR_DIR", "var"), "run", "metrics", _service)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _metrics_dir)


def on_starting(server):
    import shutil

    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
