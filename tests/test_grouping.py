"""`make test` shares expensive fixtures (learning runs and their random-reward controls, LaSRO's
runs, the sequential reference of the parallel-bench tests) among tests of one ``xdist_group``,
which ``--dist loadgroup`` sends to one worker. pytest 9.2.0 broke that with pytest-xdist 3.8.0
(a test's node id can no longer be rewritten, so groups were split and every shared fixture ran
once per worker, ~8 minutes of `make test`); pytest is pinned to 9.1.1 and this test fails if the
grouping is lost again."""

import pytest


@pytest.mark.xdist_group("grouping-check")
def test_xdist_groups_reach_the_scheduler(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@grouping-check"), request.node.nodeid
