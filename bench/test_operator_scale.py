#!/usr/bin/env python3
"""Tests of bench/operator_scale.py's request counting: Kafka frames and HTTP requests cut at any
byte, chunked bodies, SQL classification, the FlowSchemas it generates.
Run: $VENV/bin/python bench/test_operator_scale.py   (or pytest, if installed)"""
import os
import struct
import sys
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import operator_scale as o  # noqa: E402


def kafka_frame(api_key, payload=b"x" * 20):
    body = struct.pack(">hhih", api_key, 1, 7, 3) + b"abc" + payload
    return struct.pack(">i", len(body)) + body


def feed_bytewise(parser, data):
    kinds = []
    for i in range(len(data)):
        kinds += parser.feed(data[i:i + 1])
    return kinds


class SpanTimesTest(unittest.TestCase):
    def test_span_closes_are_summed_by_name_and_other_lines_skipped(self):
        lines = [
            '{"message":"close","time.busy":"192µs","time.idle":"2.01ms","span":{"name":"kafka_describe_batch"}}',
            '{"message":"close","time.busy":"1.5s","time.idle":"0ns","span":{"name":"reconcile"}}',
            '{"message":"close","time.busy":"10ms","time.idle":"5ms","span":{"name":"reconcile"}}',
            '{"message":"changing Kafka topic","topic":"close"}',
            'not json "close"',
        ]
        times = o.span_times(lines)
        self.assertEqual(sorted(times), ["kafka_describe_batch", "reconcile"])
        self.assertAlmostEqual(times["kafka_describe_batch"][0], 2.202)
        self.assertEqual(times["reconcile"], [1500.0, 15.0])


class KafkaFramesTest(unittest.TestCase):
    def test_frames_are_counted_by_api_key_whatever_the_cuts(self):
        data = kafka_frame(18) + kafka_frame(3, b"\x00\x00\x00\x03" * 100) + kafka_frame(32) + kafka_frame(99)
        want = ["ApiVersions", "Metadata", "DescribeConfigs", "api_key 99"]
        self.assertEqual(o.KafkaFrames().feed(data), want)
        self.assertEqual(feed_bytewise(o.KafkaFrames(), data), want)
        cut = o.KafkaFrames()
        self.assertEqual(cut.feed(data[:30]) + cut.feed(data[30:]), want)


def post(sql, chunked=False, in_url=False):
    if in_url:
        return f"POST /?query={urllib.parse.quote_plus(sql)} HTTP/1.1\r\nHost: ch\r\nContent-Length: 0\r\n\r\n".encode()
    body = sql.encode()
    if chunked:
        return (b"POST / HTTP/1.1\r\nHost: ch\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % 5 + body[:5] + b"\r\n" + b"%x;ext=1\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n")
    return b"POST / HTTP/1.1\r\nHost: ch\r\nContent-Length: %d\r\n\r\n" % len(body) + body


class HttpRequestsTest(unittest.TestCase):
    def test_requests_are_framed_and_classified_whatever_the_cuts(self):
        data = (post("SELECT partition_key, sorting_key, engine_full, comment FROM system.tables WHERE database = ?")
                + post("SELECT name, type FROM system.columns WHERE database = ?", chunked=True)
                + post("CREATE DATABASE IF NOT EXISTS `b`", in_url=True)
                + post("CREATE TABLE IF NOT EXISTS `b`.`t` (x UInt8) ENGINE = MergeTree ORDER BY x")
                + post("SELECT comment FROM system.tables WHERE database = ? AND name = ?")
                + post("DROP TABLE IF EXISTS `b`.`t`")
                + b"GET /ping HTTP/1.1\r\nHost: ch\r\n\r\n")
        want = ["describe: system.tables", "describe: system.columns", "CREATE DATABASE", "CREATE TABLE",
                "owner check before DROP", "DROP TABLE", "other"]
        self.assertEqual(o.HttpRequests().feed(data), want)
        self.assertEqual(feed_bytewise(o.HttpRequests(), data), want)

    def test_a_body_that_looks_like_a_request_is_not_one(self):
        sql = "SELECT 'POST / HTTP/1.1\r\n\r\n' FROM system.columns"
        self.assertEqual(o.HttpRequests().feed(post(sql) + post(sql, chunked=True)),
                         ["describe: system.columns", "describe: system.columns"])


class FlowSchemasTest(unittest.TestCase):
    def test_one_flow_schema_per_verb_and_resource_plus_catch_alls_all_exempt(self):
        import io
        import json
        out = io.StringIO()
        stdout, sys.stdout = sys.stdout, out
        try:
            o.cmd_flowschemas(type("A", (), {"service_account": "ns/op"})())
        finally:
            sys.stdout = stdout
        items = json.loads(out.getvalue())["items"]
        names = {i["metadata"]["name"] for i in items}
        self.assertEqual(len(names), len(items))
        self.assertEqual(len(items), len(o.VERBS) * (len(o.RESOURCES) + 1) + 2)
        self.assertIn("bench-opscale-get-configmaps", names)
        self.assertIn("bench-opscale-patch-flightpipelines.status", names)
        self.assertIn("bench-opscale-deletecollection-other", names)
        for i in items:
            self.assertEqual(i["spec"]["priorityLevelConfiguration"]["name"], "exempt")
            subject = i["spec"]["rules"][0]["subjects"][0]
            self.assertEqual(subject["serviceAccount"], {"namespace": "ns", "name": "op"})
        # a specific FlowSchema wins over its verb's catch-all
        by_name = {i["metadata"]["name"]: i for i in items}
        self.assertLess(by_name["bench-opscale-get-configmaps"]["spec"]["matchingPrecedence"],
                        by_name["bench-opscale-get-other"]["spec"]["matchingPrecedence"])


if __name__ == "__main__":
    unittest.main()
