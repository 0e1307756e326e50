"""What one night leaves in MLflow, read the way an ML engineer reads it: held-out metrics named by
metric and k on each model's own run, the comparison run, the gate's decision as tags and in each
version's description, signatures and native flavors, and an experiment typed for model training."""

from __future__ import annotations

from datetime import datetime

import pytest

from inbo.lake import batch_key
from inbo.settings import Settings

pytestmark = pytest.mark.e2e


def test_a_night_in_mlflow(world: Settings, world_end: datetime) -> None:
    import mlflow

    from features.interactions import build_interactions
    from pipelines import registry, tracking
    from pipelines.ingest import ingest
    from pipelines.promotion import gate_batch
    from pipelines.train import fit_baselines, train_als, train_reranker
    from pipelines.validate import validate_batch

    ingest(world_end)
    validate_batch(world_end)
    build_interactions(world_end)
    fit_baselines(world_end)
    als, reranker = train_als(world_end), train_reranker(world_end)
    assert als.run_id and reranker.run_id, "the small world trains both models"
    decisions = gate_batch(world_end)
    batch = batch_key(world_end)

    client = tracking.connect(world)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for run_id in (als.run_id, reranker.run_id):
        run = client.get_run(run_id)
        assert run.data.params["k"] == "10"
        assert {"ndcg_at_10", "recall_at_10", "map_at_10", "holdout_users"} <= set(run.data.metrics)
        assert "ndcg_at_k" not in run.data.metrics
    assert client.get_run(als.run_id).info.run_name == f"als-{batch}"

    evaluate = client.get_run(tracking.step_run_id(world, "evaluate", batch) or "")
    assert {"ndcg_at_10/als", "ndcg_at_10/hybrid", "ndcg_at_10/popularity"} <= set(
        evaluate.data.metrics
    )
    gate = client.get_run(tracking.step_run_id(world, "gate", batch) or "")
    assert gate.data.metrics == {}
    assert gate.data.tags["als.decision"] == "promoted"
    assert "first model" in gate.data.tags["als.reason"]

    for kind in ("als", "reranker"):
        decision = decisions[kind]
        version = client.get_model_version(f"inbo-{kind}", str(decision.challenger))
        assert version.tags["gate.decision"] == "promoted" == decision.outcome
        assert version.tags["batch"] == batch
        assert f"`{batch}`" in version.description and "ndcg_at_10" in version.description
        assert set(version.aliases) == {"challenger", "champion"}
    flavors = mlflow.models.get_model_info("models:/inbo-reranker@champion").flavors
    assert "lightgbm" in flavors
    assert [row.model for row in registry.list_models(world)] == ["als", "reranker"]
