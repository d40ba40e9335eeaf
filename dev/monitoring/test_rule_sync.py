#!/usr/bin/env python3
"""Tests of dev/monitoring/rule_sync.py with the real promtool (PROMTOOL_BIN; dev/test passes the
stack's): run `PROMTOOL_BIN=... python3 dev/monitoring/test_rule_sync.py`."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rule_sync  # noqa: E402

PROMTOOL = os.environ.get("PROMTOOL_BIN", "promtool")


def rule(name, expr):
    return {"groups": [{"name": name, "rules": [{"record": f"flightline:{name}:rate5m", "expr": expr}]}]}


class RuleSyncTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rule-sync-test-")
        # No Prometheus to reload: a closed port, refused at once.
        self.syncer = rule_sync.Syncer(self.dir, "http://127.0.0.1:9", PROMTOOL)
        self.runs = []
        check = self.syncer.promtool_check
        self.syncer.promtool_check = lambda paths: self.runs.append(len(paths)) or check(paths)
        self.rules = {}
        rule_sync.list_rules = lambda: {f"{ns}_{n}.yaml": (f"{ns}/{n}", spec) for (ns, n), spec in self.rules.items()}

    def files(self):
        return sorted(os.listdir(self.dir))

    def test_a_round_is_checked_in_one_promtool_run_and_a_bad_rule_alone_is_left_out(self):
        for i in range(3):
            self.rules[("air", f"p{i}")] = rule(f"p{i}", "sum(rate(x_total[5m]))")
        self.assertTrue(self.syncer.sync())
        self.assertEqual(self.runs, [3], "one promtool run for the three new files")
        self.assertEqual(self.files(), ["air_p0.yaml", "air_p1.yaml", "air_p2.yaml"])

        # One changed and valid, one changed and invalid, one new and invalid: the batch fails,
        # then each is checked alone; the valid one is installed, the invalid ones are not, and the
        # old file of the one that became invalid goes (as prometheus-operator drops an invalid rule).
        self.runs.clear()
        self.rules[("air", "p0")] = rule("p0", "sum(rate(y_total[5m]))")
        self.rules[("air", "p1")] = rule("p1", "sum(rate(y_total[5m]")
        self.rules[("sea", "bad")] = rule("bad", "rate(")
        self.assertTrue(self.syncer.sync())
        self.assertEqual(self.runs, [3, 1, 1, 1])
        self.assertEqual(self.files(), ["air_p0.yaml", "air_p2.yaml"])
        with open(os.path.join(self.dir, "air_p0.yaml")) as f:
            self.assertIn("y_total", f.read())

        # Nothing new: no promtool run, no change; the rejected ones are not checked again.
        self.runs.clear()
        self.assertFalse(self.syncer.sync())
        self.assertEqual(self.runs, [])

        # A rejected rule made valid is installed; a deleted object's file goes.
        self.rules[("sea", "bad")] = rule("bad", "rate(z_total[5m])")
        del self.rules[("air", "p2")]
        self.assertTrue(self.syncer.sync())
        self.assertEqual(self.runs, [1])
        self.assertEqual(self.files(), ["air_p0.yaml", "sea_bad.yaml"])
        self.assertEqual([n for n in self.files() if n.endswith(".tmp")], [], "no temporary file left")


    def test_a_large_round_is_checked_in_batches(self):
        batch = rule_sync.CHECK_BATCH
        rule_sync.CHECK_BATCH = 2
        try:
            for i in range(5):
                self.rules[("air", f"p{i}")] = rule(f"p{i}", "up")
            self.rules[("air", "p3")] = rule("p3", "up(")
            self.assertTrue(self.syncer.sync())
        finally:
            rule_sync.CHECK_BATCH = batch
        # Two files a run; the batch with the bad file is checked file by file.
        self.assertEqual(self.runs, [2, 2, 1, 1, 1])
        self.assertEqual(self.files(), ["air_p0.yaml", "air_p1.yaml", "air_p2.yaml", "air_p4.yaml"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
