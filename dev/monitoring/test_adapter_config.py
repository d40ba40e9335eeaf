#!/usr/bin/env python3
"""Unit tests of dev/monitoring/adapter_config.py (run: python3 dev/monitoring/test_adapter_config.py)."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adapter_config as ac  # noqa: E402

CHART_COPY = os.path.join(ac.REPO, "charts", "prometheus-adapter-values.yaml")


class AdapterConfigTest(unittest.TestCase):
    def test_the_charts_rules_become_the_adapters_rules(self):
        config = ac.adapter_config(ac.rules_of(ac.load(ac.DEFAULT_VALUES), "prometheusAdapter"))
        self.assertEqual(list(config), ["rules"])
        names = [r["name"]["as"] for r in config["rules"]]
        self.assertEqual(names, ["flightline_${1}_http_requests_per_second", "flightline_sink_consumer_lag"])
        requests = config["rules"][0]
        # The adapter's Go templates pass through unchanged.
        self.assertIn("<<.Series>>{<<.LabelMatchers>>,", requests["metricsQuery"])
        self.assertIn("by (<<.GroupBy>>)", requests["metricsQuery"])
        self.assertEqual(requests["resources"]["overrides"]["pod"], {"resource": "pod"})

    def test_the_helm_copy_holds_the_same_rules(self):
        values = ac.adapter_config(ac.rules_of(ac.load(ac.DEFAULT_VALUES), "prometheusAdapter"))
        copy = ac.adapter_config(ac.rules_of(ac.load(CHART_COPY), None))
        self.assertEqual(values, copy)

    def test_external_and_resource_rules_map_like_the_adapter_chart(self):
        rule = {"seriesQuery": "x", "metricsQuery": "sum(<<.Series>>)"}
        config = ac.adapter_config({"default": False, "custom": [rule], "external": [rule], "resource": {"cpu": {}}})
        self.assertEqual(config, {"rules": [rule], "externalRules": [rule], "resourceRules": {"cpu": {}}})

    def test_refuses_what_it_cannot_render(self):
        rule = {"seriesQuery": "x", "metricsQuery": "y"}
        with self.assertRaisesRegex(ac.ConfigError, "built-in rules"):
            ac.adapter_config({"default": True, "custom": [rule]})
        with self.assertRaisesRegex(ac.ConfigError, "lacks metricsQuery"):
            ac.adapter_config({"custom": [{"seriesQuery": "x"}]})
        with self.assertRaisesRegex(ac.ConfigError, "no custom, external or resource"):
            ac.adapter_config({"default": False})
        with self.assertRaisesRegex(ac.ConfigError, "no prometheusAdapter.rules"):
            ac.rules_of({"prometheusAdapter": {}}, "prometheusAdapter")

    def test_main_writes_the_file_and_catches_a_drifted_copy(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "adapter.yaml")
            self.assertEqual(ac.main(["--check-copy", CHART_COPY, "--out", out]), 0)
            with open(out, encoding="utf-8") as f:
                text = f.read()
            self.assertTrue(text.startswith("# Generated"))
            self.assertEqual(len(json.loads(text.split("\n", 1)[1])["rules"]), 2)
            drifted = os.path.join(d, "drifted.yaml")
            with open(drifted, "w", encoding="utf-8") as f:
                f.write("rules:\n  default: false\n  custom:\n    - {seriesQuery: a, metricsQuery: b}\n")
            self.assertEqual(ac.main(["--check-copy", drifted, "--out", out]), 1)


if __name__ == "__main__":
    unittest.main()
