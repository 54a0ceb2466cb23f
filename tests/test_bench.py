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
