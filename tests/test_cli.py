import shutil
import subprocess

import numpy as np
from PIL import Image

from echoengine.cli import main
from echoengine.config import EchoConfig


def test_inspect_lists_bad_files_and_goes_on(bad_corpus, capsys):
    root, expected = bad_corpus
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    bad = [name for name, words in expected.items() if words]
    assert f"files: {len(expected)} ({len(expected) - len(bad)} usable, {len(bad)} unreadable)" in out
    for name, words in expected.items():
        if words:
            line = next(line for line in out.splitlines() if name in line)
            assert words in line
    assert "8 channels (1)" in out and "384000 Hz (1)" in out


def test_inspect_fails_only_when_nothing_is_usable(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.wav").write_text("not audio")
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no usable audio files" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_inspect_real_esc50(esc50, capsys):
    assert main(["inspect", str(esc50 / "audio")]) == 0  # a flat folder: unlabelled files
    flat = capsys.readouterr().out
    assert "files: 414 (414 usable, 0 unreadable)" in flat and "unlabelled" in flat
    assert main(["inspect", str(esc50 / "meta" / "esc50.csv")]) == 0
    out = capsys.readouterr().out
    assert "classes: 50" in out and "44100 Hz (414)" in out and "mono (414)" in out
    assert "groups (source recordings): " in out


def test_preview_writes_a_grid_of_model_inputs(synthetic_dataset, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", str(synthetic_dataset), "--out", str(out), "--n", "8"]) == 0
    image = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    assert image.shape[0] > 400 and image.shape[1] > 800 and image.std() > 20
    assert main(["preview", str(synthetic_dataset), "--out", str(tmp_path / "aug.png"), "--augment"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_config_prints_toml_that_loads(tmp_path, capsys):
    assert main(["config", "--out", str(tmp_path / "c.toml")]) == 0
    assert EchoConfig.load(tmp_path / "c.toml") == EchoConfig()
    (tmp_path / "bad.toml").write_text("[frontend]\nfmax = 99999\n")
    assert main(["inspect", str(tmp_path), "--config", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Nyquist" in err and len(err.strip().splitlines()) == 1


def test_user_errors_are_one_line_not_tracebacks(synthetic_dataset, tmp_path, capsys):
    cases = [
        ["synth", str(tmp_path / "x"), "--classes", "9"],
        ["preview", str(synthetic_dataset), "--n", "0"],
        ["config", "--out", str(tmp_path / "no" / "such" / "folder.toml")],
        ["inspect", str(synthetic_dataset), "--config", str(tmp_path)],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("echoengine")
    assert exe, "the echoengine console script is not on PATH: install the package (pip install -e .)"
    done = subprocess.run([exe, "synth", str(tmp_path / "demo"), "--classes", "2", "--files-per-class", "2"],
                          capture_output=True, text=True, check=True)
    assert "SYNTHETIC" in done.stdout
    assert sorted(p.name for p in (tmp_path / "demo").iterdir())[:2] == ["README.txt", "synthetic-trill"]


def test_split_writes_grouped_parts(esc50, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "folds.csv"
    assert main(["split", str(esc50), "--kfold", "--sparse-classes", "error", "--out", str(out)]) == 2
    assert "washing_machine" in capsys.readouterr().err  # one recording: it cannot be held out
    assert main(["split", str(esc50), "--kfold", "--out", str(out)]) == 0  # the default: trained on, never tested
    table = pd.read_csv(out)
    assert set(table["part"][table["label"] == "washing_machine"]) == {"train"}
    assert main(["split", str(esc50), "--kfold", "--sparse-classes", "drop", "--out", str(out), "--overwrite"]) == 0
    table = pd.read_csv(out)
    assert set(table["part"]) == {"fold0", "fold1", "fold2", "fold3", "fold4", "excluded"}
    assert (table.groupby("group")["part"].nunique() == 1).all()
    assert main(["split", str(esc50), "--sparse-classes", "drop", "--out", str(out), "--overwrite"]) == 0
    assert set(pd.read_csv(out)["part"]) == {"train", "val", "test", "excluded"}


def test_split_kfold_names_the_classes_too_small_for_the_folds(synthetic_dataset, tmp_path, capsys, caplog):
    import pandas as pd

    # 4 classes of 6 files; by the group regex 3 source recordings each
    out = tmp_path / "folds.csv"
    assert main(["split", str(synthetic_dataset), "--kfold", "--folds", "7", "--out", str(out)]) == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar
    err = err[err.index("error: "):]  # after the library's warnings
    assert err.startswith("error: 7-fold cross-validation needs a class with at least 7 files") and err.count("\n") == 1
    assert "synthetic-trill (6 recordings, 6 files)" in err and "use --folds 6 or fewer" in err
    assert not out.exists()
    cv = ["cv", str(synthetic_dataset), "--folds", "7", "--backbone", "small_cnn", "--no-cache", "--quiet"]
    assert main([*cv, "--out", str(tmp_path / "cv")]) == 2  # cross-validation says the same, before training
    assert capsys.readouterr().err.split("\r")[-1].endswith(err)
    # fewer recordings than folds in some classes: the same warning as cross-validation gives, and the split
    regex = r"^([a-z]+_rec\d+)_"
    assert main(["split", str(synthetic_dataset), "--kfold", "--group-regex", regex, "--out", str(out)]) == 0
    assert "synthetic-trill (3)" in caplog.text and "--folds 3" in caplog.text
    assert set(pd.read_csv(out)["part"]) == {f"fold{k}" for k in range(5)}


def test_csv_rows_outside_the_dataset_need_allow_outside_paths(tmp_path, capsys):
    import soundfile as sf

    root = tmp_path / "esc"
    for path in (root / "audio" / "a.wav", root / "audio" / "b.wav", tmp_path / "elsewhere.wav"):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(4800, np.float32), 48000)
    (root / "meta").mkdir()
    csv = root / "meta" / "esc50.csv"
    csv.write_text("filename,category\na.wav,frog\nb.wav,owl\n../../elsewhere.wav,owl\n")
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {csv}: row 3 (line 4) names '../../elsewhere.wav', outside the dataset folder "
                           f"{root / 'audio'}; move the audio into that folder, or allow such rows with "
                           "--allow-outside-paths (data.allow_outside_paths = true)")
    assert main(["inspect", str(root), "--allow-outside-paths"]) == 0
    assert "files: 3 (3 usable, 0 unreadable)" in capsys.readouterr().out
    toml = tmp_path / "allow.toml"
    toml.write_text("[data]\nallow_outside_paths = true\n")
    assert main(["inspect", str(csv), "--config", str(toml)]) == 0
    assert "files: 3 (3 usable, 0 unreadable)" in capsys.readouterr().out


def test_a_typo_gets_the_subcommand_usage_and_the_closest_name(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["cv", str(tmp_path), "--out", str(tmp_path / "cv"), "--embeder", "birdnet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: echoengine cv" in err
    assert "unrecognized arguments: --embeder (did you mean --embedder?) birdnet" in err
    with pytest.raises(SystemExit):
        main(["trian", str(tmp_path)])
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err
