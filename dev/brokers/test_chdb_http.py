#!/usr/bin/env python3
"""Tests of chdb_http.py against the engine it fronts: failed statements, inserts included, answer
with ClickHouse's code, message and HTTP status; URL settings reach the engine.

Starts its own front end on free ports (HTTP, and HTTPS with a throw-away CA made by openssl) with
a throw-away data directory.
Run: $VENV/bin/python dev/brokers/test_chdb_http.py   (or pytest, if installed)
"""
import http.client
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = None
URL = None
HTTPS_URL = None
CA = None  # PEM file of the CA that signed the HTTPS port's certificate


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(directory):
    """A CA and a server certificate for 127.0.0.1 and localhost, as dev/stack makes them."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    crt, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key,
            "-subj", "/CN=chdb-http-test-ca", "-days", "1", "-out", ca)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
            "-subj", "/CN=127.0.0.1", "-out", crt + ".csr")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", crt + ".csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
            "-extfile", ext, "-out", crt)
    return ca, crt, key


def setup_module(_module=None):
    global SERVER, URL, HTTPS_URL, CA
    port, https_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="chdb-http-test-")
    CA, crt, key = make_certificates(data)
    SERVER = subprocess.Popen([sys.executable, os.path.join(HERE, "chdb_http.py"), "--port", str(port), "--path", data,
                               "--https-port", str(https_port), "--tls-cert", crt, "--tls-key", key],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    URL = f"http://127.0.0.1:{port}/"
    HTTPS_URL = f"https://127.0.0.1:{https_port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(URL + "ping", timeout=1).read()
            break
        except OSError:
            if SERVER.poll() is not None:
                raise RuntimeError(SERVER.stderr.read().decode())
            time.sleep(0.1)
    post("CREATE DATABASE IF NOT EXISTS hostile")
    post("CREATE TABLE hostile.monthly (at DateTime, x UInt8, CONSTRAINT small CHECK x < 200) "
         "ENGINE = MergeTree PARTITION BY toYYYYMM(at) ORDER BY at")


def teardown_module(_module=None):
    SERVER.terminate()
    SERVER.wait(10)


def post(query, body=b"", base=None, context=None, **params):
    """(status, exception code or None, body text), over HTTP, or HTTPS with `base=HTTPS_URL`."""
    url = (base or URL) + "?" + urllib.parse.urlencode({"query": query, **params})
    try:
        request = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30, context=context) as r:
            return r.status, r.headers.get("X-ClickHouse-Exception-Code"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-ClickHouse-Exception-Code"), e.read().decode()


def count():
    return int(post("SELECT count() FROM hostile.monthly")[2])


def months(n, x=1):
    return "".join(f"{1970 + i // 12}-{i % 12 + 1:02d}-01 00:00:00\t{x}\n" for i in range(n)).encode()


def test_an_insert_over_too_many_partitions_is_refused_like_clickhouse():
    before = count()
    status, code, text = post("INSERT INTO hostile.monthly FORMAT TabSeparated", months(400))
    assert (status, code) == (500, "252"), (status, code, text)
    assert "Too many partitions for single INSERT block (more than 100)" in text
    assert text.startswith("Code: 252. DB::Exception:")
    assert count() == before


def test_a_good_insert_is_stored_and_counted():
    before = count()
    status, code, text = post("INSERT INTO hostile.monthly FORMAT TabSeparated", months(100))
    assert (status, code) == (200, None), text
    assert count() == before + 100


def test_binary_rows_arrive_byte_for_byte():
    post("CREATE TABLE IF NOT EXISTS hostile.raw (s String) ENGINE = MergeTree ORDER BY s")
    # RowBinary: a varint length, then the bytes (a newline first, NUL and a quote inside).
    status, _, text = post("INSERT INTO hostile.raw (s) FORMAT RowBinary", b"\x04\n\x00'\xff")
    assert status == 200, text
    assert post("SELECT hex(s) FROM hostile.raw")[2].strip() == "0A0027FF"


def test_binary_rows_with_a_blank_line_inside_are_not_cut():
    # chDB cuts inline insert data at bytes 0A 0A: a UInt64 of 0x0A0A is such a row.
    post("CREATE TABLE IF NOT EXISTS hostile.numbers (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
    rows = b"".join(struct.pack("<Q", n) + b"\x02\n\n" for n in (0x0A0A, 0x0A0A0A0A0A, 7))
    status, _, text = post("INSERT INTO hostile.numbers (n, s) FORMAT RowBinary", rows)
    assert status == 200, text
    assert post("SELECT sum(n), count() FROM hostile.numbers")[2] == f"{0x0A0A + 0x0A0A0A0A0A + 7}\t3\n"
    # The same rows LZ4-framed as the Rust client sends them (decompress=1), in two blocks.
    import lz4.block
    framed = b""
    for block in (rows[:20], rows[20:]):
        packed = lz4.block.compress(block, store_size=False)
        framed += b"\0" * 16 + b"\x82" + struct.pack("<II", len(packed) + 9, len(block)) + packed
    status, _, text = post("INSERT INTO hostile.numbers (n, s) FORMAT RowBinary", framed, decompress="1")
    assert status == 200, text
    assert post("SELECT count() FROM hostile.numbers")[2] == "6\n"


def test_a_constraint_violated_by_one_row_refuses_the_insert():
    status, code, text = post("INSERT INTO hostile.monthly FORMAT TabSeparated", months(2) + months(1, x=250))
    assert (status, code) == (500, "469"), text


def test_readonly_refuses_writes_with_clickhouse_code():
    for query in ["INSERT INTO hostile.monthly FORMAT TabSeparated", "INSERT INTO hostile.monthly VALUES"]:
        body = months(1) if "FORMAT" in query else b"('2001-01-01 00:00:00', 1)"
        status, code, text = post(query, body, readonly="2")
        assert (status, code) == (500, "164"), (query, text)
        assert "Cannot execute query in readonly mode. (READONLY)" in text
    status, code, _ = post("CREATE TABLE hostile.nope (a UInt8) ENGINE = Memory", readonly="2")
    assert (status, code) == (500, "164")
    status, code, _ = post("DROP TABLE hostile.monthly", readonly="1")
    assert (status, code) == (500, "164")
    status, code, text = post("SELECT count() FROM hostile.monthly", readonly="2")
    assert (status, code) == (200, None) and int(text) > 0


def test_query_limits_from_the_url_are_enforced():
    status, code, text = post("SELECT sleep(2)", max_execution_time="1")
    assert (status, code) == (408, "159"), text
    status, code, _ = post("SELECT number FROM numbers(100)", max_result_rows="10", result_overflow_mode="throw")
    assert (status, code) == (500, "396")
    status, code, _ = post("SELECT number FROM numbers(100000)", max_result_bytes="1000", result_overflow_mode="throw")
    assert (status, code) == (500, "396")
    status, code, text = post("SELECT number FROM numbers(5) FORMAT TSV;", max_result_rows="10")
    assert (status, code, text) == (200, None, "0\n1\n2\n3\n4\n")


def test_errors_map_to_clickhouse_statuses():
    assert post("SELECT 1", no_such_setting="1")[:2] == (404, "115")
    assert post("SELECT * FROM hostile.missing")[:2] == (404, "60")
    assert post("SELEC 1")[:2] == (400, "62")
    assert post("INSERT INTO hostile.monthly FORMAT TabSeparated", b"not a date\t1\n")[:2] == (400, "41")



def trusting_the_ca():
    return ssl.create_default_context(cafile=CA)


def test_https_answers_as_http_does():
    tls = trusting_the_ca()
    with urllib.request.urlopen(HTTPS_URL + "ping", timeout=10, context=tls) as r:
        assert (r.status, r.read()) == (200, b"Ok.\n")
    post("CREATE TABLE IF NOT EXISTS hostile.over_tls (x UInt32) ENGINE = MergeTree ORDER BY x")
    assert post("INSERT INTO hostile.over_tls FORMAT TSV", b"7\n8\n", base=HTTPS_URL, context=tls)[0] == 200
    # One engine behind both ports: what one wrote the other reads.
    for base, context in [(URL, None), (HTTPS_URL, tls)]:
        assert post("SELECT sum(x) FROM hostile.over_tls", base=base, context=context) == (200, None, "15\n")
    # Errors too: same status, code and message.
    assert post("SELEC 1", base=HTTPS_URL, context=tls)[:2] == post("SELEC 1")[:2] == (400, "62")
    assert post("SELECT 1", base=HTTPS_URL, context=tls, no_such_setting="1")[:2] == (404, "115")


def test_https_refuses_clients_that_do_not_trust_its_certificate():
    other = ssl.create_default_context()  # the system's roots: not the test CA
    try:
        urllib.request.urlopen(HTTPS_URL + "ping", timeout=10, context=other).read()
        raise AssertionError("an untrusted certificate was accepted")
    except urllib.error.URLError as e:
        assert isinstance(e.reason, ssl.SSLCertVerificationError), e
    # Plain HTTP to the HTTPS port gets no HTTP answer, and the server goes on serving.
    try:
        urllib.request.urlopen(HTTPS_URL.replace("https://", "http://") + "ping", timeout=10).read()
        raise AssertionError("plain HTTP was answered on the HTTPS port")
    except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
        pass
    with urllib.request.urlopen(HTTPS_URL + "ping", timeout=10, context=trusting_the_ca()) as r:
        assert r.read() == b"Ok.\n"


if __name__ == "__main__":
    setup_module()
    failed = 0
    try:
        for name, test in sorted(globals().items()):
            if name.startswith("test_"):
                try:
                    test()
                    print(f"ok   {name}")
                except Exception as e:  # noqa: BLE001
                    failed += 1
                    print(f"FAIL {name}: {e!r}")
    finally:
        teardown_module()
    sys.exit(1 if failed else 0)
