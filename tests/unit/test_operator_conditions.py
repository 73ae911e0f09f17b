from kiln_operator.conditions import set_condition


def test_transition_time_moves_only_when_status_changes():
    first = set_condition(None, "Ready", False, "Waiting", "not yet", 1)
    again = set_condition(first, "Ready", False, "StillWaiting", "still not", 2)
    assert again[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert again[0]["reason"] == "StillWaiting" and again[0]["observedGeneration"] == 2
    flipped = set_condition(again + [{"type": "Degraded", "status": "False"}], "Ready", True, "Serving", "ok", 2)
    assert [c["type"] for c in flipped] == ["Degraded", "Ready"]
    assert flipped[1]["status"] == "True"
