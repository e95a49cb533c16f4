"""The multi-node path on one machine: Ray's local multi-node cluster with a rollout node and a
trainer node (custom resources), workers reserved with placement groups, one real training step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_train_loop import make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():  # one cluster for the module: starting one costs ~7 s
    import ray
    from ray.cluster_utils import Cluster

    # Every "node" runs on this machine (Ray uses its own interface address; nothing leaves the host).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    rollout_node = cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
    trainer_node = cluster.add_node(num_cpus=1, resources={"trainer_node": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    yield {"rollout": rollout_node.node_id, "trainer": trainer_node.node_id}
    ray.shutdown()
    cluster.shutdown()


def bundle_nodes(pg) -> set[str]:  # noqa: ANN001
    from ray.util import placement_group_table

    return set(placement_group_table(pg)["bundles_to_node_id"].values())


def test_rollout_and_trainer_on_their_own_nodes(two_node_cluster, tmp_path: Path):
    from cispo.driver.components import build_components
    from cispo.driver.loop import collect_groups, train_on_groups
    from cispo.tracking import PhaseTimer

    cfg = make_config(tmp_path / "run", "++rollout.group.resources={rollout_node: 1}",
                      "++trainer.resources_per_rank={trainer_node: 1}", "ray.placement_timeout_s=120")
    with build_components(cfg) as c:
        assert not c.owns_ray
        assert bundle_nodes(c.placement_groups["rollout"]) == {two_node_cluster["rollout"]}
        assert bundle_nodes(c.placement_groups["trainer"]) == {two_node_cluster["trainer"]}
        timer = PhaseTimer()
        timer.start_step()
        groups, metrics = collect_groups(c, 1, timer)
        assert metrics["rollout/responses"] >= cfg.batch_size
        if groups:
            update = train_on_groups(c, groups, timer)
            assert update["actor/update_skipped"] == 1.0 or update["actor/optimizer_steps"] >= 1


def test_unplaceable_workers_fail_fast_with_a_clear_error(two_node_cluster, tmp_path: Path):
    from cispo.driver.components import build_components

    cfg = make_config(tmp_path / "run", "++trainer.resources_per_rank={gpu_node: 1}", "ray.placement_timeout_s=3")
    with pytest.raises(RuntimeError, match="cispo-trainer: could not place 1 worker"):
        build_components(cfg)
