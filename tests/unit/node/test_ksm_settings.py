"""The KSM settings the policy engine pushes (hoststats.write_ksm) on a directory standing for /sys, and the
agent's PUT /v1/ksm: only an agent started with --ksm-control changes KSM."""
from __future__ import annotations

import pytest

from core.errors import Conflict, Invalid
from hypervisor_node.hoststats import KsmFigures, ksm_saved_mib, read_ksm_settings, write_ksm


def _sys(tmp_path, **values):
    ksm = tmp_path / "kernel" / "mm" / "ksm"
    ksm.mkdir(parents=True)
    defaults = {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "merge_across_nodes": 1, "pages_shared": 0,
                "pages_sharing": 0}
    for name, value in {**defaults, **values}.items():
        (ksm / name).write_text(f"{value}\n")
    return ksm


def test_settings_are_written_and_read_back(tmp_path):
    _sys(tmp_path)
    after = write_ksm({"run": 1, "pages_to_scan": 500, "sleep_millisecs": 10}, tmp_path)
    assert after == {"run": 1, "pages_to_scan": 500, "sleep_millisecs": 10, "merge_across_nodes": 1}
    assert read_ksm_settings(tmp_path) == after


def test_merge_across_nodes_unmerges_first_when_pages_are_shared(tmp_path, monkeypatch):
    ksm = _sys(tmp_path, run=1, pages_shared=42)
    writes = []
    original = type(ksm).write_text

    def spy(self, text, *args, **kwargs):
        writes.append((self.name, text.strip()))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(ksm), "write_text", spy)
    write_ksm({"run": 1, "merge_across_nodes": 0}, tmp_path)
    assert writes == [("run", "2"), ("merge_across_nodes", "0"), ("run", "1")]


@pytest.mark.parametrize("bad", [{"run": 3}, {"pages_to_scan": 0}, {"sleep_millisecs": "10"}, {"surprise": 1},
                                 {"run": True}])
def test_bad_settings_are_refused(tmp_path, bad):
    _sys(tmp_path)
    with pytest.raises(Invalid):
        write_ksm(bad, tmp_path)


def test_a_kernel_without_ksm(tmp_path):
    with pytest.raises(Conflict):
        write_ksm({"run": 1}, tmp_path)


def test_memory_saved_is_pages_sharing_times_the_page_size():
    assert ksm_saved_mib(KsmFigures(True, pages_shared=10, pages_sharing=2560)) == 10  # 4 KiB pages


def test_the_agent_changes_ksm_only_when_it_manages_it(tmp_path):
    from starlette.testclient import TestClient

    from hypervisor_node.agent import create_app
    from hypervisor_node.driver import LibvirtDriver

    _sys(tmp_path)
    headers = {"Authorization": "Bearer t"}
    for root, expected in ((None, 409), (str(tmp_path), 200)):
        app = create_app(LibvirtDriver("test:///default"), "t", node_name="n1", ksm_sys_root=root)
        with TestClient(app) as client:
            answer = client.put("/v1/ksm", json={"run": 1}, headers=headers)
            assert answer.status_code == expected, answer.text
    assert read_ksm_settings(tmp_path)["run"] == 1
