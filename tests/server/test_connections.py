"""Connections cannot be held for free: header and body read timeouts, a connection cap, lingering close after
an early answer, X-Forwarded-For trusted only from `trusted_proxies`, and a client that stops reading loses its slot
after the request deadline and a grace. Raw sockets against one real server."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from server.protection.connections import LINGER_S
from tests.conftest import ServerProcess
from tests.launches import WITH_THE_SHARED_SERVER, planned, take
from tests.probes import access_lines, metric, wait_until

HEADER_S, BODY_S, CAP, RPM = 2.0, 2.0, 8, 3
PATIENT_TIMEOUT_S = 8
STALLED_SEND_GRACE_S = 2.5  # the guarded server's (the default is 5)
PATIENT_CLIENT = "127.0.0.3"
PROXY = "127.0.0.2"  # loopback too: a client socket bound to it is a "proxy" the server trusts
COMPLETION = {"prompt": "hi", "max_tokens": 1}


@planned("guarded", group=WITH_THE_SHARED_SERVER)
def _launch_guarded(tiny_model, tmp_path_factory) -> ServerProcess:
    return ServerProcess([
        "--header-timeout-s", str(HEADER_S), "--body-timeout-s", str(BODY_S), "--max-connections", str(CAP),
        "--trusted-proxies", PROXY, "--rate-limit-rpm", str(RPM), "--rate-limit-tpm", "0",
        "--request-timeout-s", str(PATIENT_TIMEOUT_S), "--stalled-send-grace-s", str(STALLED_SEND_GRACE_S),
    ])


@pytest.fixture(scope="module")
def guarded(request):
    srv = take("guarded", request)
    yield srv
    srv.stop_in_background()


def _connect(srv) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=HEADER_S + BODY_S + 15)
    return sock


def _read_to_eof(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic()


def _status(data: bytes) -> int | None:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def test_half_a_header_or_nothing_is_closed_at_the_header_timeout_while_others_are_served(guarded):
    with _connect(guarded) as half, _connect(guarded) as idle:
        started = time.monotonic()
        half.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-")
        assert httpx.get(guarded.base_url + "/health", timeout=10).status_code == 200
        for sock in (half, idle):
            data, closed = _read_to_eof(sock)
            assert _status(data) == 408, data
            assert HEADER_S - 0.2 <= closed - started <= HEADER_S + 5
            print(f"header timeout {HEADER_S} s: closed after {closed - started:.2f} s")


def test_half_a_body_gets_408_at_the_body_timeout(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 200\r\n\r\n" + b'{"prompt": "')
        started = time.monotonic()
        data, closed = _read_to_eof(sock)
    assert _status(data) == 408, data
    assert orjson.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert BODY_S - 0.2 <= closed - started <= BODY_S + 5
    print(f"body timeout {BODY_S} s: 408 after {closed - started:.2f} s")


def _read_while_dripping(sock: socket.socket, byte: bytes) -> tuple[bytes, float]:
    """Reads to EOF while another thread sends `byte` every 0.2 s, as a slow client's body would arrive."""
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.2):
            try:
                sock.sendall(byte)
            except OSError:
                return

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        return _read_to_eof(sock)
    finally:
        stop.set()
        dripper.join()


def test_a_dripped_body_gets_the_same_deadline_not_one_per_chunk(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n")
        started = time.monotonic()
        data, closed = _read_while_dripping(sock, b" ")
    assert _status(data) == 408, data
    assert closed - started <= BODY_S + 5


def test_an_answer_before_the_body_ends_the_connection_even_if_the_client_keeps_dripping(guarded):
    with _connect(guarded) as sock:
        # /health reads no body: it answers at once, and the rest of the body must not keep the socket.
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        data, closed = _read_while_dripping(sock, b"x")
    assert _status(data) == 200, data
    assert b"connection: close" in data.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")  # the client knows not to reuse it
    assert closed - started <= LINGER_S + 4


def test_oversized_headers_get_431(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(100):  # 100 KB of header lines, never ending
                sock.sendall(b"x-filler: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass
        data, _ = _read_to_eof(sock)
    assert _status(data) == 431, data[:100]


def test_connections_beyond_the_cap_are_refused_at_once(guarded):
    socks = [_connect(guarded) for _ in range(CAP + 3)]
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(socks)) as pool:  # each read on its own: refusals are timed as they come
            outcomes = list(pool.map(_read_to_eof, socks))
    finally:
        for s in socks:
            s.close()
    refused = [closed - started for data, closed in outcomes if _status(data) == 503]
    timed_out = [data for data, _ in outcomes if _status(data) == 408]
    assert len(refused) >= 3 and len(timed_out) <= CAP and len(refused) + len(timed_out) == CAP + 3
    assert max(refused) < HEADER_S  # refused on arrival, not at the header timeout
    print(f"cap {CAP}: {len(refused)} of {CAP + 3} refused within {max(refused):.3f} s")
    # Once they are gone, new connections are served again.
    assert httpx.get(guarded.base_url + "/health", timeout=10).status_code == 200


def test_x_forwarded_for_picks_the_bucket_only_from_a_trusted_proxy(guarded):
    url = guarded.base_url + "/v1/completions"
    # From 127.0.0.1, not trusted: every X-Forwarded-For is ignored, all four share the peer's bucket.
    spoofed = [httpx.post(url, json=COMPLETION, headers={"x-forwarded-for": f"192.0.2.{i}"}, timeout=60).status_code
               for i in range(RPM + 1)]
    assert spoofed == [200] * RPM + [429]
    with httpx.Client(transport=httpx.HTTPTransport(local_address=PROXY), timeout=60) as proxy:
        def post(client_ip: str | None) -> int:
            headers = {"x-forwarded-for": client_ip, "x-request-id": f"xff-{client_ip}"} if client_ip else {}
            return proxy.post(url, json=COMPLETION, headers=headers).status_code

        assert [post("198.51.100.1") for _ in range(RPM + 1)] == [200] * RPM + [429]
        assert post("198.51.100.2") == 200  # another client behind the same proxy: its own bucket
        assert post(None) == 200  # the proxy's own requests: the proxy's bucket
    line = next(x for x in access_lines(guarded.log_tail(10**6)) if x["request_id"] == "xff-198.51.100.2")
    assert line["client"] == "198.51.100.2"


@pytest.fixture(scope="module")
def patient(guarded):
    """`guarded`'s deadline is long enough for a stream to fill the socket buffers; this test's client connects
    from its own loopback address, so that its request leaves the rate-limit bucket of 127.0.0.1 to the others."""
    return guarded


def _metrics(srv) -> str:
    return httpx.get(srv.base_url + "/metrics", timeout=10).text


def test_a_client_that_stops_reading_loses_its_slot_after_the_deadline_and_grace(patient):
    # Chat logprobs (16 choices x 20 alternatives, each with its bytes): the ~3 MB that the kernel and uvloop
    # buffer for a client that never reads fill in ~2 s here (completions' smaller logprobs took ~7 s), and the
    # sends stall well before the deadline.
    body = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900, "n": 16,
                         "logprobs": True, "top_logprobs": 20, "ignore_eos": True, "temperature": 1.0, "stream": True})
    # The first logprobs request of a process compiles vLLM's rank kernel: ~2 s, and more than the deadline on a
    # machine with no compile cache yet (a CI run's stream sent nothing past its first chunk in 8 s). Done first,
    # so that the stream below fills the buffers in time; a warm-up cut at the deadline leaves the compile running.
    warm = {**orjson.loads(body), "max_tokens": 1, "stream": False}
    with httpx.Client(base_url=patient.base_url, transport=httpx.HTTPTransport(local_address=PATIENT_CLIENT),
                      headers={"extra-parameters": "pass-through"}, timeout=60) as c:
        assert wait_until(lambda: c.post("/v1/chat/completions", json=warm).status_code == 200, 120, 0.5)
    host, port = patient.base_url.removeprefix("http://").split(":")
    in_flight = lambda: metric(_metrics(patient), "llamaserve_requests_in_flight")  # noqa: E731
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.bind((PATIENT_CLIENT, 0))
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"extra-parameters: pass-through\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
        )
        started = time.monotonic()
        assert wait_until(lambda: in_flight() == 1, 10)
        # Never read: the stalled sends keep the stream from ending at its deadline... What did not happen has no
        # event to wait on: the check looks 1 s past the deadline (passed with `stress-ng --cpu 2` beside the run).
        time.sleep(max(0.0, started + PATIENT_TIMEOUT_S + 1.0 - time.monotonic()))
        assert in_flight() == 1
        # ...but the grace after it ends it, while the connection is still open.
        assert wait_until(lambda: in_flight() == 0, STALLED_SEND_GRACE_S + 5, 0.05)
        # The server's grace (the default of 5 s would end it later).
        assert PATIENT_TIMEOUT_S + STALLED_SEND_GRACE_S - 0.5 <= time.monotonic() - started
        assert time.monotonic() - started < PATIENT_TIMEOUT_S + STALLED_SEND_GRACE_S + 2
        assert wait_until(lambda: metric(_metrics(patient), "llamaserve_engine_requests_in_flight") == 0, 10)
    assert "client stopped reading" in patient.log_tail(10**6)
