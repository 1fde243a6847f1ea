"""The API's wiring: the station comes through ``Depends(get_station)`` (so tests can swap it), a lifespan
builds it from a config, and answers are described by response models without losing keys."""

import sqlite3
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from edgelearn.server import StationConfig, create_app
from edgelearn.server.deps import get_station
from tests.integration.server import TOKEN
from tests.unit.test_station import config, png

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeStation:
    """Answers like a station, with a key today's station does not have, and remembers who wrote."""

    rec = SimpleNamespace(backbone=SimpleNamespace(preprocessing=SimpleNamespace(resize_size=8)))

    def __init__(self):
        self.writers = []

    def status(self) -> dict:
        return {"classes": ["bolt"], "examples": 3, "learner": "fake", "learner_bytes": 1, "representations": 1,
                "temperature": 1.0, "backbone": {"name": "fake"}, "active_version": 1, "events": 3, "open_queue": 0,
                "live_calibration": {"n": 0, "accuracy": None, "ece": None}, "config": {"secret": "path"},
                "calibrated": "3/20"}

    def consolidate(self, user):
        self.writers.append(user)
        return {"version": 2, "classes": ["bolt"], "examples": 3}

    def predict(self, image, **options) -> dict:
        return {"label": None, "confidence": 0.4, "alternatives": [{"label": "bolt", "confidence": 0.4}],
                "known_classes": 1, "representatives": [], "closest": "bolt"}


@pytest.fixture
def fake(tmp_path):
    app = create_app(StationConfig(tmp_path / "never-built"), TOKEN)  # no lifespan here: the config stays unused
    fake = FakeStation()
    app.dependency_overrides[get_station] = lambda: fake
    return TestClient(app, base_url="http://localhost"), fake


def test_the_api_runs_over_a_station_given_through_dependency_overrides(fake, tmp_path):
    client, station = fake
    public = client.get("/api/status").json()
    assert public["classes"] == ["bolt"] and public["calibrated"] == "3/20" and "config" not in public
    assert client.get("/api/status", headers=AUTH).json()["config"] == {"secret": "path"}
    answer = client.post("/api/consolidate", headers={**AUTH, "X-User": "ann"})
    assert answer.json() == {"version": 2, "classes": ["bolt"], "examples": 3} and station.writers == ["ann"]
    assert client.post("/api/consolidate").status_code == 401 and station.writers == ["ann"]
    assert not (tmp_path / "never-built").exists()


def test_answers_keep_keys_the_models_do_not_name_and_add_none(fake):
    client, _ = fake
    answer = client.post("/api/predict", content=png("red"), headers={"Content-Type": "image/png"}).json()
    assert answer["closest"] == "bolt" and answer["label"] is None
    assert "heatmap" not in answer and "message" not in answer


def test_the_docs_describe_the_answers(fake):
    client, _ = fake
    paths = client.get("/openapi.json").json()["paths"]
    answer = {path: paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
              for path, method in [("/api/predict", "post"), ("/api/status", "get"), ("/api/versions", "get"),
                                   ("/api/queue", "get"), ("/api/knowledge", "post")]}
    assert answer == {"/api/predict": "#/components/schemas/PredictAnswer",
                      "/api/status": "#/components/schemas/StatusAnswer",
                      "/api/versions": "#/components/schemas/VersionsAnswer",
                      "/api/queue": "#/components/schemas/QueueAnswer",
                      "/api/knowledge": "#/components/schemas/ImportAnswer"}
    assert {"recognize", "learn", "knowledge", "queue", "status"} <= {t for p in paths.values() for op in p.values()
                                                                       for t in op.get("tags", [])}


def test_the_lifespan_builds_the_station_from_a_config_and_closes_it(tmp_path):
    app = create_app(config(tmp_path), TOKEN)
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/api/status").json()["classes"] == []
        retry = {**AUTH, "Idempotency-Key": "tag-1"}  # idempotent answers live in the station's own store
        first = client.post("/api/versions/1/tag", headers=retry, data={"name": "empty"})
        again = client.post("/api/versions/1/tag", headers=retry, data={"name": "empty"})
        assert first.json() == again.json() == {"version": 1, "tag": "empty"}
        assert again.headers["idempotent-replayed"] == "true"
    with pytest.raises(sqlite3.ProgrammingError):  # closed on shutdown
        app.state.station.store.count("events")
