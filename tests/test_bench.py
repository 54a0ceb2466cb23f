from studyrunner.bench import run_bench

from .conftest import make_folder


def test_bench_measures_both_pipelines_on_the_same_images(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=40, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    rows = run_bench(str(root), images=64, batch_size=16, workers=0, log=lambda m: None)
    assert [r[0].split(" ")[0] for r in rows] == ["documents'", "engine,", "engine,"]
    assert rows[0][2] == 1.0 and all(speed > 0 for _, speed, _ in rows)
    assert rows[1][2] == rows[1][1] / rows[0][1]


def test_trial_overhead_separates_training_from_the_rest(tmp_path, monkeypatch):
    from studyrunner.bench import trial_overhead

    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=20, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    f = trial_overhead(str(root), trials=2, epochs=2, subset=40, log=lambda m: None)
    assert 0 < f["training_s"] < f["total_s"] and f["setup_once_s"] > 0
    assert f["overhead_per_trial_s"] > 0 and f["share_of_1min_trial"] == f["overhead_per_trial_s"] / 60
