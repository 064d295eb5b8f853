"""When the placement warning is due (no Ray needed)."""

from curator_exec_ray import PlacementWatch, worker_request


def test_blocked_stage_is_warned_about_every_interval_and_a_partial_one_at_doubling_intervals():
    w = PlacementWatch(10.0)
    assert not w.due("a", since=0.0, blocked=True, now=9.9)
    assert [t for t in (10.0, 15.0, 20.0, 29.0, 30.0) if w.due("a", 0.0, True, now=t)] == [10.0, 20.0, 30.0]
    p = PlacementWatch(10.0)
    assert [t for t in range(0, 80) if p.due("b", 0.0, False, now=float(t))] == [10, 20, 40]
    p.reset("b")  # all started: a later wait starts over
    assert p.due("b", since=100.0, blocked=True, now=110.0)


def test_off_when_zero_or_none():
    for interval in (0, 0.0, None):
        assert not PlacementWatch(interval).due("a", 0.0, True, now=1e9)


def test_worker_request_in_words():
    assert worker_request(1.0) == "{CPU: 1}"
    assert worker_request(0.5, 1.0, node="0123456789abcdef", label_selector={"ray.io/node-id": "!x"}) == (
        "{CPU: 0.5, GPU: 1}, pinned to node 0123456789ab, label selector ray.io/node-id=!x")
