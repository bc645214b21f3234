"""Pool name patterns and placement policies (pure)."""
from __future__ import annotations

import pytest

from core.errors import Invalid
from manager.provisioning import names
from manager.provisioning.placement import HostLoad, get_policy, pack, place_many, spread


def test_pattern_numbers_are_zero_padded():
    assert names.format_name("eng-###", 7) == "eng-007"
    assert names.format_name("lab##.x", 42) == "lab42.x"
    assert names.number_of("eng-###", "eng-042") == 42
    assert names.number_of("eng-###", "eng-42") is None
    assert names.number_of("eng-###", "other-042") is None


def test_next_names_fill_gaps_first():
    assert names.next_names("eng-###", ["eng-001", "eng-003"], 3) == ["eng-002", "eng-004", "eng-005"]
    assert names.next_names("eng-###", [], 0) == []


def test_a_pattern_that_runs_out_says_so():
    with pytest.raises(Invalid) as info:
        names.next_names("t-#", ["t-1", "t-2"], 8)
    assert "can make only 9 names" in info.value.message and "7 are still free" in info.value.message


@pytest.mark.parametrize("bad", ["", "eng", "eng-#-#", "-eng-##", "eng ##", "a" * 70 + "##"])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(Invalid):
        names.parse_pattern(bad)


def hosts():
    return [HostLoad("a", "a", 4096), HostLoad("b", "b", 1024), HostLoad("c", "c", 2048)]


def test_spread_takes_the_most_free_memory_and_balances():
    placed = place_many(hosts(), 512, 6, spread)
    assert [h.name for h in placed] == ["a", "a", "a", "a", "c", "a"]


def test_pack_fills_the_fullest_host_that_fits():
    placed = place_many(hosts(), 512, 4, pack)
    assert [h.name for h in placed] == ["b", "b", "c", "c"]


def test_nothing_fits():
    assert spread(hosts(), 8192) is None and pack(hosts(), 8192) is None
    assert place_many([HostLoad("a", "a", 600)], 512, 2, spread)[1] is None


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(Invalid, match="spread"):
        get_policy("random")
