"""Probes the compose and Swarm tiers run inside their containers: who gets an answer from
Redis, and what Redis lets each client do."""

from __future__ import annotations

import json
import subprocess

# Sends Redis's inline PING to argv[1]:argv[2]; prints "PONG" when Redis answered, else
# what came instead. An open TCP connection alone proves nothing: a transparent egress proxy
# (as on the test machine) accepts connections to any address the host routes out.
PING_PROBE = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as peer:
        peer.settimeout(5)
        peer.sendall(b"PING\\r\\n")
        reply = peer.recv(64)
    print("PONG" if reply.startswith(b"+PONG") else f"no Redis: {reply[:40]!r}")
except OSError as exc:
    print("unreachable", type(exc).__name__)
"""

# Signs in to Redis at argv[1] as argv[2] (empty: no sign-in) with that service's password
# file, or with argv[3] as the password when given; prints what each command got as JSON:
# "answered", "NOPERM" (the ACL refused it) or "NOAUTH" (the sign-in was refused). Nothing
# here changes data a running stack depends on, even when answered.
REDIS_PROBE = """
import json, sys, redis
host, user = sys.argv[1], sys.argv[2] or None
if len(sys.argv) > 3:
    password = sys.argv[3]
elif user:
    password = open(f"/run/secrets/redis_{user}_password").read().strip()
else:
    password = None
client = redis.Redis(host=host, username=user, password=password, socket_timeout=10)
def attempt(call):
    try:
        call()
        return "answered"
    except redis.exceptions.NoPermissionError:
        return "NOPERM"
    except redis.exceptions.AuthenticationError:
        return "NOAUTH"
print(json.dumps({
    "PING": attempt(client.ping),
    "SET mg:*": attempt(lambda: client.set("mg:test:acl-probe", "1", ex=10)),
    "SET outside mg:*": attempt(lambda: client.set("acl-probe", "1", ex=10)),
    "KEYS": attempt(lambda: client.keys("mg:test:acl-probe*")),
    "CONFIG GET": attempt(lambda: client.config_get("maxmemory")),
    "ACL LIST": attempt(client.acl_list),
}))
"""

ANONYMOUS = {
    "PING": "answered",
    "SET mg:*": "NOPERM",
    "SET outside mg:*": "NOPERM",
    "KEYS": "NOPERM",
    "CONFIG GET": "NOPERM",
    "ACL LIST": "NOPERM",
}
SERVICE_USER = {**ANONYMOUS, "SET mg:*": "answered"}
WRONG_PASSWORD = dict.fromkeys(ANONYMOUS, "NOAUTH")


def redis_ping(container: str, host: str, port: int, python_image: str) -> str:
    """PING_PROBE's answer from ``container``'s network namespace ("PONG": Redis answered):
    the probe runs in a throw-away container of ``python_image`` (a service's) that shares
    ``container``'s network, so images without Python (nginx's) are probed too."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", f"container:{container}", "--read-only",
         "--cap-drop", "ALL", "--entrypoint", "python3", python_image, "-c", PING_PROBE,
         host, str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def redis_outcomes(container: str, host: str, user: str, *password: str) -> dict[str, str]:
    """REDIS_PROBE run inside ``container`` (a service's, which holds its password file)."""
    done = subprocess.run(
        ["docker", "exec", container, "python3", "-c", REDIS_PROBE, host, user, *password],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))
