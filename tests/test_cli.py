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


# ---- options declared once: generated from the config fields' metadata ----------------------------------------------

def _subcommands():
    from echoengine.cli import build_parser

    parser = build_parser()
    return parser._subparsers._group_actions[0].choices


def _minimal_argv(command: str) -> list[str]:
    """The command with a value for each positional argument and required option."""
    argv = [command]
    for action in _subcommands()[command]._actions:
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


_STRING_VALUES = {"backbone": "small_cnn", "weights": "w.pt", "embedder": "birdnet", "group_regex": r"^(rec\d+)_",
                  "source": "folders", "node": "Ranidae/Lithobates"}
_COMPANIONS = {"unfreeze_epoch": ["--freeze-backbone"], "probe_epochs": ["--head", "linear"]}


def _example(option):
    """A value of the option other than the default, as typed on the command line and as the config holds it."""
    default = option.default
    if option.hint is bool:
        return [option.flag if not default else "--no-" + option.flag[2:]], not default
    if "choices" in option.metadata:
        value = next(choice for choice in option.metadata["choices"] if choice != default)
        return [option.flag, value], value
    if option.hint is int:
        return [option.flag, str(default + 1)], default + 1
    if option.hint is float:
        return [option.flag, str(default + 0.25)], default + 0.25
    if option.hint is str:
        return [option.flag, _STRING_VALUES[option.name]], _STRING_VALUES[option.name]
    if option.name == "ranks":  # names of taxonomic ranks
        return [option.flag, "family, genus"], ("family", "genus")
    if option.name == "birdnet_speeds":  # a list of numbers
        return [option.flag, "2, 1"], (1.0, 2.0)
    return [option.flag, "3-4, 3-5"], ("3-4", "3-5")  # a list


def test_every_config_option_reaches_its_field_from_each_of_its_commands():
    from echoengine.cli import _config, _training_options, parse
    from echoengine.cli_options import config_options

    assert {option.flag for option in config_options("train")} >= {"--lr", "--refit", "--mixup", "--workers"}
    commands = _subcommands()
    for option in config_options():
        assert set(option.commands) <= set(commands), option
        for command in option.commands:
            given, expected = _example(option)
            args = parse([*_minimal_argv(command), *given, *_COMPANIONS.get(option.name, [])])
            if command in ("train", "cv"):
                base, changes = _training_options(args)
                config = base.replace(**changes)
            else:
                config = _config(args)
            assert getattr(getattr(config, option.section), option.name) == expected, (command, given)
            left_out = parse(_minimal_argv(command))  # not given: the default (or the --config file's value)
            assert getattr(left_out, option.dest) is None


def test_config_options_override_the_config_file_only_when_given(tmp_path):
    from echoengine.cli import _config, parse

    path = EchoConfig().replace(data={"folds": 3, "split_seed": 7, "sparse_classes": "drop"}).save(tmp_path / "c.toml")
    data = _config(parse(["split", "x", "--config", str(path), "--seed", "2"])).data
    assert (data.folds, data.split_seed, data.sparse_classes) == (3, 2, "drop")


def test_choices_in_the_metadata_are_those_the_config_accepts():
    import pytest

    from echoengine.cli_options import config_options
    from echoengine.errors import ConfigError

    for option in config_options():
        cls = type(getattr(EchoConfig(), option.section))
        for choice in option.metadata.get("choices", ()):
            assert getattr(cls(**{option.name: choice}), option.name) == choice
        if "choices" in option.metadata:
            with pytest.raises(ConfigError, match=option.name):
                cls(**{option.name: "no-such-choice"})
            assert option.default in option.metadata["choices"]


def test_every_subcommand_and_option_is_described():
    commands = _subcommands()
    assert len(commands) == 18
    actions = commands["reviews"]._subparsers._group_actions[0].choices  # reviews export, reviews compare
    assert set(actions) == {"export", "compare"}
    for name, command in {**commands, **{f"reviews {k}": v for k, v in actions.items()}}.items():
        assert command.description, name
        for action in command._actions:
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
        command.format_help()  # every help text formats (no stray % signs)


def test_the_help_shows_the_dataclass_defaults():
    from echoengine.cli_config import _shown, config_options

    commands = _subcommands()
    for name, command in commands.items():
        text = "".join(command.format_help().split())  # line breaks fall anywhere
        for option in config_options(name):
            assert "".join(option.help.split()) in text, (name, option.flag)
            if _shown(option.default):
                assert "".join(f"(default: {_shown(option.default)})".split()) in text, (name, option.flag)
    train = " ".join(commands["train"].format_help().split())
    assert "--lr LR learning rate (default: 0.0001)" in train
    assert "--refit, --no-refit after early stopping" in train and "epochs (default: off)" in train
    assert "(default: 3-3,3-4,3-5)" in train and "--workers WORKERS data loading processes" in train
    predict = " ".join(commands["predict"].format_help().split())
    assert "how many species per file (default: 3)" in predict  # hand-written options show theirs too


def test_a_typo_of_a_config_option_is_answered_with_its_name(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--batch_size", "8"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: echoengine train" in err
    assert "--batch_size (did you mean --batch-size?)" in err
    with pytest.raises(SystemExit):
        main(["split", str(tmp_path), "--sparse-clases", "drop"])
    assert "usage: echoengine split" in (err := capsys.readouterr().err) and "did you mean --sparse-classes?" in err


def test_resume_names_the_options_it_ignores(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from echoengine import api

    monkeypatch.setattr(api, "train", lambda *args, **kwargs: SimpleNamespace(report="", bundle=tmp_path / "b"))
    config = EchoConfig().save(tmp_path / "c.toml")
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "b"), "--resume", "--epochs", "3", "--lr", "0.1",
                 "--workers", "1", "--group-regex", "x", "--allow-outside-paths", "--no-refit", "--config",
                 str(config)]) == 0
    assert ("warning: --resume continues with the run's own config; ignored: --config, --group-regex, --lr\n"
            in capsys.readouterr().err)


def test_the_command_line_imports_no_library_until_a_command_runs():
    import subprocess
    import sys

    code = "import sys, echoengine.cli; print([m for m in ('torch', 'numpy', 'pandas') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
